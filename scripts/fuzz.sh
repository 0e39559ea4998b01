#!/usr/bin/env bash
# Runs PieceStore's coverage-guided fuzz targets (fuzz/fuzz_targets) with libFuzzer, on the
# stable toolchain: the same instrumentation `cargo fuzz run -s none` uses, without needing
# cargo-fuzz or nightly.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Seconds default to $PIECESTORE_FUZZ_SECS, else 60; targets to all of them. Each target starts
# from its seed corpus (fuzz/corpus/TARGET, in the repository) and keeps what it finds in
# target/fuzz/corpus/TARGET; a crash is saved in target/fuzz/artifacts/TARGET/ and fails the
# script. Prints one line per target: executions, seconds, corpus size.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-${PIECESTORE_FUZZ_SECS:-60}}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(pack_format keys config c_abi s3_http)
fi

host=$(rustc -vV | sed -n 's/^host: //p')
out=$PWD/target/fuzz
# --target: the flags then reach only the fuzzed code, not build scripts and proc macros.
# (Debug assertions and overflow checks are on in fuzz/Cargo.toml's release profile.)
export CARGO_TARGET_DIR=$out/build
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares"
# s3_http needs the server (`--features serve`), whose dependencies double the build: one
# build with it serves every target.
features=()
for t in "${targets[@]}"; do
  [ "$t" = s3_http ] && features=(--features serve)
done
echo "== fuzz: building ${targets[*]}"
cargo build -q --release --locked --manifest-path fuzz/Cargo.toml --target "$host" \
  "${features[@]}" $(printf -- '--bin %s ' "${targets[@]}")

status=0
for t in "${targets[@]}"; do
  mkdir -p "$out/corpus/$t" "$out/artifacts/$t" "fuzz/corpus/$t" "fuzz/regressions/$t"
  log=$out/$t.log
  # The first corpus dir takes what the run finds; the seeds are only read.
  if ! "$CARGO_TARGET_DIR/$host/release/$t" "$out/corpus/$t" "fuzz/corpus/$t" "fuzz/regressions/$t" \
      -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
      -artifact_prefix="$out/artifacts/$t/" > "$log" 2>&1; then
    echo "== fuzz $t: FAILED (a crash; the input is in $out/artifacts/$t/)"
    grep -A30 -E "panicked|ERROR: libFuzzer|SUMMARY" "$log" | head -60 || tail -40 "$log"
    status=1
    continue
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  corpus=$(ls "$out/corpus/$t" | wc -l)
  echo "== fuzz $t: ${execs:-?} executions in ${secs}s, 0 crashes, corpus $corpus new inputs"
done
exit $status
