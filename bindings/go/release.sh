#!/usr/bin/env bash
# Builds the Go module as it is released: this directory's Go files plus the C header
# (include/piecestore.h) and the prebuilt static library for this platform
# (lib/<goos>_<goarch>/libpiecestore_c.a, debug info stripped), so that a module requiring it
# builds with `go build` alone, no Rust toolchain. link_static.go looks in lib/<goos>_<goarch>
# before this checkout's target/release.
#
#   bash bindings/go/release.sh [--out DIR] [--proxy DIR] [--version vX.Y.Z]
#
# --out    where the module tree goes (default target/go-module).
# --proxy  also writes a GOPROXY directory there (list, .info, .mod, .zip for the version),
#          which `GOPROXY=file://DIR go get github.com/piecestore/piecestore/bindings/go@VERSION`
#          installs from, as it would from a module proxy (`GOSUMDB=off` for an unpublished
#          version, whose hash no checksum database knows).
# --version the module version (default v + the workspace's Cargo version).
#
# The library is about 130 MB: it is not committed on main. A release commits the tree this
# writes (on the release tag, under bindings/go/) or serves the --proxy files; one run per
# platform adds that platform's lib/ directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/target/go-module"
proxy=""
version="v$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --proxy) proxy=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    *) echo "release.sh: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
case "$version" in v[0-9]*.[0-9]*.[0-9]*) ;; *) echo "release.sh: version $version is not vX.Y.Z" >&2; exit 2 ;; esac
# Absolute: the copy below runs from this directory.
mkdir -p "$out" && out=$(cd "$out" && pwd)
if [ -n "$proxy" ]; then mkdir -p "$proxy" && proxy=$(cd "$proxy" && pwd); fi

module=$(sed -n 's/^module //p' "$here/go.mod")
platform="$(go env GOOS)_$(go env GOARCH)"

cargo build --release -q -p piecestore-c --manifest-path "$root/Cargo.toml"
target_dir=$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

rm -rf "$out"
mkdir -p "$out/include" "$out/lib/$platform"
# The module's own files (not testdata: a consumer's test module lives there).
(cd "$here" && find . -maxdepth 1 -type f \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' \
  -o -name 'README.md' \) -exec cp {} "$out/" \;)
cp "$root/bindings/c/include/piecestore.h" "$out/include/"
# With CARGO_BUILD_TARGET set (a cross build, one run per platform), cargo puts it under the
# triple's directory.
cp "$target_dir/${CARGO_BUILD_TARGET:+$CARGO_BUILD_TARGET/}release/libpiecestore_c.a" "$out/lib/$platform/"
strip --strip-debug "$out/lib/$platform/libpiecestore_c.a"
echo "module tree: $out ($(du -sh "$out" | cut -f1), lib/$platform)"

if [ -n "$proxy" ]; then
  dir="$proxy/$module/@v"
  mkdir -p "$dir"
  cp "$out/go.mod" "$dir/$version.mod"
  printf '{"Version":"%s","Time":"%s"}\n' "$version" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$dir/$version.info"
  { [ -f "$dir/list" ] && grep -vx "$version" "$dir/list" || true; echo "$version"; } > "$dir/list.new"
  mv "$dir/list.new" "$dir/list"
  # A module zip: every file under "<module>@<version>/" (golang.org/x/mod/zip's layout).
  python3 - "$out" "$dir/$version.zip" "$module@$version" <<'EOF'
import os, sys, zipfile
src, dest, prefix = sys.argv[1:]
with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
    for base, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(base, name)
            z.write(path, prefix + "/" + os.path.relpath(path, src).replace(os.sep, "/"))
EOF
  echo "proxy: $proxy ($module@$version)"
fi
