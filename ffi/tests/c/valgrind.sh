#!/usr/bin/env bash
# The C test program under valgrind: no invalid access, no definite or possible leak.
# CI (.ci/run) runs it after the ordinary test suite; it needs Nix, like the suite.
set -euo pipefail
cd "$(dirname "$0")/../../.."
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
VALGRIND=1 cargo test -p genbuild-ffi --test c the_c_program_drives_a_builder_through_real_nix -- --nocapture
