#!/usr/bin/env bash
# `piecestore serve` against s3s-fs 0.14.1 (the S3 server of the s3s crate `serve` is built on),
# both over a local directory on the same box, in one run (issue: `piecestore serve`).
#
#   bash benches/serve.sh            # 8-second phases (about 3 minutes)
#   QUICK=1 bash benches/serve.sh    # 3-second phases
#   PIN=1 bash benches/serve.sh      # servers on CPU 0, clients on CPU 1
#
# Each server is driven by `piecestore bench` over a store that does not pack itself
# (`pack=false`, one S3 object per piece: the client measures the server) and has no cache
# (`bench` turns the default memory tier off). `serve` keeps the default of a directory: packed,
# no cache. Rows: 4 KiB PUT and GET at 64 in flight, 1 MiB GET at 16 in flight, and 4 KiB GET
# one call at a time (a newcomer's loop). The last rows set the server's own cost: the same
# 4 KiB GET through `serve` against the Rust API on the directory itself, in process. Both
# directories live in DATA_DIR (default /dev/shm, so that the disk's speed does not decide).
# Then warp (benches/warp) runs the PUT and GET rows against both servers too (WARP=0 skips).
# Prints Markdown rows for benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

dur=${DURATION:-8s}
# PIN=1: each server on CPU 0 and every client (and the in-process rows) on CPU 1, so that the
# server has a core of its own instead of sharing both with its load generator.
srv_pin="" cli_pin=""
if [ -n "${PIN:-}" ]; then srv_pin="taskset -c 0" cli_pin="taskset -c 1"; fi
if [ -n "${QUICK:-}" ]; then dur=3s; fi
root=${DATA_DIR:-/dev/shm}/piecestore-serve-bench-$$
mkdir -p "$root/s3s/bucket" "$root/served"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$root"' EXIT

cargo build --release --quiet -p piecestore-cli
ps=target/release/piecestore
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export AWS_ACCESS_KEY_ID=BENCHACCESSKEY AWS_SECRET_ACCESS_KEY=bench-secret-key-not-a-real-one
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

s3port=$(free_port)
$srv_pin s3s-fs --host 127.0.0.1 --port "$s3port" --access-key "$AWS_ACCESS_KEY_ID" \
  --secret-key "$AWS_SECRET_ACCESS_KEY" "$root/s3s" >/dev/null 2>&1 &
pids+=($!)
servport=$(free_port)
PIECESTORE_SERVE_ACCESS_KEY=$AWS_ACCESS_KEY_ID PIECESTORE_SERVE_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
  $srv_pin "$ps" --store "$root/served" serve --listen "127.0.0.1:$servport" >/dev/null 2>"$root/serve.log" &
pids+=($!)
wait_port "$s3port"
wait_port "$servport"

row() { # label url op size concurrency
  local json="$root/run.json"
  $cli_pin "$ps" --store "$2" bench --op "$3" --size "$4" -c "$5" --duration "$dur" --objects 2000 \
    --json "$json" >/dev/null 2>&1
  python3 - "$json" "$1" "$3" "$4" "$5" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
o = r["ops"][0]
lat = o["latency"]
errs = sum(o["errors"].values())
mib = o.get("bytes_per_s", 0) / (1 << 20)
print(f"| {sys.argv[2]} | {sys.argv[3]} {sys.argv[4]} | {sys.argv[5]} | {o['ops_per_s']:.0f} | {mib:.1f} | {lat['p50_us']:.0f} | {lat['p99_us']:.0f} | {errs} |")
with open(sys.argv[1] + ".rate", "w") as f:
    f.write(f"{o['ops_per_s']}")
PY
}

echo "# piecestore serve vs s3s-fs 0.14.1, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores${PIN:+ (servers on CPU 0, clients on CPU 1)}, data in ${DATA_DIR:-/dev/shm}, $dur per row"
echo
echo "| server | op | in flight | ops/s | MiB/s | p50 µs | p99 µs | errors |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
declare -A rate
for spec in "put 4KiB 64" "get 4KiB 64" "get 1MiB 16" "get 4KiB 1"; do
  set -- $spec
  for srv in s3s-fs serve; do
    if [ "$srv" = s3s-fs ]; then url="http://127.0.0.1:$s3port/bucket?pack=false"; else url="http://127.0.0.1:$servport/pieces?pack=false"; fi
    row "$srv" "$url" "$1" "$2" "$3"
    rate["$srv $1 $2 $3"]=$(cat "$root/run.json.rate")
  done
done
echo
echo "The server's own cost: 4 KiB GET through \`serve\` against the Rust API on the same directory, in process:"
echo
echo "| path | op | in flight | ops/s | MiB/s | p50 µs | p99 µs | errors |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for c in 64 1; do
  row "serve (HTTP)" "http://127.0.0.1:$servport/pieces?pack=false" get 4KiB "$c"
  rate["http $c"]=$(cat "$root/run.json.rate")
  row "Rust API, in process" "$root/api" get 4KiB "$c"
  rate["api $c"]=$(cat "$root/run.json.rate")
done

# The same rows from warp (minio/warp, pinned in benches/warp), a load generator no one here
# wrote. WARP=0 skips it; without Go it is skipped too.
if [ "${WARP:-1}" != 0 ] && command -v go >/dev/null; then
  (cd benches/warp && go build -o ../../target/warp github.com/minio/warp)
  warp_bin=$PWD/target/warp
  wdur=${WARP_DURATION:-10s}
  if [ -n "${QUICK:-}" ]; then wdur=6s; fi
  warp_row() { # server port bucket op size concurrency objects
    local out="$root/warp.txt"
    (cd "$root" && $cli_pin "$warp_bin" "$4" --host "127.0.0.1:$2" --access-key "$AWS_ACCESS_KEY_ID" \
      --secret-key "$AWS_SECRET_ACCESS_KEY" --bucket "$3" --obj.size "$5" --concurrent "$6" \
      ${7:+--objects "$7"} --duration "$wdur" --benchdata "$root/warp-data" --no-color >"$out" 2>&1) ||
      { echo "warp $4 against $1 failed:" >&2; tail -5 "$out" >&2; return 1; }
    python3 - "$out" "$1" "$4" "$5" "$6" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
op = sys.argv[3].upper()
part = text[text.index(f"Report: {op}."):]
objs = float(re.search(r"Average: [0-9.]+ [KMG]iB/s, ([0-9.]+) obj/s", part).group(1))
mib = re.search(r"Average: ([0-9.]+ [KMG]iB/s)", part).group(1)
reqs = re.search(r"Reqs: Avg: ([^,]+), 50%: ([^,]+), 90%: ([^,]+), 99%: ([^,]+),", part)
print(f"| {sys.argv[2]} | {sys.argv[3]} {sys.argv[4]} | {sys.argv[5]} | {objs:.0f} | {mib} | {reqs.group(2)} | {reqs.group(4)} |")
with open(sys.argv[1] + ".rate", "w") as f:
    f.write(str(objs))
PY
  }
  echo
  echo "warp $(cd benches/warp && go list -m -f '{{.Version}}' github.com/minio/warp), $wdur per row (warp reports the steady middle of each run):"
  echo
  echo "| server | op | in flight | obj/s | throughput | p50 | p99 |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  for spec in "put 4KiB 64" "get 4KiB 64 2000" "get 1MiB 16 200"; do
    set -- $spec
    warp_row s3s-fs "$s3port" warp "$1" "$2" "$3" "${4:-}"
    rate["warp s3s-fs $1 $2"]=$(cat "$root/warp.txt.rate")
    warp_row serve "$servport" pieces "$1" "$2" "$3" "${4:-}"
    rate["warp serve $1 $2"]=$(cat "$root/warp.txt.rate")
  done
  echo
  python3 - "${rate["warp serve put 4KiB"]}" "${rate["warp s3s-fs put 4KiB"]}" \
    "${rate["warp serve get 4KiB"]}" "${rate["warp s3s-fs get 4KiB"]}" \
    "${rate["warp serve get 1MiB"]}" "${rate["warp s3s-fs get 1MiB"]}" <<'PY'
import sys
v = [float(x) for x in sys.argv[1:]]
print(f"- warp: 4 KiB PUT at 64 serve / s3s-fs = {v[0] / v[1]:.2f}x, 4 KiB GET at 64 = {v[2] / v[3]:.2f}x, 1 MiB GET at 16 = {v[4] / v[5]:.2f}x")
PY
fi

echo
python3 - "${rate["serve put 4KiB 64"]}" "${rate["s3s-fs put 4KiB 64"]}" \
  "${rate["serve get 4KiB 64"]}" "${rate["s3s-fs get 4KiB 64"]}" \
  "${rate["serve get 1MiB 16"]}" "${rate["s3s-fs get 1MiB 16"]}" \
  "${rate["http 64"]}" "${rate["api 64"]}" "${rate["http 1"]}" "${rate["api 1"]}" <<'PY'
import sys
v = [float(x) for x in sys.argv[1:]]
print(f"- 4 KiB PUT at 64: serve / s3s-fs = {v[0] / v[1]:.2f}x (target >= 5x)")
print(f"- 4 KiB GET at 64: serve / s3s-fs = {v[2] / v[3]:.2f}x (target >= 2x)")
print(f"- 1 MiB GET at 16: serve / s3s-fs = {v[4] / v[5]:.2f}x (target >= 1x)")
print(f"- 4 KiB GET through serve / Rust API in process: {v[6] / v[7]:.2f}x at 64 in flight, {v[8] / v[9]:.2f}x one at a time (target >= 0.5x)")
PY
