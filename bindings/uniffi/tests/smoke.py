"""Smoke test of the Python module UniFFI generates (not the `piecestore` Python package,
which is bindings/python): a round trip, an error class, a listing, an async call."""

import asyncio
import sys
import tempfile

import piecestore_uniffi as ps

# Before the first store: sizes the shared runtime (afterwards it is an InvalidConfig error).
ps.configure_runtime(2, None)
store = ps.PieceStore.open("memory://", {})
store.put_blocking("smoke/1", b"hello", False)
store.put_blocking("smoke/2", b"", False)
assert store.get_blocking("smoke/1") == b"hello"
assert store.get_range_blocking("smoke/1", 1, 3) == b"ell"
assert [i.key for i in sorted(store.list_blocking("smoke/"), key=lambda i: i.key)] == ["smoke/1", "smoke/2"]

try:
    store.get_blocking("smoke/missing")
    raise AssertionError("get of a missing piece succeeded")
except ps.PieceStoreError.NotFound as e:
    assert isinstance(e, ps.PieceStoreError)
    assert e.key == "smoke/missing", e.key
    assert "smoke/missing" in e.detail, e.detail

try:
    store.put_blocking("../x", b"1", False)
    raise AssertionError("an invalid key was accepted")
except ps.PieceStoreError.InvalidKey:
    pass


async def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        s = await ps.PieceStore.open_async(f"file://{d}", {})
        await asyncio.gather(*(s.put(f"a/{i}", bytes([i]) * i, False) for i in range(32)))
        got = await asyncio.gather(*(s.get(f"a/{i}") for i in range(32)))
        assert got == [bytes([i]) * i for i in range(32)]
        assert (await s.delete_prefix("a/")).pieces == 32
        await s.close()


asyncio.run(main())

try:
    ps.configure_runtime(4, None)
    raise AssertionError("the runtime was configured after it started")
except ps.PieceStoreError.InvalidConfig:
    pass
print(f"python smoke: ok (piecestore {ps.version()}, Python {sys.version.split()[0]})")
