#!/usr/bin/env bash
# Builds the PieceStore library for Swift and generates the Swift sources where Package.swift
# expects them:
#
#   Sources/PieceStoreKit/PieceStoreKit.swift                the Swift API
#   Sources/PieceStoreKitFFI/include/PieceStoreKitFFI.h      the C declarations it calls
#   Sources/PieceStoreKitFFI/include/module.modulemap        their Clang module
#   lib/libpiecestore_uniffi.a                               the static library (host builds)
#   PieceStoreKitFFI.xcframework                             (--xcframework) library + headers
#                                                            for iOS, the iOS simulator, macOS
#
# Usage:
#   generate.sh                       release build for this machine; static library into lib/
#   generate.sh --target TRIPLE ...   release builds for these targets (installed with
#                                     `rustup target add`); the first one's into lib/
#   generate.sh --xcframework         (macOS, needs xcodebuild) release builds for
#                                     aarch64-apple-ios, aarch64-apple-ios-sim,
#                                     x86_64-apple-ios, aarch64-apple-darwin and
#                                     x86_64-apple-darwin, wrapped in PieceStoreKitFFI.xcframework
#   generate.sh --lib PATH [--out DIR]
#                                     no build: generate the sources from an already built
#                                     library (what CI does with the debug build), into the
#                                     package layout under DIR (default: this directory)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
module=PieceStoreKit
ffi=${module}FFI
name=piecestore_uniffi

lib=""
out="$here"
targets=()
xcframework=false
while [ $# -gt 0 ]; do
  case "$1" in
    --lib) lib="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
    --out) mkdir -p "$2"; out=$(cd "$2" && pwd); shift 2 ;;
    --target) targets+=("$2"); shift 2 ;;
    --xcframework) xcframework=true; shift ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "generate.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
cd "$root"

# The library to generate from, building it unless one was given.
profile=(--release)
if [ -n "$lib" ]; then
  # No release build: generate with the debug generator, as the library given was built.
  profile=()
else
  if $xcframework; then
    command -v xcodebuild >/dev/null || { echo "generate.sh: --xcframework needs xcodebuild (macOS)" >&2; exit 1; }
    targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin)
  fi
  if [ ${#targets[@]} -eq 0 ]; then
    echo "== cargo build --release -p piecestore-uniffi (host)"
    cargo build --release -p piecestore-uniffi
    built=(target/release)
  else
    built=()
    for t in "${targets[@]}"; do
      echo "== cargo build --release -p piecestore-uniffi --target $t"
      cargo build --release -p piecestore-uniffi --target "$t"
      built+=("target/$t/release")
    done
  fi
  # Generating reads the metadata UniFFI embeds in the library: a static archive of any
  # target will do. (Generating from a copy: the generator's own build below, with the `cli`
  # feature, rewrites target/release/libpiecestore_uniffi.a.)
  lib="$root/${built[0]}/lib$name.a"
  if ! $xcframework; then
    mkdir -p "$here/lib"
    cp "$lib" "$here/lib/lib$name.a"
    lib="$here/lib/lib$name.a"
  fi
fi

gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
echo "== uniffi-bindgen generate --language swift ($lib)"
# (The `${a[@]+...}` form: macOS's bash 3.2 calls an empty array unbound under `set -u`.)
cargo run -q ${profile[@]+"${profile[@]}"} -p piecestore-uniffi --features cli --bin uniffi-bindgen -- \
  generate --library "$lib" --language swift --out-dir "$gen" --no-format

mkdir -p "$out/Sources/$module" "$out/Sources/$ffi/include"
cp "$gen/$module.swift" "$out/Sources/$module/$module.swift"
cp "$gen/$ffi.h" "$out/Sources/$ffi/include/$ffi.h"
# SwiftPM reads a C target's module map from include/module.modulemap.
cp "$gen/$ffi.modulemap" "$out/Sources/$ffi/include/module.modulemap"
echo "generated: $out/Sources/$module/$module.swift, $out/Sources/$ffi/include/{$ffi.h,module.modulemap}"

if $xcframework; then
  # One static library per platform: the two iOS simulator and the two macOS architectures
  # are merged with lipo first (an xcframework holds one library per platform).
  fat=target/uniffi/xcframework
  rm -rf "$fat" "$here/$ffi.xcframework"
  mkdir -p "$fat/ios-sim" "$fat/macos" "$fat/headers"
  lipo -create target/aarch64-apple-ios-sim/release/lib$name.a target/x86_64-apple-ios/release/lib$name.a \
    -output "$fat/ios-sim/lib$name.a"
  lipo -create target/aarch64-apple-darwin/release/lib$name.a target/x86_64-apple-darwin/release/lib$name.a \
    -output "$fat/macos/lib$name.a"
  cp "$gen/$ffi.h" "$fat/headers/"
  cp "$gen/$ffi.modulemap" "$fat/headers/module.modulemap"
  xcodebuild -create-xcframework \
    -library target/aarch64-apple-ios/release/lib$name.a -headers "$fat/headers" \
    -library "$fat/ios-sim/lib$name.a" -headers "$fat/headers" \
    -library "$fat/macos/lib$name.a" -headers "$fat/headers" \
    -output "$here/$ffi.xcframework"
  echo "generated: $here/$ffi.xcframework (Package.swift uses it instead of lib/)"
fi
