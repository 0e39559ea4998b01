"""Round trips, ranges, listing and batches on every backend."""

from __future__ import annotations

import os
import sys

import pytest

import piecestore

SIZES = [0, 1, 4096, 64 << 20]


def data_of(size: int, seed: int = 7) -> bytes:
    # Not all zeros, not periodic in a way that hides an offset bug.
    return (bytes(range(seed, 256)) + bytes(range(seed))) * (size // 256) + bytes(
        (i * 31 + seed) % 251 for i in range(size % 256)
    )


@pytest.mark.parametrize("size", SIZES, ids=["0B", "1B", "4KiB", "64MiB"])
def test_round_trip(store: piecestore.PieceStore, size: int) -> None:
    data = data_of(size)
    key = f"{size}_s0"
    store.put(key, data)
    got = store.get(key)
    assert len(got) == size
    assert got == data
    assert bytes(got) == data
    assert memoryview(got).tobytes() == data
    info = store.head(key)
    assert (info.key, info.size) == (key, size)
    assert info.verified and info.crc32c is not None
    # same bytes again: fine; different bytes: refused, the first piece intact
    store.put(key, data)
    if size:
        with pytest.raises(piecestore.PieceExists) as e:
            store.put(key, data[:-1] + bytes([data[-1] ^ 1]))
        assert e.value.key == key and e.value.code == "PIECE_EXISTS"
        assert store.get(key) == data
        store.put(key, b"replaced", overwrite=True)
        assert store.get(key) == b"replaced"


def test_buffer_is_zero_copy_and_read_only(store: piecestore.PieceStore) -> None:
    data = data_of(1 << 20)
    store.put("9_s0", data)
    got = store.get("9_s0")
    if not piecestore.zero_copy_get():
        assert isinstance(got, bytes)
        return
    assert isinstance(got, piecestore.Buffer)
    # the 1 MiB lives in the core's buffer, not in the Python object
    assert sys.getsizeof(got) < 1024
    view = memoryview(got)
    assert view.readonly and view.nbytes == len(data) and view.format == "B"
    with pytest.raises(TypeError):
        view[0] = 1  # type: ignore[index]
    del got  # the view keeps the bytes alive
    assert view[:16].tobytes() == data[:16] and view[-3:].tobytes() == data[-3:]
    # a Buffer can be put again without a copy
    store.put("9_s1", store.get("9_s0"))
    assert store.get("9_s1") == data


def test_inputs(store: piecestore.PieceStore) -> None:
    ba = bytearray(b"mutable")
    store.put("1_s0", ba)
    ba[0:7] = b"CHANGED"  # the piece is a snapshot of what was put
    assert store.get("1_s0") == b"mutable"
    store.put("1_s1", memoryview(b"xxviewxx")[2:6])
    assert store.get("1_s1") == b"view"
    store.put("1_s2", memoryview(bytearray(b"abcdef"))[::2])  # strided
    assert store.get("1_s2") == b"ace"
    import array

    store.put("1_s3", array.array("I", [1, 2]))
    assert store.get("1_s3") == array.array("I", [1, 2]).tobytes()
    for bad in ["text", 5, None, [1, 2]]:
        with pytest.raises(TypeError):
            store.put("1_s4", bad)  # type: ignore[arg-type]
    assert not store.exists("1_s4")


def test_ranges(store: piecestore.PieceStore) -> None:
    data = data_of(10_000)
    store.put("5_s0", data)
    for off, ln in [(0, 0), (0, 1), (1, 99), (9_999, 1), (0, 10_000), (10_000, 0), (4096, 4096)]:
        assert store.get_range("5_s0", off, ln) == data[off : off + ln], (off, ln)
    for off, ln in [(0, 10_001), (10_001, 0), (9_999, 2), (2**63, 1)]:
        with pytest.raises(piecestore.InvalidRange) as e:
            store.get_range("5_s0", off, ln)
        assert isinstance(e.value, ValueError) and e.value.key == "5_s0"
    with pytest.raises(OverflowError):
        store.get_range("5_s0", -1, 1)
    with pytest.raises(piecestore.PieceNotFound):
        store.get_range("6_s0", 0, 1)


def test_list_delete_and_batches(store: piecestore.PieceStore) -> None:
    items = {f"7_s{i}": data_of(100 + i, i) for i in range(40)}
    store.put_many(items)
    store.put_many([("8_s0", b"a"), ("8_s1", bytearray(b"b"))])
    got = store.get_many(list(items))
    assert [bytes(g) for g in got] == list(items.values())
    listed = {m.key: m.size for m in store.list("7_")}
    assert listed == {k: len(v) for k, v in items.items()}
    assert sorted(m.key for m in store.list("8_")) == ["8_s0", "8_s1"]
    assert len(list(store.list())) == 42
    with pytest.raises(piecestore.PieceNotFound) as e:
        store.get_many(["7_s0", "nope_s0"])
    assert e.value.key == "nope_s0"
    with pytest.raises(TypeError):
        store.get_many("7_s0")
    store.delete("8_s0")
    store.delete("8_s0")  # idempotent
    assert not store.exists("8_s0") and store.exists("8_s1")
    summary = store.delete_prefix("7_")
    assert (summary.pieces, summary.bytes) == (40, sum(len(v) for v in items.values()))
    assert [m.key for m in store.list()] == ["8_s1"]
    with pytest.raises(piecestore.InvalidKey):
        store.delete_prefix("")


def test_sharding_is_visible(tmp_path: "os.PathLike[str]") -> None:
    # One file per piece, to see each in its shard's directory.
    st = piecestore.PieceStore(os.path.join(tmp_path, "s-%d"), shards=4, placement="jump", pack=False)
    assert st.shard_count == 4 and st.placement == "jump"
    assert len(st.shard_labels) == 4
    keys = [f"{i}_s0" for i in range(64)]
    st.put_many({k: b"x" for k in keys})
    per_shard = {i: 0 for i in range(4)}
    for k in keys:
        per_shard[st.shard_of(k)] += 1
        assert os.path.exists(os.path.join(tmp_path, f"s-{st.shard_of(k)}", k))
    assert all(n > 0 for n in per_shard.values())
