"""One call at a time in a loop, as a newcomer writes it: 4 KiB puts then gets on a memory store,
PieceStore beside obstore's MemoryStore in one run (best of 5 rounds of 10,000).

    pip install ./python -r benches/python/requirements.txt
    python benches/python/memory_loop.py
"""

from __future__ import annotations

import os
import time
from typing import Callable, Tuple

import obstore
from obstore.store import MemoryStore

import piecestore

N, ROUNDS = 10_000, 5


def best(put: Callable[[str, bytes], object], get: Callable[[str], object]) -> Tuple[float, float]:
    data = os.urandom(4096)
    bp = bg = 0.0
    for r in range(ROUNDS):
        keys = [f"{r}_{i}_s0" for i in range(N)]
        t = time.perf_counter()
        for k in keys:
            put(k, data)
        bp = max(bp, N / (time.perf_counter() - t))
        t = time.perf_counter()
        for k in keys:
            get(k)
        bg = max(bg, N / (time.perf_counter() - t))
    return bp, bg


def main() -> None:
    ps = piecestore.PieceStore("memory://")
    mem = MemoryStore()
    rows = {
        "piecestore": best(ps.put, ps.get),
        "obstore MemoryStore": best(
            lambda k, d: obstore.put(mem, k, d), lambda k: obstore.get(mem, k).bytes()
        ),
    }
    print("| library | put ops/s | get ops/s |")
    print("|---|---:|---:|")
    for name, (p, g) in rows.items():
        print(f"| {name} | {p:,.0f} | {g:,.0f} |")
    (pp, pg), (op, og) = rows["piecestore"], rows["obstore MemoryStore"]
    print(f"| piecestore ÷ obstore | {pp / op:.2f}× | {pg / og:.2f}× |")


if __name__ == "__main__":
    main()
