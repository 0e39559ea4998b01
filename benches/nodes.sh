#!/usr/bin/env bash
# Three "nodes" sharing one bucket through the PostgreSQL index against one node with its
# local (SQLite) index, on s3s-fs, through `piecestore bench`, in one run (issue: many
# processes and many nodes on one packed store).
#
#   bash benches/nodes.sh            # the whole matrix, 3 rounds (about 6 minutes)
#   QUICK=1 bash benches/nodes.sh    # 3-second phases, one round, for a smoke run
#   S3_DIR=/mnt/disk bash benches/nodes.sh   # where s3s-fs keeps the bucket (default: /dev/shm)
#   PS=/tmp/piecestore-old bash benches/nodes.sh # measure another build (no cargo build)
#
# s3s-fs keeps its bucket in memory (/dev/shm) by default: on this project's VMs the disk's
# latency wanders by 2x from one run to the next, which would drown what is compared here
# (the index's cost, not the disk's). Rows alternate their order over the rounds, and the
# ratios are of the medians.
#
# A node is a `piecestore bench` process with a cache directory of its own (so nothing but the
# bucket and the database is shared); the aggregate is the sum of their puts/s. Rows: one node
# with 48 in flight against three with 16 each, and the newcomer's case, one call at a time.
# It also counts the index's round trips: the calls of `piecestore_group_v1` and
# `piecestore_apply_v1` (one per write group, from PostgreSQL's own function statistics) against the write groups the nodes report,
# and every statement the server ran (pg_stat_database) per piece put.
#
# PostgreSQL: a throwaway cluster under target/ with the server's defaults (fsync on,
# synchronous_commit on), started and stopped here (Debian's postgresql binaries; as the
# `postgres` user when run as root). Prints Markdown rows for benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

dur=${DURATION:-6s}
rounds=${ROUNDS:-3}
if [ -n "${QUICK:-}" ]; then dur=3s rounds=1; fi
root=${BENCH_DIR:-$PWD/target}
out="$root/nodes-$(date -u +%Y%m%dT%H%M%S)"
mkdir -p "$out"
s3dir=${S3_DIR:-/dev/shm}/piecestore-nodes-$$
mkdir -p "$s3dir"

if [ -n "${PS:-}" ]; then
  ps=$PS
else
  cargo build --release --quiet -p piecestore-cli
  ps=$PWD/target/release/piecestore
  [ -x "$ps" ] || ps=${CARGO_TARGET_DIR:-target}/release/piecestore
fi

pgbin=$(dirname "$(command -v initdb || ls -d /usr/lib/postgresql/*/bin/initdb | tail -1)")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The cluster.
pgdir="$out/pg"
mkdir -p "$pgdir"
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$pgdir"
  as_pg=(runuser -u postgres --)
fi
"${as_pg[@]}" "$pgbin/initdb" -D "$pgdir/data" -U piecestore --auth-local=trust --auth-host=trust \
  -E UTF8 --locale=C >/dev/null
pgport=$(free_port)
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w \
  -o "-h 127.0.0.1 -p $pgport -k $pgdir -c track_functions=pl -c max_connections=200" start >/dev/null
stop_pg() { "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -m fast stop >/dev/null 2>&1 || true; }
trap stop_pg EXIT
index_url="postgres://piecestore@127.0.0.1:$pgport/postgres"
sql() { psql -qtA "$index_url" -c "$1"; }

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

export AWS_ACCESS_KEY_ID=BENCHACCESSKEY AWS_SECRET_ACCESS_KEY=bench-secret-key-not-a-real-one

# run NAME NODES IN_FLIGHT INDEX(local|pg): a fresh s3s-fs and bucket; NODES benches at once;
# prints "aggregate-ops/s worst-p50 worst-p99 errors pieces groups applies statements".
run() {
  local name=$1 nodes=$2 c=$3 index=$4
  local data="$s3dir/s3s-$name" port
  port=$(free_port)
  mkdir -p "$data/bucket"
  s3s-fs --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$data" >/dev/null 2>&1 &
  local s3pid=$!
  for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
  local url="http://127.0.0.1:$port/bucket"
  local env=()
  if [ "$index" = pg ]; then env=(PIECESTORE_INDEX_URL="$index_url"); fi
  # The store and its index exist before the benches start.
  echo x | env XDG_CACHE_HOME="$data.cache-0" "${env[@]}" "$ps" --store "$url" put warm_s0 - >/dev/null
  local applies0 stmts0
  applies0=$(sql "select coalesce(sum(calls),0) from pg_stat_user_functions where funcname in ('piecestore_group_v1', 'piecestore_apply_v1')")
  stmts0=$(sql "select xact_commit + xact_rollback from pg_stat_database where datname = 'postgres'")
  local pids=()
  for i in $(seq 1 "$nodes"); do
    env XDG_CACHE_HOME="$data.cache-$i" "${env[@]}" "$ps" --store "$url" bench --op put -c "$c" \
      -d "$dur" --size 4KiB --keep -q --json "$out/$name-$i.json" --prometheus "$out/$name-$i.prom" \
      >/dev/null 2>"$out/$name-$i.err" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  # The statistics collector publishes at transaction end; give it a moment.
  sleep 1
  local applies stmts
  applies=$(( $(sql "select coalesce(sum(calls),0) from pg_stat_user_functions where funcname in ('piecestore_group_v1', 'piecestore_apply_v1')") - applies0 ))
  stmts=$(( $(sql "select xact_commit + xact_rollback from pg_stat_database where datname = 'postgres'") - stmts0 ))
  local total=0 p50=0 p99=0 errs=0 pieces=0 groups=0
  for i in $(seq 1 "$nodes"); do
    read -r o a b n e < <(ops "$out/$name-$i.json")
    total=$((total + o)); errs=$((errs + e)); pieces=$((pieces + n))
    groups=$((groups + $(metric "$out/$name-$i.prom" piecestore_pack_writes_total)))
    [ "$a" -gt "$p50" ] && p50=$a
    [ "$b" -gt "$p99" ] && p99=$b
  done
  kill "$s3pid" 2>/dev/null || true
  wait "$s3pid" 2>/dev/null || true
  rm -rf "$data" "$data".cache-*
  echo "$total $p50 $p99 $errs $pieces $groups $applies $stmts"
}

echo "# nodes benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, s3s-fs, PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}'), $dur per row"
echo
echo "| put 4 KiB | nodes × in flight | puts/s (sum) | worst p50 µs | worst p99 µs | errors | write groups | index apply calls | apply calls per group | statements per piece |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
row() { # label nodes c index
  read -r o p50 p99 e n g a s < <(run "$1-$2x$3" "$2" "$3" "$4")
  local per_group="-" per_piece="-"
  if [ "$4" = pg ]; then
    per_group=$(python3 -c "print(f'{$a / max($g, 1):.2f}')")
    per_piece=$(python3 -c "print(f'{$s / max($n, 1):.2f}')")
  else
    a="-"
  fi
  echo "| $1 | $2 × $3 | $o | $p50 | $p99 | $e | $g | $a | $per_group | $per_piece |" >&2
  echo "$o"
}
# (row prints its table line on stderr and the ops/s on stdout)
declare -A got
for r in $(seq 1 "$rounds"); do
  # Each goes first in turn, so that neither always meets what the other left behind.
  if [ $((r % 2)) = 1 ]; then order="A B C D E"; else order="E D C B A"; fi
  for k in $order; do
    case $k in
      A) got[A$r]=$(row "one node, local index" 1 48 local 2>/tmp/nodes-row.$$) ;;
      B) got[B$r]=$(row "3 nodes, PostgreSQL index" 3 16 pg 2>/tmp/nodes-row.$$) ;;
      C) got[C$r]=$(row "one node, local index" 1 1 local 2>/tmp/nodes-row.$$) ;;
      D) got[D$r]=$(row "3 nodes, PostgreSQL index" 3 1 pg 2>/tmp/nodes-row.$$) ;;
      E) got[E$r]=$(row "one node, PostgreSQL index" 1 48 pg 2>/tmp/nodes-row.$$) ;;
    esac
    cat /tmp/nodes-row.$$
  done
done
rm -f /tmp/nodes-row.$$
rmdir "$s3dir" 2>/dev/null || true
med() { local k=$1; python3 -c "import statistics,sys; print(statistics.median([float(x) for x in sys.argv[1:]]))" $(for r in $(seq 1 "$rounds"); do echo "${got[$k$r]}"; done); }
a=$(med A) b=$(med B) c=$(med C) d=$(med D) e=$(med E)
echo
python3 -c "print(f'medians of {$rounds} rounds: 3 nodes × 16 (PostgreSQL) / 1 node × 48 (local index): {$b / max($a, 1):.2f}x; one call at a time, 3 nodes / 1 node (local index): {$d / max($c, 1):.2f}x; 1 node × 48, PostgreSQL / local index: {$e / max($a, 1):.2f}x')"
echo
echo "JSON reports: $out"
