"""PieceStore's Python package against obstore and opendal, in one run, on the same data.

    pip install ./python -r benches/python/requirements.txt
    python benches/python/bench.py [--quick] [--markdown]

Each case puts N pieces then gets them back (single thread), on memory and on a local directory;
then 1 MiB gets with 4 threads against 1 thread. Every figure is the best of 3 rounds, in ops/s.
PieceStore verifies a CRC32C on every get and computes one on every put; the peers do neither.
PieceStore's file puts fsync (its durability contract); `fsync=False` is shown beside them, as
obstore's LocalStore and opendal's fs do not fsync. Every store names its packing setting: the
like-with-like rows use `pack=False` (one file per piece, as the peers write), and a row of the
default (packed) local store shows what packing gives; `memory://` is never packed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Tuple

import obstore
import opendal
from obstore.store import LocalStore, MemoryStore

import piecestore

ROUNDS = 3


class Client:
    """One library on one backend: put(key, data) and get(key) -> bytes-like."""

    def __init__(self, name: str, put: Callable[[str, bytes], Any], get: Callable[[str], Any]):
        self.name, self.put, self.get = name, put, get


def clients(kind: str, root: str) -> List[Client]:
    out = []
    if kind == "memory":
        ps = piecestore.PieceStore("memory://")
        out.append(Client("piecestore", ps.put, ps.get))
        ob = MemoryStore()
        out.append(Client("obstore", lambda k, d: obstore.put(ob, k, d), lambda k: obstore.get(ob, k).bytes()))
        od = opendal.Operator("memory")
        out.append(Client("opendal", od.write, od.read))
    else:
        for sub in ["ps", "ps-nofsync", "ps-packed", "ob", "od"]:
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        ps = piecestore.PieceStore(os.path.join(root, "ps"), pack=False)
        out.append(Client("piecestore (fsync)", ps.put, ps.get))
        ps2 = piecestore.PieceStore(os.path.join(root, "ps-nofsync"), fsync=False, pack=False)
        out.append(Client("piecestore (fsync=False)", ps2.put, ps2.get))
        ps3 = piecestore.PieceStore(os.path.join(root, "ps-packed"))
        out.append(Client("piecestore (packed, the default)", ps3.put, ps3.get))
        ob = LocalStore(os.path.join(root, "ob"))
        out.append(Client("obstore LocalStore", lambda k, d: obstore.put(ob, k, d), lambda k: obstore.get(ob, k).bytes()))
        od = opendal.Operator("fs", root=os.path.join(root, "od"))
        out.append(Client("opendal fs", od.write, od.read))
    return out


def timed(fn: Callable[[], None], n: int) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def single_thread(c: Client, size: int, n: int, round_: int) -> Tuple[float, float]:
    data = os.urandom(size)
    keys = [f"{round_}_{size}_{i}_s0" for i in range(n)]

    def puts() -> None:
        for k in keys:
            c.put(k, data)

    def gets() -> None:
        for k in keys:
            got = c.get(k)
            assert len(got) == size

    return timed(puts, n), timed(gets, n)


def threaded_gets(c: Client, threads: int, keys: List[str], size: int, passes: int = 8) -> float:
    """Gets every key `passes` times, split over `threads` threads; ops/s."""

    def work(ks: List[str]) -> None:
        for _ in range(passes):
            for k in ks:
                assert len(c.get(k)) == size

    chunks = [keys[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(len, chunks))  # start the threads before timing
        t = time.perf_counter()
        list(pool.map(work, chunks))
        return passes * len(keys) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a tenth of the pieces (smoke run)")
    args = ap.parse_args()
    scale = 10 if args.quick else 1
    cases = [(4096, 10_000 // scale), (1 << 20, 500 // scale)]
    root = tempfile.mkdtemp(prefix="ps-pybench-", dir=os.environ.get("BENCH_DIR"))
    results: Dict[Tuple[str, str, int], Tuple[float, float]] = {}
    try:
        print(f"piecestore {piecestore.__version__}, obstore {obstore.__version__}, opendal {opendal.__version__}")
        print(f"zero-copy get: {piecestore.zero_copy_get()}; {os.cpu_count()} cores; dir {root}\n")
        print("| backend | size | library | put ops/s | get ops/s |")
        print("|---|---|---|---:|---:|")
        for kind in ["memory", "file"]:
            for c in clients(kind, root):
                for size, n in cases:
                    best = (0.0, 0.0)
                    for r in range(ROUNDS):
                        p, g = single_thread(c, size, n, r)
                        best = (max(best[0], p), max(best[1], g))
                    results[(kind, c.name, size)] = best
                    label = "4 KiB" if size == 4096 else "1 MiB"
                    print(f"| {kind} | {label} | {c.name} | {best[0]:,.0f} | {best[1]:,.0f} |", flush=True)

        print("\n1 MiB gets, 4 threads vs 1 (pieces from the rounds above)\n")
        print("| backend | library | 1 thread ops/s | 4 threads ops/s | speed-up |")
        print("|---|---|---:|---:|---:|")
        size, n = 1 << 20, 500 // scale
        for kind in ["memory", "file"]:
            for c in clients(kind, root):
                if "fsync=False" in c.name:
                    continue
                keys = [f"t_{i}_s0" for i in range(n)]
                data = os.urandom(size)
                for k in keys:
                    c.put(k, data)
                one = max(threaded_gets(c, 1, keys, size) for _ in range(ROUNDS))
                four = max(threaded_gets(c, 4, keys, size) for _ in range(ROUNDS))
                print(f"| {kind} | {c.name} | {one:,.0f} | {four:,.0f} | {four / one:.2f}x |", flush=True)

        print("\nRatios (piecestore / peer)\n")
        for kind, ours, peer in [
            ("memory", "piecestore", "obstore"),
            ("memory", "piecestore", "opendal"),
            ("file", "piecestore (fsync)", "obstore LocalStore"),
            ("file", "piecestore (fsync=False)", "obstore LocalStore"),
            ("file", "piecestore (fsync)", "opendal fs"),
            ("file", "piecestore (packed, the default)", "piecestore (fsync)"),
            ("file", "piecestore (packed, the default)", "obstore LocalStore"),
        ]:
            for size, _ in cases:
                a, b = results[(kind, ours, size)], results[(kind, peer, size)]
                label = "4 KiB" if size == 4096 else "1 MiB"
                print(f"- {kind} {label}: {ours} vs {peer}: put {a[0] / b[0]:.2f}x, get {a[1] / b[1]:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
