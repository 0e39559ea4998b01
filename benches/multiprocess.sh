#!/usr/bin/env bash
# Several processes on one packed directory against one process with as many operations in
# flight, through `piecestore bench`, in one run on one filesystem (issue: many processes and
# many nodes on one packed store).
#
#   bash benches/multiprocess.sh             # the whole matrix (about 2 minutes)
#   QUICK=1 bash benches/multiprocess.sh     # 2-second phases, for a smoke run
#   BENCH_DIR=/mnt/disk bash benches/multiprocess.sh   # the filesystem to measure (default: target/)
#   PS=/tmp/piecestore-old bash benches/multiprocess.sh # measure another build (no cargo build)
#
# Rows: 4 processes × 16 in flight against 1 process × 64 (puts, then gets of 4 KiB pieces),
# and the newcomer's case, 2 processes each doing one call at a time against 1 process doing
# one at a time. Every process is a `piecestore bench` of its own (its own fresh key prefix) on
# the same directory, started together; the aggregate is the sum of their ops/s. Prints
# Markdown rows for benches/RESULTS.md and leaves the JSON reports in $BENCH_DIR/multiprocess-*/.
set -euo pipefail
cd "$(dirname "$0")/.."

dur=${DURATION:-8s}
if [ -n "${QUICK:-}" ]; then dur=2s; fi
root=${BENCH_DIR:-$PWD/target}
out="$root/multiprocess-$(date -u +%Y%m%dT%H%M%S)"
mkdir -p "$out"

if [ -n "${PS:-}" ]; then
  ps=$PS
else
  cargo build --release --quiet -p piecestore-cli
  ps=target/release/piecestore
  [ -x "$ps" ] || ps=${CARGO_TARGET_DIR:-target}/release/piecestore
fi

# ops/s, p50 µs, p99 µs, errors of one report
ops() {
  python3 - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
o = r["ops"][0]
lat = o["latency"]
print("%.0f %.0f %.0f %d" % (o["ops_per_s"], lat["p50_us"], lat["p99_us"], sum(o["errors"].values())))
EOF
}

# run NAME OP PROCESSES IN_FLIGHT: that many benches at once on one fresh directory; prints
# "aggregate-ops/s worst-p50 worst-p99 errors".
run() {
  local name=$1 op=$2 procs=$3 c=$4
  local store="$out/$name-store"
  rm -rf "$store"
  # The store exists before the benches start (none of them races to create it).
  echo x | "$ps" --store "$store" put warm_s0 - >/dev/null
  local pids=()
  for i in $(seq 1 "$procs"); do
    "$ps" --store "$store" bench --op "$op" -c "$c" -d "$dur" --size 4KiB --objects 2000 \
      --json "$out/$name-$i.json" -q >/dev/null 2>"$out/$name-$i.err" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  local total=0 p50=0 p99=0 errs=0
  for i in $(seq 1 "$procs"); do
    read -r o a b e < <(ops "$out/$name-$i.json")
    total=$((total + o)); errs=$((errs + e))
    [ "$a" -gt "$p50" ] && p50=$a
    [ "$b" -gt "$p99" ] && p99=$b
  done
  rm -rf "$store"
  echo "$total $p50 $p99 $errs"
}

echo "| case | op | processes × in flight | ops/s (sum) | p50 µs (worst) | p99 µs (worst) | errors | ratio |"
echo "|---|---|---|---:|---:|---:|---:|---:|"
for op in put get; do
  read -r one_o one_p50 one_p99 one_e < <(run "one-$op" "$op" 1 64)
  read -r four_o four_p50 four_p99 four_e < <(run "four-$op" "$op" 4 16)
  echo "| tuned | $op | 1 × 64 | $one_o | $one_p50 | $one_p99 | $one_e | 1.00 |"
  echo "| tuned | $op | 4 × 16 | $four_o | $four_p50 | $four_p99 | $four_e | $(python3 -c "print('%.2f' % ($four_o / max($one_o, 1)))") |"
done
for op in put get; do
  read -r one_o one_p50 one_p99 one_e < <(run "loop1-$op" "$op" 1 1)
  read -r two_o two_p50 two_p99 two_e < <(run "loop2-$op" "$op" 2 1)
  echo "| default (one call at a time) | $op | 1 × 1 | $one_o | $one_p50 | $one_p99 | $one_e | 1.00 |"
  echo "| default (one call at a time) | $op | 2 × 1 | $two_o | $two_p50 | $two_p99 | $two_e | $(python3 -c "print('%.2f' % ($two_o / max($one_o, 1)))") |"
done
echo
echo "reports: $out"
