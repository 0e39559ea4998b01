#!/usr/bin/env bash
# Packed puts and gets against one file per piece, through `piecestore bench`, in one run on one
# filesystem, with the disk's own floor beside them (issue: packed puts as fast as the disk).
#
#   bash benches/packing.sh                 # the whole matrix (about 10 minutes)
#   QUICK=1 bash benches/packing.sh         # 2-second phases, for a smoke run
#   BENCH_DIR=/mnt/disk bash benches/packing.sh   # the filesystem to measure (default: target/)
#
# Prints Markdown tables (the rows of benches/RESULTS.md) and leaves every JSON report in
# $BENCH_DIR/packing-<time>/. Every store names its packing setting: `file://DIR` is packed
# (the default), `file://DIR?pack=false` is one file per piece.
set -euo pipefail
cd "$(dirname "$0")/.."

dur=${DURATION:-8s}
short=${SHORT_DURATION:-5s}
if [ -n "${QUICK:-}" ]; then dur=2s short=2s; fi
root=${BENCH_DIR:-$PWD/target}
out="$root/packing-$(date -u +%Y%m%dT%H%M%S)"
mkdir -p "$out"

# Two commands: a target flag (--example) would narrow the first package to that target too.
cargo build --release --quiet -p piecestore-cli
cargo build --release --quiet -p piecestore-benches --example append_fsync
ps=target/release/piecestore
[ -x "$ps" ] || ps=${CARGO_TARGET_DIR:-target}/release/piecestore

# ops/s, p50 µs, p99 µs, puts issued in every phase (the pieces the write groups carried), errors
ops() {
  python3 - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
o = r["ops"][0]
issued = sum(sum(p.values()) for p in r["issued"].values())
lat = o["latency"]
print("%.0f %.0f %.0f %d %d" % (o["ops_per_s"], lat["p50_us"], lat["p99_us"], issued, sum(o["errors"].values())))
EOF
}
metric() { awk -v m="$2" '$1 ~ "^"m"\\{" {s += $2} END {print s + 0}' "$1"; }

echo "# packing benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, dir $out"
echo "filesystem: $(df -T "$out" | awk 'NR==2 {print $2, $1}')"
echo

# The disk's floors: dd's durable bandwidth (best of two) and one writer appending 4 KiB + fdatasync.
best=0
for _ in 1 2; do
  mbs=$(dd if=/dev/zero of="$out/dd" bs=1M count=512 conv=fsync 2>&1 | awk '/copied/ {v=$(NF-1); u=$NF; if (u ~ /^GB/) v*=1000; print v}')
  rm -f "$out/dd"
  best=$(python3 -c "print(max($best, ${mbs:-0}))")
done
echo "dd if=/dev/zero bs=1M count=512 conv=fsync: best of 2 = $best MB/s"
append=$(target/release/examples/append_fsync "$out" "${short%s}" 4096)
echo "append 4 KiB + fdatasync, one writer: $append"
echo

run() { # name store-url bench-args...
  local name=$1 url=$2; shift 2
  # Each run starts on a quiet disk: what earlier runs left in the page cache is written back
  # first, not during this run's fsyncs.
  sync
  # --keep: the cleanup's deletes would be write groups (tombstones) too.
  "$ps" --store "$url" bench -q --keep --json "$out/$name.json" --prometheus "$out/$name.prom" "$@" >/dev/null
  case $url in file://*) local p=${url#file://}; rm -rf "${p%%\?*}" ;; esac
}

echo "| op | in flight | packed ops/s | p50 µs | p99 µs | pack=false ops/s | p50 µs | p99 µs | packed / pack=false | packed: write groups |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in 1 16 1024 32768; do
  run "put-unpacked-c$c" "file://$out/unpacked-c$c?pack=false" --op put -c "$c" -d "$dur"
  run "put-packed-c$c" "file://$out/packed-c$c" --op put -c "$c" -d "$dur"
  read -r po pp p99 pn pe < <(ops "$out/put-packed-c$c.json")
  read -r uo up u99 un ue < <(ops "$out/put-unpacked-c$c.json")
  groups=$(metric "$out/put-packed-c$c.prom" piecestore_pack_writes_total)
  records=$(metric "$out/put-packed-c$c.prom" piecestore_pack_write_records_total)
  ratio=$(python3 -c "print(f'{$po / max($uo, 1):.2f}x')")
  echo "| put | $c | $po | $pp | $p99 | $uo | $up | $u99 | $ratio | $groups groups, $records records (errors: $pe / $ue) |"
done
for c in 1 16; do
  run "get-packed-c$c" "file://$out/gpacked-c$c" --op get -c "$c" -d "$short" --objects 2000
  run "get-unpacked-c$c" "file://$out/gunpacked-c$c?pack=false" --op get -c "$c" -d "$short" --objects 2000
  read -r po pp p99 pn pe < <(ops "$out/get-packed-c$c.json")
  read -r uo up u99 un ue < <(ops "$out/get-unpacked-c$c.json")
  ratio=$(python3 -c "print(f'{$po / max($uo, 1):.2f}x')")
  echo "| get | $c | $po | $pp | $p99 | $uo | $up | $u99 | $ratio | (errors: $pe / $ue) |"
done
echo

# The packed run at 32,768 in flight against dd: payload bytes per second.
python3 - "$out/put-packed-c32768.json" "$best" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); o = r["ops"][0]
mbs = o["bytes_per_s"] / 1e6
print(f"packed puts at 32,768 in flight: {mbs:.0f} MB/s of payload = {100 * mbs / float(sys.argv[2]):.0f}% of dd")
EOF

# s3s-fs on 127.0.0.1: packed against pack=false at one in flight (latency), and how many PUTs
# 256 puts in flight cost (write groups = pack PUTs on a bucket). Every run gets a fresh s3s-fs
# and data directory: s3s-fs keeps two metadata files per object in one flat directory, so a
# server that earlier runs filled answers slower, and the comparison would measure that.
s3run() { # name bucket?query bench-args...
  local name=$1 url=$2; shift 2
  local data="$out/s3s-$name" port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$data/${url%%\?*}"
  s3s-fs --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$data" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
  XDG_CACHE_HOME="$data.cache" run "$name" "http://127.0.0.1:$port/$url" "$@"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$data" "$data.cache"
}
if command -v s3s-fs >/dev/null; then
  export AWS_ACCESS_KEY_ID=BENCHACCESSKEY AWS_SECRET_ACCESS_KEY=bench-secret-key-not-a-real-one
  echo "| s3s-fs put | in flight | ops/s | p50 µs | p99 µs | pieces put | pack PUTs |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  ratios=()
  for round in 1 2 3; do
    # Each goes first in turn, so that neither always meets what the other left behind.
    if [ $((round % 2)) = 1 ]; then
      s3run "s3-put-packed-c1-r$round" packed --op put -c 1 -d "$short"
      s3run "s3-put-unpacked-c1-r$round" unpacked?pack=false --op put -c 1 -d "$short"
    else
      s3run "s3-put-unpacked-c1-r$round" unpacked?pack=false --op put -c 1 -d "$short"
      s3run "s3-put-packed-c1-r$round" packed --op put -c 1 -d "$short"
    fi
    read -r po pp p99 pn pe < <(ops "$out/s3-put-packed-c1-r$round.json")
    read -r uo up u99 un ue < <(ops "$out/s3-put-unpacked-c1-r$round.json")
    echo "| packed (round $round) | 1 | $po | $pp | $p99 | $pn | $(metric "$out/s3-put-packed-c1-r$round.prom" piecestore_pack_writes_total) |"
    echo "| pack=false (round $round) | 1 | $uo | $up | $u99 | $un | (one PUT each) |"
    ratios+=("$(python3 -c "print($pp / max($up, 1))")")
  done
  s3run s3-put-packed-c256 many --op put -c 256 -d "$dur"
  read -r mo mp m99 mn me < <(ops "$out/s3-put-packed-c256.json")
  groups=$(metric "$out/s3-put-packed-c256.prom" piecestore_pack_writes_total)
  echo "| packed | 256 | $mo | $mp | $m99 | $mn | $groups |"
  python3 -c "import statistics; r=[$(IFS=,; echo "${ratios[*]}")]; print('p50 packed / pack=false at 1 in flight, per round: ' + ', '.join(f'{x:.2f}x' for x in r) + f'; median {statistics.median(r):.2f}x')"
  python3 -c "print(f'PUTs per 100 pieces at 256 in flight: {100 * $groups / max($mn, 1):.2f} (write groups of the warm-up and the measurement, per piece put in them)')"
fi
rm -rf "$out"/packed-* "$out"/unpacked-* "$out"/gpacked-* "$out"/gunpacked-*
echo
echo "JSON reports: $out"
