#!/usr/bin/env bash
# gRPC against the S3-HTTP path of one `piecestore serve` (issue 23's benchmark), in one run.
#
#   bash benches/grpc.sh            # 8-second phases (about 2 minutes)
#   QUICK=1 bash benches/grpc.sh    # 3-second phases
#
# One server over a directory (DATA_DIR, default /dev/shm; packed, the default of a directory),
# with an access key for S3 and a token for gRPC. `piecestore bench` drives it through two
# stores: `http://…/pieces` (S3, SigV4-signed) and `grpc://…/pieces` (the core's gRPC backend),
# both with pack=false so that the client measures the server. Rows: 4 KiB GET at 64 in flight
# and one at a time, 4 KiB PUT at 64, and 64 MiB GET (streamed by the server) one at a time
# and 4 at a time. Prints Markdown rows for benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

dur=${DURATION:-8s}
if [ -n "${QUICK:-}" ]; then dur=3s; fi
root=${DATA_DIR:-/dev/shm}/piecestore-grpc-bench-$$
mkdir -p "$root/served"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$root"' EXIT

cargo build --release --quiet -p piecestore-cli
ps=target/release/piecestore
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
export AWS_ACCESS_KEY_ID=BENCHACCESSKEY AWS_SECRET_ACCESS_KEY=bench-secret-key-not-a-real-one
export PIECESTORE_GRPC_TOKEN=bench-token-not-a-real-one
port=$(free_port)
PIECESTORE_SERVE_ACCESS_KEY=$AWS_ACCESS_KEY_ID PIECESTORE_SERVE_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
  PIECESTORE_SERVE_TOKEN=$PIECESTORE_GRPC_TOKEN \
  "$ps" --store "$root/served" serve --listen "127.0.0.1:$port" >/dev/null 2>"$root/serve.log" &
pids+=($!)
wait_port "$port"

row() { # label url op size concurrency objects
  local json="$root/run.json"
  "$ps" --store "$2" bench --op "$3" --size "$4" -c "$5" --duration "$dur" --objects "$6" \
    --json "$json" >/dev/null 2>"$root/bench.log" || { cat "$root/bench.log" >&2; exit 1; }
  python3 - "$json" "$1" "$3" "$4" "$5" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
o = r["ops"][0]
lat = o["latency"]
errs = sum(o["errors"].values())
mb = o.get("bytes_per_s", 0) / 1e6
print(f"| {sys.argv[2]} | {sys.argv[3]} {sys.argv[4]} | {sys.argv[5]} | {o['ops_per_s']:.0f} | {mb:.0f} | {lat['p50_us']:.0f} | {lat['p99_us']:.0f} | {errs} |")
PY
}

echo "# gRPC vs S3-HTTP on one piecestore serve, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, data in ${DATA_DIR:-/dev/shm}, $dur per row"
echo
echo "| path | op | in flight | ops/s | MB/s | p50 µs | p99 µs | errors |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for spec in "get 4KiB 64 2000" "get 4KiB 1 2000" "put 4KiB 64 0" "get 64MiB 1 4" "get 64MiB 4 4"; do
  set -- $spec
  row "S3 (HTTP, SigV4)" "http://127.0.0.1:$port/pieces?pack=false" "$1" "$2" "$3" "$4"
  row "gRPC" "grpc://127.0.0.1:$port/pieces?pack=false" "$1" "$2" "$3" "$4"
done
