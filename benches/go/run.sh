#!/usr/bin/env bash
# The Go binding against minio-go (github.com/minio/minio-go/v7): the same 4 KiB and 1 MiB puts
# and gets at concurrency 16 on one s3s-fs server on 127.0.0.1, in one run; then the binding's
# per-operation latency on memory:// next to the Rust core's (benches/examples/core_latency.rs),
# whose difference is the cost of the cgo boundary. Prints JSON lines, then a markdown table
# (the figures in benches/RESULTS.md).
#
#   bash benches/go/run.sh [SECONDS_PER_RUN]
#
# Needs: s3s-fs (scripts/test.sh installs it), Go, Rust.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-5}
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -q -p piecestore-c -p piecestore-benches --example core_latency
(cd benches/go && go build -o ../../target/gobench .)

dir=$(mktemp -d)
port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
export AWS_ACCESS_KEY_ID=GOBENCH$RANDOM AWS_SECRET_ACCESS_KEY=secret$RANDOM$RANDOM$RANDOM
mkdir -p "$dir/data/bench"
s3s-fs --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
  --secret-key "$AWS_SECRET_ACCESS_KEY" "$dir/data" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done

target/gobench -endpoint "http://127.0.0.1:$port" -bucket bench -duration "${secs}s" | tee "$dir/go.jsonl"
cargo run --release -q -p piecestore-benches --example core_latency -- memory:// 4096 20000 |
  tee "$dir/core.json"

python3 - "$dir/go.jsonl" "$dir/core.json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
core = json.load(open(sys.argv[2]))
print("\n| size | op | client | ops/s | MB/s | p50 µs | p99 µs | errors |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    if "op" in r:
        size = "4 KiB" if r["size"] == 4096 else "1 MiB"
        print(f"| {size} | {r['op']} | {r['client']} | {r['ops_per_s']:,.0f} | {r['mb_per_s']:,.1f} "
              f"| {r['p50_us']:,.0f} | {r['p99_us']:,.0f} | {r['errors']} |")
go = [r for r in rows if "put_us" in r][0]
print("\n| memory://, 4 KiB, one at a time | put µs/op | get µs/op |")
print("|---|---|---|")
print(f"| Rust core | {core['put_us']:.2f} | {core['get_us']:.2f} |")
print(f"| Go binding (cgo) | {go['put_us']:.2f} | {go['get_us']:.2f} |")
print(f"| ratio | {go['put_us']/core['put_us']:.2f}× | {go['get_us']/core['get_us']:.2f}× |")
PY
