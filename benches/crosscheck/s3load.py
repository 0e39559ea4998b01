"""An independent S3 load client (boto3, one client per thread) for cross-checking
`piecestore bench`: the same 4 KiB puts or gets at the same concurrency against the same
server, reporting ops/s and latency percentiles.

    python s3load.py --endpoint http://127.0.0.1:9000 --bucket b --op put --size 4096 \
        --concurrency 16 --duration 10

Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
"""

import argparse
import json
import os
import threading
import time

import boto3
from botocore.config import Config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--op", choices=["put", "get"], required=True)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--objects", type=int, default=1000)
    args = ap.parse_args()

    def client():
        return boto3.session.Session().client(
            "s3",
            endpoint_url=args.endpoint,
            region_name="us-east-1",
            config=Config(max_pool_connections=4, retries={"max_attempts": 1},
                          s3={"addressing_style": "path"}),
        )

    payload = os.urandom(args.size)
    prefix = f"boto3-{os.getpid()}"
    keys = [f"{prefix}/p{i}" for i in range(args.objects)]
    if args.op == "get":
        c = client()
        for k in keys:
            c.put_object(Bucket=args.bucket, Key=k, Body=payload)

    latencies: list[list[float]] = [[] for _ in range(args.concurrency)]
    errors = [0] * args.concurrency
    stop = threading.Event()

    def worker(w: int) -> None:
        c = client()
        n = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                if args.op == "put":
                    c.put_object(Bucket=args.bucket, Key=f"{prefix}/w{w}/{n}", Body=payload)
                else:
                    body = c.get_object(Bucket=args.bucket, Key=keys[(w * 7919 + n) % len(keys)])["Body"].read()
                    assert len(body) == args.size
                latencies[w].append(time.perf_counter() - t0)
            except Exception:  # noqa: BLE001 - counted, like the tool's errors
                errors[w] += 1
            n += 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(args.duration)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    all_l = sorted(x for l in latencies for x in l)

    def pct(p: float) -> float:
        return all_l[min(len(all_l) - 1, int(p * len(all_l)))] * 1e6 if all_l else 0.0

    print(json.dumps({
        "client": "boto3 " + boto3.__version__,
        "op": args.op, "size": args.size, "concurrency": args.concurrency,
        "ops": len(all_l), "errors": sum(errors), "seconds": elapsed,
        "ops_per_s": len(all_l) / elapsed,
        "p50_us": pct(0.5), "p99_us": pct(0.99),
    }))


if __name__ == "__main__":
    main()
