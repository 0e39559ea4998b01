"""Threads, asyncio, cancellation and fork."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import piecestore
from conftest import HERE, S3_KEYS, open_backend, s3_url
from test_roundtrip import data_of


def test_eight_threads(store: piecestore.PieceStore) -> None:
    def work(t: int) -> int:
        n = 0
        for i in range(50):
            key = f"{t}_s{i}"
            data = data_of(1000 + i, t)
            store.put(key, data)
            assert store.get(key) == data
            assert store.get_range(key, 10, 20) == data[10:30]
            n += 1
        return n

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(work, range(8))) == 400
    assert len(list(store.list())) == 400


def test_blocking_calls_release_the_gil(tmp_path: Path) -> None:
    # While one thread is inside a long put (64 MiB, fsync'd), another thread must run
    # Python code: count its iterations during the put.
    st = piecestore.PieceStore(tmp_path)
    data = data_of(64 << 20)
    started = threading.Event()
    done = threading.Event()
    ticks = 0

    def spin() -> None:
        nonlocal ticks
        started.set()
        while not done.is_set():
            ticks += 1

    t = threading.Thread(target=spin)
    t.start()
    started.wait()
    before = ticks
    for i in range(3):
        st.put(f"{i}_s0", data)
    during = ticks - before
    done.set()
    t.join()
    assert during > 1000, during


class _SlowProxy:
    """A TCP proxy in front of the S3 server, run by Python threads (so it runs only while the
    GIL is free), that holds each request for a while before passing it on while ``armed``."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.held = 0
        self.armed = False
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream, timeout=30)
            threading.Thread(target=self._pump, args=(client, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if requests and self.armed:
                    self.held += 1
                    # Python work for a while: needs the GIL the caller's get must have let go.
                    end = time.monotonic() + 0.3
                    while time.monotonic() < end:
                        pass
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            dst.close()

    def close(self) -> None:
        self.server.close()


def test_a_call_that_waits_releases_the_gil(s3_endpoint: str) -> None:
    # A get is first tried holding the GIL (a memory store or the page cache answers at once);
    # one that must wait for the network goes on without it. The proxy between the store and
    # its server is Python code: were the GIL held while the get waits, the proxy could not
    # pass the request on and the get would time out.
    proxy = _SlowProxy(s3_endpoint)
    try:
        st = piecestore.PieceStore(
            s3_url(proxy.url, shards=2), region="us-east-1", get_timeout=20, **S3_KEYS
        )
        st.put("slow_s0", b"through the proxy")
        st.clear_cache()  # else the memory tier in front of buckets answers at once
        proxy.armed = True
        start = time.monotonic()
        assert st.get("slow_s0") == b"through the proxy"
        assert proxy.held >= 1 and time.monotonic() - start >= 0.3
        # Now in the memory tier: answered at once, not through the proxy.
        held = proxy.held
        assert st.get("slow_s0") == b"through the proxy"
        assert proxy.held == held
        with pytest.raises(piecestore.PieceNotFound):
            st.get("slow_s1")
        assert proxy.held > held
        st.close()
    finally:
        proxy.close()


def test_gather_1000_gets(store: piecestore.PieceStore) -> None:
    keys = [f"{i}_s0" for i in range(1000)]
    store.put_many({k: k.encode() * 3 for k in keys})

    async def main() -> None:
        got = await asyncio.gather(*[store.get_async(k) for k in keys])
        assert [bytes(g) for g in got] == [k.encode() * 3 for k in keys]
        heads = await asyncio.gather(*[store.head_async(k) for k in keys[:50]])
        assert [h.size for h in heads] == [len(k) * 3 for k in keys[:50]]
        assert [m.key async for m in store.list("99")] != []
        with pytest.raises(piecestore.PieceNotFound):
            await store.get_async("none_s0")
        await store.put_many_async({"a_s0": b"1", "a_s1": b"2"})
        assert [bytes(b) for b in await store.get_many_async(["a_s0", "a_s1"])] == [b"1", b"2"]
        assert await store.get_range_async("a_s1", 0, 1) == b"2"
        assert await store.exists_async("a_s0")
        await store.delete_async("a_s0")
        assert not await store.exists_async("a_s0")
        assert (await store.delete_prefix_async("a_")).pieces == 1

    asyncio.run(main())


def test_cancelled_tasks_leave_the_store_consistent(store: piecestore.PieceStore) -> None:
    data = data_of(64 << 20)

    async def main() -> None:
        for i in range(3):
            task = asyncio.ensure_future(store.put_async(f"{i}_s0", data))
            await asyncio.sleep(0.001 * i)
            if task.cancel():
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:
                # A fast backend (memory: a 64 MiB checksum takes ~1 ms) may finish the put
                # before the cancel lands; only a cancel before the task started is certain.
                assert i > 0, "a task cancelled before it ran must be cancelled"
                await task
        getter = asyncio.ensure_future(store.get_async("0_s0"))
        getter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter
        # the store still works, from asyncio and from blocking code
        await store.put_async("ok_s0", b"still fine")
        assert await store.get_async("ok_s0") == b"still fine"

    asyncio.run(main())
    # a cancelled put either never happened or finished whole: never a torn piece
    for i in range(3):
        if store.exists(f"{i}_s0"):
            assert store.get(f"{i}_s0") == data
        store.put(f"{i}_s0", data)  # and the key is usable afterwards
        assert store.get(f"{i}_s0") == data


def test_async_context_manager() -> None:
    async def main() -> piecestore.PieceStore:
        async with piecestore.PieceStore("memory://") as st:
            await st.put_async("1_s0", b"x")
            assert await st.get_async("1_s0") == b"x"
        return st

    st = asyncio.run(main())
    assert st.closed
    with piecestore.PieceStore("memory://") as st2:
        st2.put("1_s0", b"y")
    with pytest.raises(piecestore.StoreClosed):
        st2.get("1_s0")


def _child(store: piecestore.PieceStore, key: str, q: "multiprocessing.Queue[object]") -> None:
    try:
        assert store.get(key) == b"from parent"
        store.put(key + "_child", b"from child")
        assert store.get(key + "_child") == b"from child"

        async def a() -> bytes:
            return bytes(await store.get_async(key))

        assert asyncio.run(a()) == b"from parent"
        q.put("ok")
    except BaseException as e:  # report, don't hang
        q.put(repr(e))


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "unpacked"])
@pytest.mark.parametrize("kind", ["file", "s3_sharded"])
def test_fork_child_uses_parent_store(
    kind: str, pack: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s3 = request.getfixturevalue("s3_endpoint") if kind == "s3_sharded" else None
    # A forked child is one more process on the store: packed, it writes packs of its own.
    st = open_backend(kind, tmp_path, s3, pack=pack)
    # use the store (and the runtime, and its connection pool) before forking
    for i in range(20):
        st.put(f"{i}_s0", b"from parent")
    assert st.get("0_s0") == b"from parent"

    async def warm() -> None:
        await asyncio.gather(*[st.get_async(f"{i}_s0") for i in range(20)])

    asyncio.run(warm())
    ctx = multiprocessing.get_context("fork")
    q: "multiprocessing.Queue[object]" = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(st, f"{i}_s0", q)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(90)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, "a forked child hung"
    results = [q.get(timeout=5) for _ in procs]
    assert results == ["ok"] * 3, results
    assert all(p.exitcode == 0 for p in procs)
    # the parent is unaffected, and sees the children's pieces
    assert st.get("0_s0_child") == b"from child"
    st.put("after_s0", b"parent still works")
    assert st.get("after_s0") == b"parent still works"


def test_runtime_configuration() -> None:
    # the runtime started with the first store of this session: too late to size it
    piecestore.PieceStore("memory://").put("1_s0", b"x")
    with pytest.raises(piecestore.ConfigError, match="already started"):
        piecestore.configure_runtime(worker_threads=2)
    with pytest.raises(piecestore.ConfigError):
        piecestore.configure_runtime(worker_threads=0)


def test_runtime_can_be_sized_in_a_fresh_process() -> None:
    import subprocess
    import sys

    code = (
        "import piecestore\n"
        "piecestore.configure_runtime(worker_threads=1, max_blocking_threads=2)\n"
        "s = piecestore.PieceStore('memory://'); s.put('1_s0', b'x'); print(bytes(s.get('1_s0')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=HERE
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "b'x'"


def test_no_crash_at_interpreter_exit() -> None:
    # A script that ends right after its last await: the runtime thread that finished that task
    # must not be touching Python while the interpreter finalizes (it used to crash about every
    # second run, when futures were resolved from runtime threads).
    import subprocess
    import sys

    code = (
        "import asyncio, piecestore\n"
        "async def main():\n"
        "    async with piecestore.PieceStore('memory://') as s:\n"
        "        await asyncio.gather(*(s.put_async(f'{i}_s0', b'x' * 100) for i in range(20)))\n"
        "        assert len(await asyncio.gather(*(s.get_async(f'{i}_s0') for i in range(20)))) == 20\n"
        "        assert len([m async for m in s.list()]) == 20\n"
        "asyncio.run(main())\n"
    )
    for _ in range(20):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=HERE
        )
        assert out.returncode == 0, out.stderr[-2000:]


def _memory_child(store: piecestore.PieceStore, q: "multiprocessing.Queue[object]") -> None:
    try:
        store.get("0_s0")
        q.put("no error")
    except piecestore.ConfigError as e:
        q.put(str(e))
    except BaseException as e:  # report, don't hang
        q.put(repr(e))


def test_a_packed_memory_store_refuses_in_a_forked_child() -> None:
    # Its pieces live in the parent's memory: a child cannot share them.
    st = piecestore.PieceStore("memory://", pack=True)
    st.put("0_s0", b"packed")
    ctx = multiprocessing.get_context("fork")
    q: "multiprocessing.Queue[object]" = ctx.Queue()
    p = ctx.Process(target=_memory_child, args=(st, q))
    p.start()
    p.join(60)
    assert not p.is_alive(), "a forked child hung"
    msg = q.get(timeout=5)
    assert isinstance(msg, str) and "forked child cannot use it" in msg, msg
    assert st.get("0_s0") == b"packed"


# The store a pool worker uses: inherited from the parent (fork), or opened by the worker.
_POOL_STORE: "piecestore.PieceStore | None" = None


def _pool_work(args: "tuple[str, int]") -> int:
    path, worker = args
    st = _POOL_STORE if _POOL_STORE is not None else piecestore.PieceStore(path)
    for j in range(60):
        key = f"{worker}_s{j}"
        st.put(key, data_of(100 + 37 * j, worker))
        assert st.get(key) == data_of(100 + 37 * j, worker)
    # Every worker also puts the same bytes under one key: Ok for all, one piece stored.
    st.put("shared_s0", b"the same bytes from every worker")
    # And other bytes under another: exactly one wins, the rest are told it exists.
    try:
        st.put("contested_s0", f"worker {worker}".encode())
        won = 1
    except piecestore.PieceExists:
        won = 0
    st.delete(f"{worker}_s0")
    return won


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_packed_store_from_a_multiprocessing_pool(method: str, tmp_path: Path) -> None:
    global _POOL_STORE
    path = str(tmp_path / "pieces")
    st = piecestore.PieceStore(path)  # packed: the default for a directory
    st.put("parent_s0", b"from the parent")
    _POOL_STORE = st if method == "fork" else None
    try:
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(4) as pool:
            wins = pool.map(_pool_work, [(path, w) for w in range(1, 9)], chunksize=1)
    finally:
        _POOL_STORE = None
    assert sum(wins) == 1, wins
    # Every worker's pieces are visible here at once, from the parent's own index view.
    for w in range(1, 9):
        with pytest.raises(piecestore.PieceNotFound):
            st.get(f"{w}_s0")
        for j in range(1, 60):
            assert st.get(f"{w}_s{j}") == data_of(100 + 37 * j, w)
    assert st.get("shared_s0") == b"the same bytes from every worker"
    assert bytes(st.get("contested_s0")).startswith(b"worker ")
    assert st.get("parent_s0") == b"from the parent"
    assert len(list(st.list())) == 8 * 59 + 3
    st.close()
    # Packed: the pieces are in packs.
    assert list((tmp_path / "pieces" / ".piecestore" / "packs").iterdir())
