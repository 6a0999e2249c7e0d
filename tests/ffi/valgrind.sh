#!/usr/bin/env bash
# The C test program under valgrind: no invalid access, no definite or possible leak.
# CI runs it (from the repository root) after the ordinary `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
VALGRIND=1 cargo test --test ffi the_c_program_drives_a_builder_through_real_nix -- --nocapture
