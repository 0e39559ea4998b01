"""Fixtures: a store per backend (memory, file, a sharded S3 bucket set on a real server).

The S3 server is moto's, started on 127.0.0.1 for the session, as the core's Rust suite does.
Under ``CI=true`` a missing ``moto_server`` fails the run instead of skipping the S3 cases.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

import piecestore

# Where subprocesses run: not python/, whose piecestore/ (without the native module) would
# shadow the installed package.
HERE = Path(__file__).resolve().parent

S3_KEYS = {"access_key": "pytest-access", "secret_key": "pytest-secret-do-not-print"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _moto_server() -> str | None:
    beside = Path(sys.executable).with_name("moto_server")
    if beside.exists():
        return str(beside)
    return shutil.which("moto_server")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    exe = _moto_server()
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("moto_server not found (bash scripts/test.sh installs it)")
        pytest.skip("moto_server not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=1).close()
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def s3_url(endpoint: str, shards: int = 4) -> str:
    """A fresh bucket set (created at open: ``create_bucket=true``) on the test server."""
    return f"{endpoint}/py-{uuid.uuid4().hex[:12]}-%d?shards={shards}&create_bucket=true"


def open_backend(kind: str, tmp_path: Path, s3: str | None, **options: Any) -> piecestore.PieceStore:
    if kind == "memory":
        return piecestore.PieceStore("memory://", **options)
    if kind == "file":
        return piecestore.PieceStore(tmp_path / "pieces", **options)
    assert s3 is not None
    return piecestore.PieceStore(s3_url(s3), region="us-east-1", **S3_KEYS, **options)


@pytest.fixture(params=["memory", "file", "s3_sharded"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[piecestore.PieceStore]:
    s3 = request.getfixturevalue("s3_endpoint") if backend == "s3_sharded" else None
    st = open_backend(backend, tmp_path, s3)
    yield st
    st.close()
