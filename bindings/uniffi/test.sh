#!/usr/bin/env bash
# Tests of the UniFFI binding (bindings/uniffi): builds the library (debug), generates the
# Kotlin, Swift and Python sources with this crate's `uniffi-bindgen`, then
#   - Kotlin on the JVM: the Maven project in kotlin/ (JUnit 5 tests and the usage example);
#   - Python: a smoke test of the generated module;
#   - Swift: generated into the package layout of swift/ and checked to be there. There is no
#     Swift toolchain on these machines: the Swift sources are NOT compiled here.
# Needs cargo, a JDK 17+, Maven and python3; Maven fetches its plugins and dependencies.
set -euo pipefail
cd "$(dirname "$0")/../.."

# A missing JDK or Maven fails in CI and skips the Kotlin tests elsewhere.
kotlin=true
for tool in java mvn; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    [ "${CI:-}" = true ] && { echo "uniffi: $tool is required in CI" >&2; exit 1; }
    echo "uniffi: no $tool: the Kotlin tests will be SKIPPED"
    kotlin=false
  fi
done

started=$(date +%s)
out=target/uniffi
lib=target/debug/libpiecestore_uniffi.so
case "$(uname -s)" in Darwin) lib=target/debug/libpiecestore_uniffi.dylib ;; esac
bindgen=(cargo run -q -p piecestore-uniffi --features cli --bin uniffi-bindgen --)

echo "== uniffi: cargo build -p piecestore-uniffi --features cli (debug)"
# With `cli`, so that the library and the generator are one build; the feature only adds the
# generator's dependencies, not a single exported function.
cargo build -p piecestore-uniffi --features cli --lib --bins

echo "== uniffi: generate Kotlin, Python and Swift"
rm -rf "$out/kotlin" "$out/python" "$out/swift"
"${bindgen[@]}" generate --library "$lib" --language kotlin --out-dir "$out/kotlin" --no-format
"${bindgen[@]}" generate --library "$lib" --language python --out-dir "$out/python" --no-format
# Swift: the generation part of swift/generate.sh, from the debug library, into a copy of the
# package layout under target/ (no release build, nothing written into the source tree).
bindings/uniffi/swift/generate.sh --lib "$lib" --out "$out/swift"
for f in "$out/swift/Sources/PieceStoreKit/PieceStoreKit.swift" \
  "$out/swift/Sources/PieceStoreKitFFI/include/PieceStoreKitFFI.h" \
  "$out/swift/Sources/PieceStoreKitFFI/include/module.modulemap"; do
  [ -s "$f" ] || { echo "missing generated Swift file: $f" >&2; exit 1; }
done
grep -q "public static func openAsync" "$out/swift/Sources/PieceStoreKit/PieceStoreKit.swift"
grep -q "module PieceStoreKitFFI" "$out/swift/Sources/PieceStoreKitFFI/include/module.modulemap"
echo "swift: sources generated and present (not compiled: no Swift toolchain on this machine)"

echo "== uniffi: Python smoke test of the generated module"
py=$(mktemp -d)
trap 'rm -rf "$py"' EXIT
cp "$out/python/piecestore_uniffi.py" "$py/"
ln -s "$PWD/$lib" "$py/"
PYTHONPATH="$py" python3 bindings/uniffi/tests/smoke.py

if $kotlin; then
  echo "== uniffi: Kotlin on the JVM (mvn test: JUnit 5 tests and the example)"
  # Not -q: CI reads surefire's "Tests run: N, Failures: 0" lines.
  # `clean`: classes of deleted sources must not linger (Kotlin compiles non-incrementally).
  # `package`: after the tests, the jar with the native library inside.
  mvn -B -ntp -Dstyle.color=never -f bindings/uniffi/kotlin/pom.xml clean package \
    -Dgenerated.kotlin="$PWD/$out/kotlin" -Dnative.lib.dir="$PWD/$(dirname "$lib")"

  echo "== uniffi: the jar alone (its native library inside) runs the example"
  jar=$(ls "$PWD/$out"/maven/piecestore-kotlin-*.jar)
  # (grep without -q: it reads the whole listing, so unzip never dies of SIGPIPE, which
  # pipefail would count as a failure.)
  unzip -l "$jar" | grep " linux-x86-64/libpiecestore_uniffi.so$" >/dev/null ||
    { echo "no linux-x86-64/libpiecestore_uniffi.so in $jar" >&2; exit 1; }
  mvn -B -ntp -q -f bindings/uniffi/kotlin/pom.xml dependency:build-classpath \
    -Dmdep.includeScope=runtime -Dmdep.outputFile="$PWD/$out/classpath.txt"
  classpath="$jar:$(cat "$out/classpath.txt")"
  run=$(mktemp -d)
  # No jna.library.path and no library beside it: JNA must extract the jar's copy (its debug
  # log names where it loaded the library from).
  (cd "$run" && env -u LD_LIBRARY_PATH java -Djna.debug_load=true \
    -cp "$classpath" \
    dev.piecestore.example.ExampleKt "$run/store" >"$run/out" 2>"$run/err") ||
    { cat "$run/err" >&2; exit 1; }
  grep -qx "hello, pieces" "$run/out" || { cat "$run/out" "$run/err" >&2; exit 1; }
  grep -q "Found library resource at jar:file:$jar!/linux-x86-64/libpiecestore_uniffi.so" "$run/err" ||
    { echo "the library was not loaded from the jar:" >&2; cat "$run/err" >&2; exit 1; }
  echo "kotlin jar: $(basename "$jar") ($(du -h "$jar" | cut -f1)) ran the example with the library from inside it"
  rm -rf "$run"
fi

echo "== uniffi: all passed in $(($(date +%s) - started)) s"
