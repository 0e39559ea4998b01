#!/usr/bin/env bash
# Cross-checks `piecestore bench` against two independent S3 clients, minio-go (Go) and boto3
# (Python), doing the same 4 KiB puts and gets at concurrency 16 against one s3s-fs server on
# 127.0.0.1, in one run: if piecestore bench reaches at least their ops/s, it measures the
# server, not itself. Prints a markdown table (the figures in benches/RESULTS.md).
#
#   bash benches/crosscheck/run.sh [SECONDS]
#
# Needs: s3s-fs (scripts/test.sh installs it), Go, and boto3 (in target/test-venv via moto).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
export PATH="$PWD/target/test-venv/bin:$HOME/.cargo/bin:$PATH"
cargo build --release -q -p piecestore-cli
(cd benches/crosscheck/gos3 && go build -o ../../../target/gos3 .)
py=target/test-venv/bin/python
$py -c "import boto3" 2>/dev/null || { echo "boto3 missing: run scripts/test.sh once (it installs moto, which brings boto3)"; exit 1; }

dir=$(mktemp -d)
port=$($py -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
export AWS_ACCESS_KEY_ID=CROSSCHECK$RANDOM AWS_SECRET_ACCESS_KEY=secret$RANDOM$RANDOM
mkdir -p "$dir/data/bench"
s3s-fs --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
  --secret-key "$AWS_SECRET_ACCESS_KEY" "$dir/data" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
endpoint=http://127.0.0.1:$port

# s3s-fs ignores If-None-Match; conditional_writes=on sends create-only puts as one PUT each
# (as the other clients do) instead of the HEAD-then-PUT fallback. pack=false: one PUT per
# piece, as the other clients send (packing would measure something else).
store="$endpoint/bench?conditional_writes=on&pack=false"
echo "| op | client | ops/s | p50 | p99 | errors |"
echo "|---|---|---|---|---|---|"
for op in put get; do
  target/release/piecestore --store "$store" bench --op $op --size 4KiB -c 16 \
    --duration ${secs}s --warmup 0s --objects 1000 -q --json "$dir/ps.json" >/dev/null
  $py - "$dir/ps.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); o = r["ops"][0]
print(f"| {o['op']} | piecestore bench | {o['ops_per_s']:.0f} | {o['latency']['p50_us']:.0f} µs | {o['latency']['p99_us']:.0f} µs | {r['total']['errors']} |")
PY
  for client in "target/gos3" "$py benches/crosscheck/s3load.py"; do
    if [ "$client" = target/gos3 ]; then
      out=$(target/gos3 -endpoint "$endpoint" -bucket bench -op $op -size 4096 -concurrency 16 -duration ${secs}s)
    else
      out=$($py benches/crosscheck/s3load.py --endpoint "$endpoint" --bucket bench --op $op --size 4096 --concurrency 16 --duration "$secs")
    fi
    echo "$out" | $py -c "
import json, sys
o = json.load(sys.stdin)
print(f\"| {o['op']} | {o['client']} | {o['ops_per_s']:.0f} | {o['p50_us']:.0f} µs | {o['p99_us']:.0f} µs | {o['errors']} |\")"
  done
done
