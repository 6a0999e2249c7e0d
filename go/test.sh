#!/usr/bin/env bash
# The Go package's checks, as CI runs them (.ci/run): builds libgenbuild, puts go/ at
# $GOPATH/src/genbuild in a temporary GOPATH (GOPATH mode with Debian's Go and
# /usr/share/gocode: no module proxy), checks gofmt, runs go vet and `go test -race`
# (against real Nix).
#
#   bash go/test.sh                          everything
#   bash go/test.sh -run TestStop -count=5   arguments go to `go test`
#   GENBUILD_PROFILE=release bash go/test.sh the library of target/release
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
profile=${GENBUILD_PROFILE:-debug}
if [ "$profile" = release ]; then
  cargo build --quiet -p genbuild-ffi --lib --release
else
  cargo build --quiet -p genbuild-ffi --lib
fi
lib=${CARGO_TARGET_DIR:-$repo/target}/$profile
for f in libgenbuild.so libgenbuild.a; do
  [ -f "$lib/$f" ] || { echo "go/test.sh: no $f in $lib after cargo build" >&2; exit 1; }
done

gopath=$(mktemp -d)
trap 'rm -rf "$gopath"' EXIT
mkdir "$gopath/src"
ln -s "$repo/go" "$gopath/src/genbuild"
export GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOFLAGS=
cd "$gopath/src/genbuild"

unformatted=$(gofmt -l .)
[ -z "$unformatted" ] || { echo "go/test.sh: not formatted by gofmt: $unformatted" >&2; exit 1; }
go vet ./...
# Linked dynamically with a run path, so that no LD_LIBRARY_PATH reaches Nix.
CGO_LDFLAGS="-L$lib -Wl,-rpath,$lib" go test -race -count=1 "$@" .

echo "go/test.sh: ok"
