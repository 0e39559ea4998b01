"""Every exception class, from the user's side; messages name key and backend, never a secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import piecestore
from conftest import HERE, S3_KEYS, s3_url


def test_hierarchy() -> None:
    for cls in [
        piecestore.PieceNotFound,
        piecestore.PieceExists,
        piecestore.InvalidKey,
        piecestore.InvalidRange,
        piecestore.CorruptPiece,
        piecestore.ConfigError,
        piecestore.BackendError,
        piecestore.Unauthorized,
        piecestore.StoreClosed,
    ]:
        assert issubclass(cls, piecestore.PieceStoreError)
    assert issubclass(piecestore.PieceNotFound, KeyError)
    assert issubclass(piecestore.InvalidKey, ValueError)
    assert issubclass(piecestore.InvalidRange, ValueError)
    assert issubclass(piecestore.Unauthorized, piecestore.BackendError)


def test_not_found_and_invalid_key(store: piecestore.PieceStore) -> None:
    with pytest.raises(piecestore.PieceNotFound) as e:
        store.get("404_s0")
    assert e.value.code == "PIECE_NOT_FOUND" and e.value.key == "404_s0"
    assert e.value.backend and "404_s0" in str(e.value) and e.value.backend in str(e.value)
    assert not e.value.retryable
    with pytest.raises(KeyError):
        store.head("404_s0")
    for bad in ["", "a/../b", "x" * (piecestore.MAX_KEY_LEN + 1), ".piecestore/internal", "nul\0"]:
        with pytest.raises(piecestore.InvalidKey) as ei:
            store.put(bad, b"x")
        assert ei.value.code == "INVALID_KEY"
        with pytest.raises(ValueError):
            piecestore.validate_key(bad)


def test_corrupt_piece_on_disk(tmp_path: Path) -> None:
    # One file per piece, to flip a byte of it (packed pieces: see test_corrupt_packed_piece).
    st = piecestore.PieceStore(tmp_path, pack=False)
    st.put("1_s0", b"A" * 1000)
    st.put("2_s0", b"B" * 1000)
    path = tmp_path / "1_s0"
    raw = bytearray(path.read_bytes())
    raw[500] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(piecestore.CorruptPiece) as e:
        st.get("1_s0")
    assert e.value.key == "1_s0" and e.value.code == "CORRUPT_PIECE"
    with pytest.raises(piecestore.CorruptPiece):
        st.get_range("1_s0", 0, 10)
    assert st.get("2_s0") == b"B" * 1000  # the others still read


def test_get_stream_chunks_verified_and_corruption_raised_in_place(tmp_path: Path) -> None:
    import asyncio

    st = piecestore.PieceStore(tmp_path, pack=False)
    data = os.urandom((3 << 20) + 5)
    st.put("8_s0", data)
    reader = st.get_stream("8_s0")
    assert (reader.info.key, reader.info.size) == ("8_s0", len(data))
    chunks = [bytes(c) for c in reader]
    assert len(chunks) >= 3 and b"".join(chunks) == data

    async def read_async() -> bytes:
        r = await st.get_stream_async("8_s0")
        return b"".join([bytes(c) async for c in r])

    assert asyncio.run(read_async()) == data
    # A flipped byte: some chunks may come, then CorruptPiece in place of the last one.
    path = tmp_path / "8_s0"
    raw = bytearray(path.read_bytes())
    raw[(2 << 20) + 17] ^= 0x01
    path.write_bytes(bytes(raw))
    got: list[bytes] = []
    with pytest.raises(piecestore.CorruptPiece):
        for c in st.get_stream("8_s0"):
            got.append(bytes(c))
    assert sum(len(c) for c in got) < len(data)
    with pytest.raises(piecestore.PieceNotFound):
        st.get_stream("8_s9")
    with pytest.raises(piecestore.InvalidKey):
        st.get_stream("../x")
    st.close()


def test_backend_error_is_retryable_and_keeps_secrets(tmp_path: Path) -> None:
    port = 1  # nothing listens on 127.0.0.1:1
    with pytest.raises(piecestore.PieceStoreError) as e:
        piecestore.PieceStore(
            f"http://127.0.0.1:{port}/bucket",
            region="us-east-1",
            max_retries=0,
            connect_timeout=2,
            **S3_KEYS,
        )
    assert isinstance(e.value, piecestore.BackendError) and e.value.retryable
    assert e.value.code == "BACKEND" and "127.0.0.1:1" in str(e.value)
    for secret in S3_KEYS.values():
        assert secret not in str(e.value) and secret not in repr(e.value)


def test_config_errors() -> None:
    with pytest.raises(piecestore.ConfigError) as e:
        piecestore.PieceStore("memory://", shardz=2)
    assert "shardz" in str(e.value) and isinstance(e.value, ValueError)
    with pytest.raises(piecestore.ConfigError, match="shards takes a whole number"):
        piecestore.PieceStore("memory://", shards="many")
    # A typo gets the nearest name, spelled as the caller spells names.
    with pytest.raises(piecestore.ConfigError, match='did you mean "max_retries"'):
        piecestore.PieceStore("memory://", max_retrys=3)
    with pytest.raises(piecestore.ConfigError, match='did you mean "request_timeout"') as e3:
        piecestore.PieceStore("memory://?request_timout=2")
    assert "URL parameter" in str(e3.value)
    with pytest.raises(piecestore.ConfigError, match="credentials"):
        piecestore.PieceStore("s3://bucket?secret_key=hunter2")
    with pytest.raises(piecestore.ConfigError) as e2:
        piecestore.PieceStore("s3://bucket", secret_key=5)
    assert "5" not in str(e2.value).replace("SecretKey", "")
    # PieceStore's own tables are strict; the original's ignore what they do not know, as
    # the original Go piecestore does.
    with pytest.raises(piecestore.ConfigError, match="Nope"):
        piecestore.PieceStore({"Store": {"BucketURL": "memory://"}, "Backend": {"Nope": 1}})
    piecestore.PieceStore({"Store": {"BucketURL": "memory://", "TestMode": True}}).close()
    with pytest.raises(piecestore.ConfigError):
        piecestore.PieceStore.from_config("/nonexistent/config.toml")
    with pytest.raises(TypeError):
        piecestore.PieceStore(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        piecestore.PieceStore("memory://", region=object())  # type: ignore[arg-type]


def test_options_on_a_plain_path_and_repr_tells_packing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    st = piecestore.PieceStore("./data?pack=false")
    st.put("1_s0", b"own file")
    assert (tmp_path / "data" / "1_s0").read_bytes().startswith(b"own file")  # its own file
    assert not any("?" in p.name for p in tmp_path.iterdir())
    assert 'packing="off (one object per piece)"' in repr(st)
    st.close()
    packed = piecestore.PieceStore("./packed")
    assert 'packing="on: pieces under 1MiB packed' in repr(packed), repr(packed)
    packed.close()
    with pytest.raises(piecestore.ConfigError, match='did you mean "pack"'):
        piecestore.PieceStore("./data?pak=false")


def _rss() -> int:
    """This process's resident set, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc (Linux)")
def test_close_frees_a_memory_store_at_once() -> None:
    # 40 MiB pieces: each put copies the bytearray into one allocation above glibc's largest
    # mmap threshold (32 MiB), so each is its own mapping and freeing it shows in the
    # resident set at once. The store object stays referenced: close() itself frees.
    piece = bytearray(b"\x07") * (40 << 20)
    store = piecestore.PieceStore("memory://")
    for i in range(4):
        store.put(f"{i}_s0", piece)
    assert store.head("3_s0").size == len(piece)
    held = _rss()
    store.close()
    # (A piece held as a Python object, as the 3.9 wheel's put makes one, is released when
    # this thread next enters the extension: `closed` does that.)
    assert store.closed
    freed = held - _rss()
    assert freed > 120 << 20, f"close() freed only {freed / 2**20:.1f} MiB of 160 MiB"
    with pytest.raises(piecestore.StoreClosed):
        store.get("0_s0")


def test_store_closed(store: piecestore.PieceStore) -> None:
    store.put("1_s0", b"x")
    store.close()
    assert store.closed and "closed" in repr(store)
    calls = [
        lambda: store.get("1_s0"),
        lambda: store.put("2_s0", b"y"),
        lambda: store.get_range("1_s0", 0, 1),
        lambda: store.head("1_s0"),
        lambda: store.delete("1_s0"),
        lambda: list(store.list()),
        lambda: store.get_many(["1_s0"]),
        lambda: store.put_many({"3_s0": b"z"}),
        lambda: store.delete_prefix("1"),
    ]
    for call in calls:
        with pytest.raises(piecestore.StoreClosed):
            call()
    store.close()  # twice is fine


def test_missing_bucket_is_named_and_not_created(s3_endpoint: str) -> None:
    # By default (outside the original's config layout) a missing bucket is not created: a
    # mistyped name is an error that names it, and nothing appears on the server.
    url = s3_url(s3_endpoint, 2).replace("&create_bucket=true", "")
    with pytest.raises(piecestore.BucketNotFound) as e:
        piecestore.PieceStore(url, region="us-east-1", **S3_KEYS)
    assert isinstance(e.value, piecestore.ConfigError)  # still a configuration error
    assert e.value.code == "BUCKET_NOT_FOUND"
    stem = url.split("/")[-1].split("?")[0].replace("%d", "")  # whichever shard failed first
    assert f'bucket "{stem}' in str(e.value), str(e.value)
    assert "shard" in str(e.value) and "create_bucket" in str(e.value)
    for secret in S3_KEYS.values():
        assert secret not in str(e.value)
    with pytest.raises(piecestore.BucketNotFound):  # still missing: the failed open made none
        piecestore.PieceStore(url, region="us-east-1", **S3_KEYS)
    # Opting in creates it.
    st = piecestore.PieceStore(url, region="us-east-1", create_bucket=True, **S3_KEYS)
    st.put("1_s0", b"x")
    assert piecestore.PieceStore(url, region="us-east-1", **S3_KEYS).get("1_s0") == b"x"


def test_corrupt_packed_piece(tmp_path: Path) -> None:
    st = piecestore.PieceStore(tmp_path)
    st.put("1_s0", b"A" * 1000)
    st.put("2_s0", b"B" * 1000)
    packs = list((tmp_path / ".piecestore" / "packs").glob("*.pack"))
    assert packs, "small pieces are packed by default"
    for pack in packs:
        raw = bytearray(pack.read_bytes())
        at = raw.find(b"1_s0" + b"A" * 8)
        if at >= 0:
            raw[at + 4 + 500] ^= 0x01
            pack.write_bytes(bytes(raw))
            break
    else:
        raise AssertionError("1_s0 is in no pack")
    with pytest.raises(piecestore.CorruptPiece) as e:
        st.get("1_s0")
    assert "1_s0" in str(e.value)
    assert st.get("2_s0") == b"B" * 1000


def test_environment_and_config_file(tmp_path: Path, s3_endpoint: str) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        "[Other]\nignored = true\n[PieceStore]\nShards = 2\n"
        f'[PieceStore.Store]\nBucketURL = "{tmp_path}/f-%d"\n'
    )
    st = piecestore.PieceStore.from_config(cfg)
    st.put("1_s0", b"cfg")
    assert st.shard_count == 2
    st2 = piecestore.PieceStore(str(cfg))
    assert st2.get("1_s0") == b"cfg"
    st3 = piecestore.PieceStore({"PieceStore": {"Shards": 2, "Store": {"BucketURL": f"{tmp_path}/f-%d"}}})
    assert st3.get("1_s0") == b"cfg"
    # credentials and region from the environment, as the core reads them (an http:// endpoint
    # is MinIO-style: MINIO_* or the standard AWS_* names)
    code = (
        "import piecestore, sys\n"
        "s = piecestore.PieceStore(sys.argv[1])\n"
        "s.put('1_s0', b'env'); assert s.get('1_s0') == b'env'\n"
        "print(s.shard_count)\n"
    )
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID=S3_KEYS["access_key"],
        AWS_SECRET_ACCESS_KEY=S3_KEYS["secret_key"],
        AWS_REGION="us-east-1",
    )
    out = subprocess.run(
        [sys.executable, "-c", code, s3_url(s3_endpoint, 3)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=HERE,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"
