#!/usr/bin/env bash
# The Go package's checks, as CI runs them (.ci/run): builds libgenbuild, puts go/ at
# $GOPATH/src/genbuild in a temporary GOPATH (GOPATH mode with Debian's Go and
# /usr/share/gocode: no module proxy), checks gofmt, runs go vet and `go test -race`
# (against real Nix), then builds the example both ways and runs its bundled demo:
# linked statically (-tags genbuild_static) without LD_LIBRARY_PATH, and dynamically
# with it.
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

demo() { # demo BINARY [ENV...]: the bundled demo evaluates and builds
  local out=$gopath/demo.out
  if ! env "${@:2}" "$1" >"$out" 2>&1 || ! grep -q '^build *built in' "$out"; then
    cat "$out"
    echo "go/test.sh: the bundled demo of $1 failed" >&2
    exit 1
  fi
}
CGO_LDFLAGS="-L$lib" go build -tags genbuild_static -o "$gopath/example-static" ./example
if readelf -d "$gopath/example-static" | grep -q libgenbuild; then
  echo "go/test.sh: the example built with -tags genbuild_static needs libgenbuild.so" >&2
  exit 1
fi
demo "$gopath/example-static" -u LD_LIBRARY_PATH
CGO_LDFLAGS="-L$lib" go build -o "$gopath/example" ./example
readelf -d "$gopath/example" | grep -q 'libgenbuild\.so' \
  || { echo "go/test.sh: the example built by default does not link libgenbuild.so" >&2; exit 1; }
demo "$gopath/example" LD_LIBRARY_PATH="$lib"
echo "go/test.sh: ok"
