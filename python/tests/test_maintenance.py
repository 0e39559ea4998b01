"""flush, gc and fsck from Python: a packed store's upkeep, with reports and progress."""

from __future__ import annotations

import asyncio
import datetime
import random
from pathlib import Path

import pytest

import piecestore


def piece(i: int) -> bytes:
    return random.Random(i).randbytes(100 + i * 37)


def packs(root: Path) -> list[Path]:
    return sorted((root / ".piecestore" / "packs").glob("*.pack"))


def test_gc_reclaims_deleted_pieces_and_reports_progress(tmp_path: Path) -> None:
    with piecestore.PieceStore(f"file://{tmp_path}") as store:
        store.put_many({f"gc/{i}_s0": piece(i) for i in range(24)})
        report = store.gc(grace=0)
        assert report["packs_before"] == 1 and report["packs_compacted"] == 0, report
        for i in range(20):
            store.delete(f"gc/{i}_s0")
        # A dry run changes nothing.
        store.gc(grace=0, dry_run=True)
        assert len(packs(tmp_path)) == 1
        seen: list[tuple[int, int]] = []
        report = store.gc(
            grace=datetime.timedelta(0), garbage_ratio=0.5, progress=lambda d, t: seen.append((d, t))
        )
        assert report["packs_compacted"] == 1, report
        assert report["pieces_moved"] == 4, report
        assert report["packs_deleted"] == 1 and report["bytes_reclaimed"] > 0, report
        assert report["doomed"]["packs"] == 0 and report["doomed"]["first_due_ms"] is None, report
        assert seen, "progress was never called"
        assert all(0 <= d <= t for d, t in seen), seen
        assert seen[-1][0] == seen[-1][1] > 0, seen
        assert len(packs(tmp_path)) == 1
        for i in range(20, 24):
            assert bytes(store.get(f"gc/{i}_s0")) == piece(i)
        assert sorted(p.key for p in store.list("gc/")) == [f"gc/{i}_s0" for i in range(20, 24)]


def test_gc_grace_keeps_compacted_packs_until_it_is_over(tmp_path: Path) -> None:
    with piecestore.PieceStore(f"file://{tmp_path}") as store:
        store.put_many({f"g/{i}_s0": piece(i) for i in range(10)})
        for i in range(9):
            store.delete(f"g/{i}_s0")
        report = store.gc(grace=3600)
        assert report["packs_compacted"] == 1 and report["packs_deleted"] == 0, report
        assert report["doomed"]["packs"] == 1 and report["doomed"]["first_due_ms"] > 0, report
        assert len(packs(tmp_path)) == 2, "the doomed pack waits for its grace"
        report = store.gc(grace=0)
        assert report["packs_deleted"] == 1, report
        assert len(packs(tmp_path)) == 1
        assert bytes(store.get("g/9_s0")) == piece(9)


def test_gc_refuses_bad_options_before_any_work(tmp_path: Path) -> None:
    with piecestore.PieceStore(f"file://{tmp_path}") as store:
        with pytest.raises(ValueError, match="garbage_ratio"):
            store.gc(garbage_ratio=1.5)
        with pytest.raises(ValueError, match="grace"):
            store.gc(grace=-1)
        with pytest.raises(ValueError, match="grace"):
            store.gc(grace=float("nan"))
        with pytest.raises(TypeError, match="grace"):
            store.gc(grace="1h")  # type: ignore[arg-type]


def test_a_raising_progress_callback_does_not_stop_gc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raised: list[BaseException] = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: raised.append(u.exc_value))

    def boom(done: int, total: int) -> None:
        raise RuntimeError("progress callback failed")

    with piecestore.PieceStore(f"file://{tmp_path}") as store:
        store.put_many({f"p/{i}_s0": piece(i) for i in range(8)})
        for i in range(7):
            store.delete(f"p/{i}_s0")
        report = store.gc(grace=0, progress=boom)
        assert report["packs_compacted"] == 1, report
        assert bytes(store.get("p/7_s0")) == piece(7)
    assert raised and isinstance(raised[0], RuntimeError), raised


def test_fsck_reports_damage_without_raising(tmp_path: Path) -> None:
    with piecestore.PieceStore(f"file://{tmp_path}") as store:
        store.put_many({f"f/{i}_s0": piece(i) for i in range(6)})
        store.flush()
        read: list[int] = []
        report = store.fsck(progress=lambda n, _: read.append(n))
        assert report["problems"] == [], report
        assert report["packs"] == 1 and report["packed_pieces"] == 6, report
        assert report["rebuilt_pieces"] is None and report["problems_before_rebuild"] is None
        assert read and read[-1] == report["bytes"], (read, report)
        # Damage one byte of piece 4 in its pack.
        (pack,) = packs(tmp_path)
        raw = bytearray(pack.read_bytes())
        at = raw.find(piece(4)[:64])
        assert at >= 0
        raw[at + 10] ^= 0xFF
        pack.write_bytes(bytes(raw))
        report = store.fsck()
        assert report["problems"], report
        problem = report["problems"][0]
        assert problem["pack"] and problem["what"], problem
    # A fresh process's view (this one still holds its open pack's bytes in memory): the
    # damaged piece is refused, never returned with wrong bytes.
    with piecestore.PieceStore(f"file://{tmp_path}") as store:
        with pytest.raises(piecestore.CorruptPiece):
            store.get("f/4_s0")
        assert bytes(store.get("f/3_s0")) == piece(3)
        rebuilt = store.fsck(rebuild_index=True)
        assert rebuilt["rebuilt_pieces"] is not None, rebuilt
        assert rebuilt["problems_before_rebuild"], rebuilt


def test_packing_says_whether_and_how_pieces_are_packed(tmp_path: Path) -> None:
    with piecestore.PieceStore(f"file://{tmp_path}") as store:
        assert store.packing.startswith("on: pieces under 1MiB packed into packs of 64MiB")
        assert "index SQLite on this host" in store.packing
    with piecestore.PieceStore("memory://") as store:
        assert store.packing == "off (one object per piece)"


def test_unpacked_and_memory_stores_have_nothing_to_collect(tmp_path: Path) -> None:
    for url, opts in [(f"file://{tmp_path}", {"pack": False}), ("memory://", {})]:
        with piecestore.PieceStore(url, **opts) as store:
            assert store.packing.startswith("off")
            store.put("u/1_s0", b"x" * 100)
            store.flush()
            gc = store.gc(grace=0)
            assert gc["packs_before"] == 0 and gc["pieces_moved"] == 0, gc
            fsck = store.fsck()
            assert fsck["problems"] == [] and fsck["packs"] == 0, fsck


def test_flush_gc_fsck_after_close_raise_store_closed(tmp_path: Path) -> None:
    store = piecestore.PieceStore(f"file://{tmp_path}")
    store.put("c/1_s0", b"abc")
    store.close()
    for call in (store.flush, store.gc, store.fsck):
        with pytest.raises(piecestore.StoreClosed):
            call()


def test_async_twins(tmp_path: Path) -> None:
    async def main() -> None:
        with piecestore.PieceStore(f"file://{tmp_path}") as store:
            await store.put_many_async({f"a/{i}_s0": piece(i) for i in range(12)})
            await store.flush_async()
            for i in range(10):
                await store.delete_async(f"a/{i}_s0")
            report = await store.gc_async(grace=0)
            assert report["pieces_moved"] == 2, report
            fsck = await store.fsck_async()
            assert fsck["problems"] == [] and fsck["packed_pieces"] == 2, fsck
            with pytest.raises(ValueError):
                await store.gc_async(garbage_ratio=-0.1)

    asyncio.run(main())


def test_inventory_says_what_the_store_holds(tmp_path: Path) -> None:
    with piecestore.PieceStore(f"file://{tmp_path}") as store:
        store.put_many({f"i/{i}_s0": piece(i) for i in range(6)})
        inv = store.inventory()
        assert inv["pieces"] == 6, inv
        assert inv["bytes"] == sum(len(piece(i)) for i in range(6)), inv
        assert inv["min_size"] == 100 and inv["max_size"] == 100 + 5 * 37, inv
        assert sum(b["pieces"] for b in inv["sizes"]) == 6, inv
        assert inv["packs"]["pieces"] == 6, inv
        assert inv["orphans"]["internal"] == 0, inv
        seen: list[int] = []
        assert store.inventory(max_orphan_samples=5, progress=lambda n, _: seen.append(n))["pieces"] == 6

        async def inventory() -> dict:
            return await store.inventory_async()

        assert asyncio.run(inventory())["pieces"] == 6
    with piecestore.PieceStore("memory://") as store:
        store.put("m/1_s0", b"abc")
        inv = store.inventory()
        assert (inv["pieces"], inv["bytes"], inv["packs"]) == (1, 3, None), inv


def test_migrate_to_copies_verified_and_resumes(tmp_path: Path) -> None:
    src = piecestore.PieceStore(f"file://{tmp_path}/src")
    dest = piecestore.PieceStore(f"file://{tmp_path}/dest", pack=False)
    src.put_many({f"mig/{i}_s0": piece(i) for i in range(8)})
    dest.put("mig/0_s0", piece(0))  # already there: skipped
    seen: list[tuple[int, int]] = []
    dry = src.migrate_to(dest, dry_run=True)
    assert (dry["copied"], dry["skipped"], dry["failed"]) == (7, 1, 0), dry
    assert not dest.exists("mig/1_s0")
    r = src.migrate_to(dest, concurrency=2, progress=lambda done, total: seen.append((done, total)))
    assert (r["total_pieces"], r["copied"], r["skipped"], r["failed"]) == (8, 7, 1, 0), r
    assert r["copied_bytes"] == sum(len(piece(i)) for i in range(1, 8)), r
    assert r["failures"] == []
    for i in range(8):
        assert dest.get(f"mig/{i}_s0") == piece(i)
    assert seen and seen[-1] == (8, 8), seen
    # Again: everything is there already.
    again = src.migrate_to(dest)
    assert (again["copied"], again["skipped"]) == (0, 8), again
    # A piece the destination holds with other bytes fails, is listed, and the run goes on.
    src.put("mig/9_s0", b"source bytes")
    dest.put("mig/9_s0", b"other bytes!")
    r = src.migrate_to(dest)
    assert r["failed"] == 1 and r["skipped"] == 8, r
    assert [(f["key"], f["code"]) for f in r["failures"]] == [("mig/9_s0", "PIECE_EXISTS")], r

    async def migrate() -> dict:
        return await src.migrate_to_async(dest, dry_run=True)

    assert asyncio.run(migrate())["skipped"] == 8
    # The core's bounds, as every binding has them: 1 to 4096, a ConfigError (a ValueError)
    # before anything is copied.
    for bad in (0, 4097):
        with pytest.raises(piecestore.ConfigError, match="from 1 to 4096, not %d" % bad):
            src.migrate_to(dest, concurrency=bad)
        with pytest.raises(ValueError, match="concurrency"):
            asyncio.run(src.migrate_to_async(dest, concurrency=bad))
    with pytest.raises(TypeError):
        src.migrate_to("file:///elsewhere")  # type: ignore[arg-type]
    src.close()
    dest.close()
