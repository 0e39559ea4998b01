#!/usr/bin/env bash
# foyer 0.22.6 next to moka (the crate of PieceStore's data cache) for that cache's use case:
# per-get latency (mean, p50, p99 in microseconds) of 2,000 values of 4 KiB, one get at a time,
# 5 timed passes after a fill pass: moka's sync cache and foyer's in-memory cache (hits), a
# foyer hybrid cache with a 1 MiB memory part in front of a 256 MiB file device (disk hits),
# how many keys that hybrid cache still finds after a close and reopen, and the process's
# thread count after building each cache. Prints one JSON line (the figures behind the moka
# choice in benches/RESULTS.md).
#
#   bash benches/foyer.sh
#
# Not part of CI. The program is a standalone crate (benches/foyer-peer, its own workspace,
# not a member of the repository's); it is built in release mode in the shared target
# directory (CARGO_TARGET_DIR, target/ by default). Its disk part goes to a temporary directory
# under $TMPDIR (or /tmp): a tmpfs there would make that "disk" memory.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --manifest-path benches/foyer-peer/Cargo.toml

echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "nproc: $(nproc)"
echo "tmpdir: ${TMPDIR:-/tmp} ($(stat -f -c %T "${TMPDIR:-/tmp}"))"
"$CARGO_TARGET_DIR/release/foyer-peer"
