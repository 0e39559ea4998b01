"""PieceStore from Python: blocking calls, asyncio, errors. Run: python quickstart.py [STORE]."""

from __future__ import annotations

import asyncio
import sys
import tempfile

import piecestore


def blocking(store: piecestore.PieceStore) -> None:
    key = piecestore.segment_key(42, 0)  # "42_s0"
    store.put(key, b"hello, pieces")
    piece = store.get(key)  # a zero-copy Buffer
    print(key, bytes(piece), len(piece))
    print(bytes(store.get_range(key, 7, 6)))  # b'pieces'
    info = store.head(key)
    print(info.size, info.crc32c, info.last_modified.isoformat())
    try:
        store.get("43_s0")
    except piecestore.PieceNotFound as e:
        print("missing:", e.key, e.code)
    store.put_many({piecestore.segment_key(42, i): bytes([i]) * 10 for i in range(1, 4)})
    print(sorted(m.key for m in store.list("42_")))


async def with_asyncio(store: piecestore.PieceStore) -> None:
    keys = [piecestore.ec_key(7, 0, i) for i in range(6)]
    await asyncio.gather(*(store.put_async(k, k.encode()) for k in keys))
    pieces = await asyncio.gather(*(store.get_async(k) for k in keys))
    print([bytes(p) for p in pieces])
    async for info in store.list("7_"):
        print("listed", info.key, info.size)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spec = sys.argv[1] if len(sys.argv) > 1 else f"file://{tmp}"
        with piecestore.PieceStore(spec) as store:
            blocking(store)
            asyncio.run(with_asyncio(store))
            summary = store.delete_prefix("42_")
            print("deleted", summary.pieces, "pieces,", summary.bytes, "bytes")


if __name__ == "__main__":
    main()
