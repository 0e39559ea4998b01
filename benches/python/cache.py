"""A cached 4 KiB get through PieceStore's Python package against obstore's MemoryStore get.

    pip install ./python -r benches/python/requirements.txt
    python benches/python/cache.py [--quick]

PieceStore reads from a bucket on s3s-fs (started here on 127.0.0.1; `s3s-fs` on PATH) through
its default cache (a memory tier in front of buckets), after one pass that fills it; obstore
reads from its in-process MemoryStore. One get at a time, single thread, best of 3 rounds.
PieceStore's get returns the verified piece (its CRC32C was checked when it was fetched).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time

import obstore
from obstore.store import MemoryStore

import piecestore


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def best(fn, keys, rounds: int = 3) -> float:
    rates = []
    for _ in range(rounds):
        t = time.perf_counter()
        for k in keys:
            fn(k)
        rates.append(len(keys) / (time.perf_counter() - t))
    return max(rates)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    n = 2000 if ap.parse_args().quick else 10000
    data = os.urandom(4096)
    keys = [f"{i}_s0" for i in range(n)]
    root = tempfile.mkdtemp()
    os.makedirs(os.path.join(root, "bucket"))
    port = free_port()
    ak, sk = "BENCHACCESSKEY", "bench-secret-key-not-a-real-one"
    server = subprocess.Popen(
        ["s3s-fs", "--host", "127.0.0.1", "--port", str(port), "--access-key", ak, "--secret-key", sk, root],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        ps = piecestore.PieceStore(
            f"http://127.0.0.1:{port}/bucket", pack=False, access_key=ak, secret_key=sk,
            index_dir=os.path.join(root, "index"),
        )
        ps.put_many([(k, data) for k in keys])  # concurrent: the server takes ~43 ms a request
        cold = best(ps.get, keys[: n // 50], rounds=1)  # first gets: one GET each (and a fill)
        ps.get_many(keys)  # fills the rest of the memory tier
        warm = best(ps.get, keys)
        ob = MemoryStore()
        for k in keys:
            obstore.put(ob, k, data)
        obm = best(lambda k: obstore.get(ob, k).bytes(), keys)
        print(f"| piecestore on s3s-fs, first get (a GET each) | {cold:,.0f} |")
        print(f"| piecestore on s3s-fs, cached get (memory tier) | {warm:,.0f} |")
        print(f"| obstore MemoryStore get | {obm:,.0f} |")
        print(f"cached / obstore MemoryStore: {warm / obm:.2f}x (target >= 0.9x); cached / first get: {warm / cold:.1f}x")
        print(next(l for l in ps.metrics().splitlines() if l.startswith("piecestore_cache_hits_total")))
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
