#!/usr/bin/env bash
# The data cache against no cache, on s3s-fs, in one run (issue: data cache tiers).
#
#   bash benches/cache.sh            # 8-second phases (about 2 minutes)
#   QUICK=1 bash benches/cache.sh    # 3-second phases
#
# The last line (cache_latency ... packed) measures packed stores: a memory-tier hit checked
# against the local index, and one object's 16 pieces read with one get_many, packed
# (sharing ranged reads of their pack) against unpacked (one GET each).
#
# Rows: `piecestore bench --op get --size 4KiB` over a working set of 1,000 pieces that fits
# the memory tier, with the store's default cache (a 256 MiB memory tier in front of a bucket;
# `bench` turns the default off to measure the backend, so it is set here) and with
# `cache_memory=0` (every get is an S3 GET). The cached rows admit writes too
# (`cache_admit=reads-and-writes`), so the benchmark's prefill leaves the working set warm: at
# 43 ms per s3s-fs GET, one call at a time would otherwise spend the whole phase filling it, at 16 in flight and one call at a time; then the
# cache_latency example: memory-tier and disk-tier hits through the Rust API, one get at a
# time, against a plain local-file get of the same size. Pieces are stored one object per
# piece (`pack=false`), so an uncached get is one GET of its own. s3s-fs keeps its bucket in
# /dev/shm (S3_DIR to change). Prints Markdown rows for benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

dur=${DURATION:-8s}
if [ -n "${QUICK:-}" ]; then dur=3s; fi
s3dir=${S3_DIR:-/dev/shm}/piecestore-cache-$$
mkdir -p "$s3dir/bucket" "$s3dir/packed" "$s3dir/unpacked"
trap 'kill $s3pid 2>/dev/null || true; rm -rf "$s3dir"' EXIT

cargo build --release --quiet -p piecestore-cli
cargo build --release --quiet -p piecestore-benches --example cache_latency
ps=target/release/piecestore
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export AWS_ACCESS_KEY_ID=BENCHACCESSKEY AWS_SECRET_ACCESS_KEY=bench-secret-key-not-a-real-one
port=$(free_port)
s3s-fs --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
  --secret-key "$AWS_SECRET_ACCESS_KEY" "$s3dir" >/dev/null 2>&1 &
s3pid=$!
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
base="http://127.0.0.1:$port/bucket"

ops() {
  python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
o = r["ops"][0]
lat = o["latency"]
print("%.0f %.1f %.1f %d" % (o["ops_per_s"], lat["p50_us"], lat["p99_us"], sum(o["errors"].values())))
PY
}

echo "# cache benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, s3s-fs (bucket in ${S3_DIR:-/dev/shm}), $dur per row"
echo
echo "| get 4 KiB, 1,000 pieces | in flight | ops/s | p50 µs | p99 µs | errors | cache line |"
echo "|---|---|---:|---:|---:|---:|---|"
declare -A rate
for c in 16 1; do
  for mode in off on; do
    q="pack=false&cache_memory=256MiB&cache_admit=reads-and-writes"
    [ "$mode" = off ] && q="pack=false&cache_memory=0"
    f=$(mktemp)
    "$ps" --store "$base?$q" bench --op get --size 4KiB --objects 1000 -c "$c" -d "$dur" \
      --prefix "b-$mode-$c-" -q --json "$f" > "$f.txt"
    read -r o p50 p99 e < <(ops "$f")
    rate[$mode-$c]=$o
    line=$(grep '^cache:' "$f.txt" || echo "-")
    label=$([ "$mode" = on ] && echo "memory tier 256 MiB (default size), warm" || echo "no cache (cache_memory=0)")
    echo "| $label | $c | $o | $p50 | $p99 | $e | $line |"
    rm -f "$f" "$f.txt"
  done
done
echo
for c in 16 1; do
  python3 -c "print(f'warm/cold at $c in flight: {${rate[on-$c]} / max(${rate[off-$c]}, 1):.1f}x (target >= 20x)')"
done
echo
echo "cache_latency (Rust API, one get at a time, 4 KiB, 2,000 pieces):"
target/release/examples/cache_latency "$base?pack=false" 4096 2000
echo
echo "cache_latency packed (the index answers first on a hit; one object's pieces share reads):"
target/release/examples/cache_latency "${base%/bucket}/packed" 4096 2000 packed "${base%/bucket}/unpacked"
