"""Operation metrics: the Prometheus text of ``metrics()`` and ``metrics_summary()``."""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path

import pytest

import piecestore


def open_store(kind: str, tmp_path: Path, **options: bool) -> piecestore.PieceStore:
    if kind == "memory":
        return piecestore.PieceStore("memory://", **options)
    return piecestore.PieceStore(tmp_path / "pieces", **options)


def sample_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def labels(kind: str, op: str) -> str:
    return f'backend="{kind}",shard="0",op="{op}"'


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_counts_bytes_errors(kind: str, tmp_path: Path) -> None:
    with open_store(kind, tmp_path) as store:
        store.put("1_s0", b"hello")
        store.put("2_s0", b"abc")
        store.put("3_s0", b"")
        assert store.get("1_s0") == b"hello"
        assert store.get("2_s0") == b"abc"
        with pytest.raises(piecestore.PieceNotFound):
            store.get("9_s0")
        assert store.get_range("1_s0", 1, 2) == b"el"

        text = store.metrics()
        assert isinstance(text, str)
        assert f"piecestore_operations_total{{{labels(kind, 'put')}}} 3\n" in text
        assert f"piecestore_operations_total{{{labels(kind, 'get')}}} 3\n" in text
        assert f"piecestore_operations_total{{{labels(kind, 'get_range')}}} 1\n" in text
        assert f"piecestore_operations_total{{{labels(kind, 'delete')}}} 0\n" in text
        assert (
            f'piecestore_operation_errors_total{{{labels(kind, "get")},kind="PIECE_NOT_FOUND"}} 1\n'
            in text
        )
        assert f"piecestore_operation_bytes_total{{{labels(kind, 'put')}}} 8\n" in text
        assert f"piecestore_operation_bytes_total{{{labels(kind, 'get')}}} 8\n" in text
        assert f"piecestore_operation_bytes_total{{{labels(kind, 'get_range')}}} 2\n" in text
        assert (
            f'piecestore_operation_duration_seconds_bucket{{{labels(kind, "put")},le="+Inf"}} 3\n'
            in text
        )
        assert f"piecestore_operation_duration_seconds_count{{{labels(kind, 'get')}}} 3\n" in text
        # only the one error
        assert len(re.findall(r"^piecestore_operation_errors_total\{", text, re.M)) == 1

        summary = store.metrics_summary()
        assert [(m["shard"], m["op"]) for m in summary] == [
            (0, op) for op in ["put", "get", "get_range", "head", "delete", "list"]
        ]
        by_op = {m["op"]: m for m in summary}
        put, get = by_op["put"], by_op["get"]
        assert all(m["backend"] == kind for m in summary)
        assert (put["count"], put["bytes"], put["errors"]) == (3, 8, {})
        assert (get["count"], get["bytes"], get["errors"]) == (3, 8, {"PIECE_NOT_FOUND": 1})
        assert (by_op["get_range"]["count"], by_op["get_range"]["bytes"]) == (1, 2)
        for m in (put, get):
            assert isinstance(m["latency_sum_s"], float) and m["latency_sum_s"] > 0
            p50, p99 = m["p50_s"], m["p99_s"]
            assert p50 is not None and p99 is not None
            assert 0 < p50 <= p99 and math.isfinite(p99)
        # a get is not also counted as a head
        assert by_op["head"]["count"] == 0
        delete = by_op["delete"]
        assert (delete["count"], delete["bytes"], delete["errors"]) == (0, 0, {})
        assert (delete["latency_sum_s"], delete["p50_s"], delete["p99_s"]) == (0.0, None, None)


def test_sharded_labels(tmp_path: Path) -> None:
    with piecestore.PieceStore(f"{tmp_path}/s-%d", shards=3) as store:
        keys = [f"{i}_s0" for i in range(30)]
        store.put_many({k: b"x" * 10 for k in keys})
        per_shard = [0, 0, 0]
        for k in keys:
            per_shard[store.shard_of(k)] += 1
        text = store.metrics()
        summary = store.metrics_summary()
        assert len(summary) == 3 * 6
        for shard, n in enumerate(per_shard):
            assert (
                f'piecestore_operations_total{{backend="file",shard="{shard}",op="put"}} {n}\n'
                in text
            )
            (put,) = [m for m in summary if m["shard"] == shard and m["op"] == "put"]
            assert (put["count"], put["bytes"]) == (n, 10 * n)


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_disabled(kind: str, tmp_path: Path) -> None:
    with open_store(kind, tmp_path, metrics=False) as store:
        store.put("1_s0", b"hello")
        assert store.get("1_s0") == b"hello"
        with pytest.raises(piecestore.PieceNotFound):
            store.get("9_s0")
        text = store.metrics()
        assert sample_lines(text) == []
        assert "# TYPE piecestore_operations_total counter" in text
        assert store.metrics_summary() == []


@pytest.mark.parametrize("spelling", ["metrics", "Metrics", "METRICS"])
def test_option_spellings(spelling: str) -> None:
    with piecestore.PieceStore("memory://", **{spelling: False}) as store:
        store.put("1_s0", b"x")
        assert store.metrics_summary() == []
    config = {"Store": {"BucketURL": "memory://"}, "Backend": {"Metrics": False}}
    with piecestore.PieceStore(config) as store:
        store.put("1_s0", b"x")
        assert store.metrics_summary() == []


def test_async_operations_are_counted() -> None:
    store = piecestore.PieceStore("memory://")

    async def main() -> None:
        await store.put_async("1_s0", b"hello")
        await store.get_async("1_s0")
        await store.head_async("1_s0")
        assert await store.exists_async("1_s0")
        await store.delete_async("1_s0")
        await store.close_async()

    asyncio.run(main())
    by_op = {m["op"]: m for m in store.metrics_summary()}
    assert [by_op[op]["count"] for op in ["put", "get", "head", "delete"]] == [1, 1, 2, 1]
    assert (by_op["put"]["bytes"], by_op["get"]["bytes"]) == (5, 5)


def test_snapshots_and_separate_stores() -> None:
    store = piecestore.PieceStore("memory://")
    store.put("1_s0", b"a")
    before = store.metrics_summary()
    assert [m["count"] for m in before if m["op"] == "put"] == [1]
    assert [info.key for info in store.list()] == ["1_s0"]
    store.put("2_s0", b"bc")
    after = {m["op"]: m for m in store.metrics_summary()}
    assert (after["put"]["count"], after["put"]["bytes"]) == (2, 3)
    assert after["list"]["count"] == 1
    # a snapshot: the earlier list did not change
    assert [m["count"] for m in before if m["op"] == "put"] == [1]
    # another store over the same data has its own counters
    other = piecestore.PieceStore("memory://")
    assert all(m["count"] == 0 for m in other.metrics_summary())
    store.close()
    # metrics survive close
    assert f"piecestore_operations_total{{{labels('memory', 'put')}}} 2\n" in store.metrics()


def test_cache_options_and_hits_in_metrics(tmp_path: Path) -> None:
    disk = tmp_path / "cache"
    st = piecestore.PieceStore(
        tmp_path / "pieces", cache_memory="1MiB", cache_disk=disk, cache_disk_size="64MiB"
    )
    st.put("1_s0", b"cached piece")
    assert st.get("1_s0") == b"cached piece"  # a miss: fetched, then admitted
    assert st.get("1_s0") == b"cached piece"  # a memory hit
    text = st.metrics()
    assert 'piecestore_cache_hits_total{tier="memory"} 1' in text, text
    assert "piecestore_cache_fetches_total 1" in text
    assert 'piecestore_cache_capacity_bytes{tier="disk"} 67108864' in text
    st.close()
    # Reopened: the disk tier serves it.
    st = piecestore.PieceStore(tmp_path / "pieces", cache_memory=0, cache_disk=disk)
    assert st.get("1_s0") == b"cached piece"
    assert 'piecestore_cache_hits_total{tier="disk"} 1' in st.metrics()
    st.close()
    with pytest.raises(piecestore.ConfigError, match="cache_admit"):
        piecestore.PieceStore("memory://", cache_admit="sometimes")


def test_clear_cache_empties_both_tiers(tmp_path: Path) -> None:
    disk = tmp_path / "cache"
    st = piecestore.PieceStore(tmp_path / "pieces", cache_memory="1MiB", cache_disk=disk)
    st.put("1_s0", b"cached piece")
    st.get("1_s0")  # a miss: fetched, then admitted to both tiers
    assert st.get("1_s0") == b"cached piece"  # a memory hit
    assert st.clear_cache() is True
    assert st.get("1_s0") == b"cached piece"  # fetched again: the memory tier is empty
    text = st.metrics()
    assert 'piecestore_cache_hits_total{tier="memory"} 1' in text, text
    assert "piecestore_cache_fetches_total 2" in text, text


    async def clear() -> bool:
        return await st.clear_cache_async()

    assert asyncio.run(clear()) is True
    st.close()
    # The disk tier's files went too: reopened with the disk tier alone, the piece is a fetch.
    st = piecestore.PieceStore(tmp_path / "pieces", cache_memory=0, cache_disk=disk)
    assert st.get("1_s0") == b"cached piece"
    text = st.metrics()
    assert 'piecestore_cache_hits_total{tier="disk"} 1' not in text, text
    assert "piecestore_cache_fetches_total 1" in text, text
    st.close()
    # No cache: nothing to clear.
    assert piecestore.PieceStore(tmp_path / "pieces").clear_cache() is False


def test_another_process_delete_or_overwrite_is_not_served_from_the_cache(tmp_path: Path) -> None:
    import subprocess
    import sys

    # A packed directory: its index is shared by every process on the host, and answers first.
    st = piecestore.PieceStore(tmp_path / "pieces", cache_memory="8MiB")
    st.put("gone_s0", b"deleted elsewhere")
    st.put("swap_s0", b"old bytes")
    st.put("kept_s0", b"kept")
    for key in ("gone_s0", "swap_s0", "kept_s0"):
        st.get(key)  # admitted
    assert st.get("kept_s0") == b"kept"  # a memory hit
    child = (
        "import sys, piecestore\n"
        "st = piecestore.PieceStore(sys.argv[1])\n"
        "st.delete('gone_s0')\n"
        "st.put('swap_s0', b'new bytes!', overwrite=True)\n"
        "st.close()\n"
    )
    subprocess.run(
        [sys.executable, "-c", child, str(tmp_path / "pieces")],
        check=True,
        cwd=Path(__file__).resolve().parent,
        timeout=60,
    )
    with pytest.raises(piecestore.PieceNotFound):
        st.get("gone_s0")
    assert st.get("swap_s0") == b"new bytes!"
    assert st.get("kept_s0") == b"kept"
    text = st.metrics()
    assert "piecestore_cache_stale_total 2" in text, text
    st.close()
