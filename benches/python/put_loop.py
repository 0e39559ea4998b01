"""A newcomer's loop: one 4 KiB put at a time from one Python thread, on the default store (a local
directory, packed) and on the same kind of store with `pack=False` (one file per piece), in one
run on one filesystem.

    pip install ./python
    python benches/python/put_loop.py [--seconds 5] [--rounds 3]

The two stores take turns (packed, unpacked, packed, ...) so that a noisy moment hits both; the
best round of each is reported, in puts per second, with the median latency of that round.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from typing import List, Tuple

import piecestore


def loop(store: piecestore.PieceStore, seconds: float, tag: str) -> Tuple[float, float]:
    """Puts distinct 4 KiB pieces one after another for `seconds`; (puts/s, p50 µs)."""
    data = os.urandom(4096)
    lat: List[float] = []
    end = time.perf_counter() + seconds
    i = 0
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        if t >= end:
            break
        store.put(f"{tag}_{i}", data)
        lat.append(time.perf_counter() - t)
        i += 1
    # Every piece is there and verified: a benchmark of a store that lost them would be no use.
    for k in (0, i // 2, i - 1):
        assert store.get(f"{tag}_{k}") == data
    return i / (time.perf_counter() - start), statistics.median(lat) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="ps-putloop-", dir=os.environ.get("BENCH_DIR"))
    try:
        packed = piecestore.PieceStore(os.path.join(root, "packed"))  # the default: packed
        unpacked = piecestore.PieceStore(os.path.join(root, "unpacked"), pack=False)
        best = {"packed (default)": (0.0, 0.0), "pack=False": (0.0, 0.0)}
        for r in range(args.rounds):
            for name, store in (("packed (default)", packed), ("pack=False", unpacked)):
                ops, p50 = loop(store, args.seconds, f"r{r}")
                print(f"round {r}: {name}: {ops:,.0f} puts/s, p50 {p50:,.0f} µs", flush=True)
                if ops > best[name][0]:
                    best[name] = (ops, p50)
        packed.close()
        unpacked.close()
        print(f"\npiecestore {piecestore.__version__}, one thread, 4 KiB, best of {args.rounds} x {args.seconds:g} s\n")
        print("| store | puts/s | p50 µs |")
        print("|---|---:|---:|")
        for name, (ops, p50) in best.items():
            print(f"| {name} | {ops:,.0f} | {p50:,.0f} |")
        ratio = best["packed (default)"][0] / max(best["pack=False"][0], 1e-9)
        print(f"\npacked / pack=False: {ratio:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
