#!/usr/bin/env bash
# The Go binding against minio-go (github.com/minio/minio-go/v7): the same 4 KiB and 1 MiB puts
# and gets at concurrency 16 on one s3s-fs server on 127.0.0.1, in one run; then the binding's
# per-operation latency on memory:// next to the Rust core's (benches/examples/core_latency.rs),
# whose difference is the cost of the cgo boundary. Prints JSON lines, then a markdown table
# (the figures in benches/RESULTS.md).
#
#   bash benches/go/run.sh [SECONDS_PER_RUN]     (3 interleaved rounds of every client)
#   MEMORY_ONLY=1 bash benches/go/run.sh         (only the memory:// latencies beside the core's)
#
# Needs: s3s-fs (scripts/test.sh installs it), Go, Rust, and about 15 GB free under $TMPDIR
# (s3s-fs keeps every 1 MiB object; a full disk shows up as HTTP 500 errors).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-3}
export PATH="$HOME/.cargo/bin:$PATH"
# (Two commands: a target flag like --example would limit the first package to it too.)
cargo build --release -q -p piecestore-c
cargo build --release -q -p piecestore-benches --example core_latency
# -a: Go's build cache does not hash the Rust library just rebuilt.
(cd benches/go && go build -a -o ../../target/gobench .)

dir=$(mktemp -d)
port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
export AWS_ACCESS_KEY_ID=GOBENCH$RANDOM AWS_SECRET_ACCESS_KEY=secret$RANDOM$RANDOM$RANDOM
mkdir -p "$dir/data/bench"
s3s-fs --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
  --secret-key "$AWS_SECRET_ACCESS_KEY" "$dir/data" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done

endpoint="http://127.0.0.1:$port"
[ -n "${MEMORY_ONLY:-}" ] && endpoint=""
target/gobench -endpoint "$endpoint" -bucket bench -duration "${secs}s" | tee "$dir/go.jsonl"
cargo run --release -q -p piecestore-benches --example core_latency -- memory:// 4096 20000 |
  tee "$dir/core.json"
cargo run --release -q -p piecestore-benches --example core_latency -- memory:// 4096 20000 copy |
  tee "$dir/core_copy.json"

python3 - "$dir/go.jsonl" "$dir/core.json" "$dir/core_copy.json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
core = json.load(open(sys.argv[2]))
copy = json.load(open(sys.argv[3]))
med = lambda xs: sorted(xs)[len(xs) // 2]
runs = {}
for r in rows:
    if "op" in r:
        runs.setdefault((r["size"], r["op"], r["client"]), []).append(r)
print("\n| size | op | client | ops/s (median of rounds) | each round | MB/s | p50 µs | p99 µs | errors |")
print("|---|---|---|---|---|---|---|---|---|")
for (size, op, client), rs in runs.items():
    ops = [r["ops_per_s"] for r in rs]
    print(f"| {'4 KiB' if size == 4096 else '1 MiB'} | {op} | {client} | {med(ops):,.0f} "
          f"| {' / '.join(f'{o:,.0f}' for o in ops)} | {med([r['mb_per_s'] for r in rs]):,.1f} "
          f"| {med([r['p50_us'] for r in rs]):,.0f} | {med([r['p99_us'] for r in rs]):,.0f} "
          f"| {sum(r['errors'] for r in rs)} |")
go = [r for r in rows if "put_us" in r][0]
print("\n| memory://, 4 KiB, one at a time | put µs/op | get µs/op |")
print("|---|---|---|")
print(f"| Rust core, the same Bytes every put (no copy) | {core['put_us']:.2f} | {core['get_us']:.2f} |")
print(f"| Rust core, copying the caller's slice per put | {copy['put_us']:.2f} | {copy['get_us']:.2f} |")
print(f"| Go binding (cgo; Put copies in, Get copies out) | {go['put_us']:.2f} | {go['get_us']:.2f} |")
print(f"| Go binding, GetBuffer (the library's buffer lent, no copy) | | {go['getbuffer_us']:.2f} |")
print(f"| Go ÷ core (no copy) | {go['put_us']/core['put_us']:.2f}× | {go['get_us']/core['get_us']:.2f}× |")
print(f"| Go ÷ core (copying) | {go['put_us']/copy['put_us']:.2f}× | {go['get_us']/copy['get_us']:.2f}× |")
print(f"| Go binding, GetInto (one cgo call, read into the caller's buffer) | | {go['getinto_us']:.2f} |")
print(f"| Go alone: a fresh 4 KiB slice copied from a distinct source (Get's extra work over GetInto) | | {go['go_alloc_us']:.2f} |")
print(f"| Go GetBuffer ÷ core (no copy) | | {go['getbuffer_us']/core['get_us']:.2f}× |")
print(f"| Go GetInto ÷ core (no copy) | | {go['getinto_us']/core['get_us']:.2f}× |")
# Like with like: the binding's Put copies every piece, so its store holds n distinct pieces, as
# the copying core run's does; the no-copy run reads one shared, always-cached buffer n times.
print(f"| **Go GetInto ÷ core (copying: the same store contents)** | | **{go['getinto_us']/copy['get_us']:.2f}×** |")
print(f"| Go GetBuffer ÷ core (copying) | | {go['getbuffer_us']/copy['get_us']:.2f}× |")
PY
