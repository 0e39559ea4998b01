"""The gRPC API of `piecestore serve`, driven by clients no one here wrote: grpcio with stubs
generated from proto/piecestore/v1/piecestore.proto by grpcio-tools at test time, the standard
health checking client, and the reflection client. Each test runs a real `piecestore serve`
process on 127.0.0.1 (started by test_serve's helpers)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_serve import SECRET, Served, start, stop



def need(name: str) -> Any:
    """Module `name`: a skip on a developer's machine without it, a failure in CI (where
    scripts/test.sh installs it)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (bash scripts/test.sh installs it)")
        pytest.skip(f"{name} is not installed", allow_module_level=True)


grpc = need("grpc")

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
TOKEN = "grpc-test-token-not-a-real-one"


@pytest.fixture(scope="module")
def pb(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The messages and stubs, generated from the repository's proto now."""
    need("grpc_tools")
    out = tmp_path_factory.mktemp("stubs")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            # Generated as top-level modules: a package `piecestore` is this binding's.
            f"-I{PROTO / 'piecestore' / 'v1'}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO / "piecestore/v1/piecestore.proto"),
        ],
        check=True,
    )
    sys.path.insert(0, str(out))
    try:
        messages = importlib.import_module("piecestore_pb2")
        services = importlib.import_module("piecestore_pb2_grpc")
    finally:
        sys.path.remove(str(out))

    class Generated:
        m = messages
        s = services

    return Generated


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    d = tmp_path_factory.mktemp("grpc")
    s = start(
        d,
        f'Tokens = ["{TOKEN}"]',
        buckets='[[PieceStore.Serve.Buckets]]\nName = "public"\n'
        f'Store = "file://{d}/public"\nPublicRead = true',
    )
    yield s
    stop(s)
    assert TOKEN not in s.log.read_text()


def target(s: Served) -> str:
    return s.endpoint.split("://", 1)[1]


def stub(pb: Any, s: Served) -> Any:
    return pb.s.PieceStoreStub(grpc.insecure_channel(target(s)))


AUTH = (("authorization", f"Bearer {TOKEN}"),)


def key() -> str:
    return f"{uuid.uuid4().int % 10**12}_s0"


def error_info(e: grpc.RpcError) -> tuple[str, dict[str, str]]:
    """The google.rpc.ErrorInfo of a failed call: its reason and metadata."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(e)  # type: ignore[arg-type]
    assert status is not None, f"no status details in {e}"
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            assert info.domain == "piecestore.dev"
            return info.reason, dict(info.metadata)
    raise AssertionError(f"no ErrorInfo in {status}")


def put(pb: Any, c: Any, k: str, data: bytes, chunk: int = 3, **first: Any) -> Any:
    def messages() -> Iterator[Any]:
        parts = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
        yield pb.m.PutRequest(key=k, data=parts[0], **first)
        for p in parts[1:]:
            yield pb.m.PutRequest(data=p)

    return c.Put(messages(), metadata=AUTH, timeout=30)


def test_put_in_chunks_get_streamed_ranges_head_list_delete(pb: Any, served: Served) -> None:
    c = stub(pb, served)
    k = key()
    body = bytes(range(256)) * 9000  # 2.3 MiB: a Get streams it in 1 MiB messages
    r = put(pb, c, k, body, chunk=700_000)
    assert r.size == len(body)
    got = list(c.Get(pb.m.GetRequest(key=k), metadata=AUTH, timeout=30))
    assert len(got) == 3
    assert b"".join(m.data for m in got) == body
    assert got[0].info.size == len(body) and got[0].info.crc32c == r.crc32c
    assert not got[1].HasField("info")
    part = list(c.Get(pb.m.GetRequest(key=k, offset=1000, length=5000), metadata=AUTH, timeout=30))
    assert b"".join(m.data for m in part) == body[1000:6000]
    tail = list(c.Get(pb.m.GetRequest(key=k, offset=len(body) - 10), metadata=AUTH, timeout=30))
    assert b"".join(m.data for m in tail) == body[-10:]
    head = c.Head(pb.m.HeadRequest(key=k), metadata=AUTH, timeout=30)
    assert (head.key, head.size, head.crc32c) == (k, len(body), r.crc32c)
    assert abs(head.stored_unix_ms / 1000 - time.time()) < 600
    assert c.Exists(pb.m.ExistsRequest(key=k), metadata=AUTH, timeout=30).exists
    # The same bytes again is fine; an empty piece is a piece.
    put(pb, c, k, body, chunk=1 << 20)
    e = key()
    put(pb, c, e, b"")
    assert b"".join(m.data for m in c.Get(pb.m.GetRequest(key=e), metadata=AUTH)) == b""

    prefix = f"{uuid.uuid4().int % 10**9}"
    names = [f"{prefix}{i:04d}_s{i % 3}" for i in range(1500)]
    for n in reversed(names):
        put(pb, c, n, n.encode())
    batches = list(c.List(pb.m.ListRequest(prefix=prefix), metadata=AUTH, timeout=60))
    assert [len(b.pieces) for b in batches] == [1000, 500]
    listed = [p.key for b in batches for p in b.pieces]
    assert listed == sorted(names)
    assert all(p.size == len(p.key) for b in batches for p in b.pieces)

    c.Flush(pb.m.FlushRequest(), metadata=AUTH, timeout=30)
    c.Delete(pb.m.DeleteRequest(key=k), metadata=AUTH, timeout=30)
    c.Delete(pb.m.DeleteRequest(key=k), metadata=AUTH, timeout=30)  # a missing piece: fine
    assert not c.Exists(pb.m.ExistsRequest(key=k), metadata=AUTH).exists
    gone = c.DeletePrefix(pb.m.DeletePrefixRequest(prefix=prefix), metadata=AUTH, timeout=60)
    assert gone.pieces == 1500
    assert list(c.List(pb.m.ListRequest(prefix=prefix), metadata=AUTH)) == []


def test_a_streamed_get_of_a_corrupt_piece_ends_in_data_loss(pb: Any, served: Served) -> None:
    """A large piece is streamed as it is read; a byte that rots on disk in its last MiB ends
    the stream with DATA_LOSS in place of its last message, so the reader never has the whole
    piece from wrong bytes."""
    c = stub(pb, served)
    k = key()
    body = os.urandom((3 << 20) + 100)
    put(pb, c, k, body, chunk=1 << 20)
    files = [p for p in (served.data / "pieces").rglob(k) if p.is_file()]
    assert len(files) == 1, files
    raw = bytearray(files[0].read_bytes())
    raw[len(body) - 5] ^= 0x40
    files[0].write_bytes(bytes(raw))
    got = bytearray()
    with pytest.raises(grpc.RpcError) as e:
        for m in c.Get(pb.m.GetRequest(key=k), metadata=AUTH, timeout=30):
            got += m.data
    assert e.value.code() == grpc.StatusCode.DATA_LOSS, e.value
    reason, meta = error_info(e.value)
    assert reason == "CORRUPT_PIECE" and meta == {"key": k}, (reason, meta)
    assert 0 < len(got) < len(body), len(got)
    assert bytes(got) == body[: len(got)]


def test_every_error_code_with_the_engines_reason(pb: Any, served: Served) -> None:
    c = stub(pb, served)
    k = key()
    put(pb, c, k, b"first bytes")

    def fails(call: Any, code: Any, reason: str) -> dict[str, str]:
        with pytest.raises(grpc.RpcError) as e:
            r = call()
            if hasattr(r, "__iter__") and not hasattr(r, "SerializeToString"):
                list(r)
        assert e.value.code() == code, e.value
        got, meta = error_info(e.value)
        assert got == reason, (got, e.value.details())
        return meta

    missing = key()
    meta = fails(lambda: c.Get(pb.m.GetRequest(key=missing), metadata=AUTH), grpc.StatusCode.NOT_FOUND, "PIECE_NOT_FOUND")
    assert meta == {"key": missing}
    fails(lambda: c.Head(pb.m.HeadRequest(key=missing), metadata=AUTH), grpc.StatusCode.NOT_FOUND, "PIECE_NOT_FOUND")
    meta = fails(lambda: put(pb, c, k, b"other bytes"), grpc.StatusCode.ALREADY_EXISTS, "PIECE_EXISTS")
    assert meta == {"key": k}
    fails(lambda: put(pb, c, "../etc/passwd", b"x"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_KEY")
    fails(lambda: put(pb, c, "~piecestore/x", b"x"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_KEY")
    bad = key()
    fails(lambda: put(pb, c, bad, b"payload", crc32c=1234), grpc.StatusCode.INVALID_ARGUMENT, "BAD_DIGEST")
    assert not c.Exists(pb.m.ExistsRequest(key=bad), metadata=AUTH).exists, "nothing stored"
    fails(
        lambda: c.Get(pb.m.GetRequest(key=k, offset=5, length=100), metadata=AUTH),
        grpc.StatusCode.OUT_OF_RANGE,
        "INVALID_RANGE",
    )
    fails(
        lambda: c.Get(pb.m.GetRequest(bucket="nope", key=k), metadata=AUTH),
        grpc.StatusCode.NOT_FOUND,
        "BUCKET_NOT_FOUND",
    )
    fails(
        lambda: c.DeletePrefix(pb.m.DeletePrefixRequest(prefix=""), metadata=AUTH),
        grpc.StatusCode.INVALID_ARGUMENT,
        "EMPTY_PREFIX",
    )
    # Auth: no token, a wrong token, a token for S3's secret.
    for md in [(), (("authorization", "Bearer not-the-token-at-all"),), (("authorization", f"Bearer {SECRET}"),)]:
        with pytest.raises(grpc.RpcError) as e:
            c.Head(pb.m.HeadRequest(key=k), metadata=md)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A public bucket is readable without a token, not writable.
    pub = stub(pb, served)
    with pytest.raises(grpc.RpcError) as e:
        pub.Put(iter([pb.m.PutRequest(bucket="public", key=k, data=b"x")]))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    put(pb, c, k, b"public bytes", bucket="public")
    got = list(pub.Get(pb.m.GetRequest(bucket="public", key=k)))
    assert b"".join(m.data for m in got) == b"public bytes"


def test_a_deadline_cancels_the_call_and_stores_nothing(pb: Any, served: Served) -> None:
    c = stub(pb, served)
    k = key()

    def held() -> Iterator[Any]:
        yield pb.m.PutRequest(key=k, data=b"the first chunk")
        time.sleep(2)  # the stream is held open past the deadline
        yield pb.m.PutRequest(data=b"never sent")

    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        c.Put(held(), metadata=AUTH, timeout=0.05)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 2.5
    time.sleep(0.2)
    assert not c.Exists(pb.m.ExistsRequest(key=k), metadata=AUTH).exists


def test_a_stream_that_stops_sending_is_cut_off_at_body_timeout(pb: Any, tmp_path: Path) -> None:
    s = start(tmp_path, f'BodyTimeout = "1s"\nTokens = ["{TOKEN}"]')
    try:
        c = stub(pb, s)
        k = key()

        def stalls() -> Iterator[Any]:
            yield pb.m.PutRequest(key=k, data=b"the first chunk")
            time.sleep(4)  # longer than BodyTimeout; no client deadline
            yield pb.m.PutRequest(data=b"too late")

        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            c.Put(stalls(), metadata=AUTH)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.value
        assert error_info(e.value)[0] == "BODY_TIMEOUT"
        assert time.monotonic() - t0 < 3.5, "cut off by the server, not by the stream's end"
        assert not c.Exists(pb.m.ExistsRequest(key=k), metadata=AUTH).exists
    finally:
        stop(s)


def test_health_and_reflection(pb: Any, served: Served) -> None:
    health_pb2 = need("grpc_health.v1.health_pb2")
    health_pb2_grpc = need("grpc_health.v1.health_pb2_grpc")
    channel = grpc.insecure_channel(target(served))
    h = health_pb2_grpc.HealthStub(channel)
    for service in ["", "piecestore.v1.PieceStore"]:
        r = h.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert r.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as e:
        h.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND

    reflection = need("grpc_reflection.v1alpha.proto_reflection_descriptor_database")
    db = reflection.ProtoReflectionDescriptorDatabase(channel)
    services = db.get_services()
    assert "piecestore.v1.PieceStore" in services, services
    from google.protobuf.descriptor_pool import DescriptorPool

    pool = DescriptorPool(db)
    svc = pool.FindServiceByName("piecestore.v1.PieceStore")
    assert {m.name for m in svc.methods} == {
        "Put", "Get", "Head", "Exists", "Delete", "DeletePrefix", "List", "Flush"
    }


def test_grpc_over_tls_with_a_test_ca(pb: Any, tmp_path: Path) -> None:
    from test_serve import _self_signed

    cert, key_pem = _self_signed("piecestore grpc test")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key_pem)
    s = start(
        tmp_path,
        f'TLSCert = "{tmp_path}/cert.pem"\nTLSKey = "{tmp_path}/key.pem"\nTokens = ["{TOKEN}"]',
    )
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert)
        c = pb.s.PieceStoreStub(grpc.secure_channel(target(s), creds))
        k = key()
        put(pb, c, k, b"over TLS")
        assert b"".join(m.data for m in c.Get(pb.m.GetRequest(key=k), metadata=AUTH)) == b"over TLS"
        other, _ = _self_signed("someone else")
        untrusting = pb.s.PieceStoreStub(
            grpc.secure_channel(target(s), grpc.ssl_channel_credentials(root_certificates=other))
        )
        with pytest.raises(grpc.RpcError) as e:
            untrusting.Head(pb.m.HeadRequest(key=k), metadata=AUTH, timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stop(s)


def test_the_docs_grpc_example_runs(pb: Any, served: Served, tmp_path: Path) -> None:
    """docs/serve.md's Python gRPC example, run as written against a real server (its
    address and token swapped for the test's), after the protoc command its comment gives."""
    text = (ROOT / "docs" / "serve.md").read_text()
    section = text[text.index("## The gRPC API") :]
    block = section[section.index("```python\n") + len("```python\n") :]
    block = block[: block.index("```")]
    protoc = next(line for line in block.splitlines() if "grpc_tools.protoc" in line)
    # After "python -m grpc_tools.protoc", run from the repository's root: here, the proto
    # paths made absolute and the output in the test's directory.
    args = [a.replace("proto/", f"{ROOT}/proto/") for a in protoc.lstrip("# ").split()[3:]]
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", *args], cwd=tmp_path, check=True)
    code = block.replace("127.0.0.1:9820", target(served)).replace(
        "a-long-random-grpc-token", TOKEN
    )
    code = code.replace('key="42_s0"', f'key="{key()}"')
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "b'piece'", r.stdout


def test_grpcurl_lists_and_calls_through_reflection(pb: Any, served: Served) -> None:
    """grpcurl (a Go client no one here wrote; scripts/test.sh installs it with go install)
    finds the services through reflection alone, without the proto file."""
    exe = ROOT / "target" / "tools" / "grpcurl"
    if not exe.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail("target/tools/grpcurl is not installed (bash scripts/test.sh installs it)")
        pytest.skip("grpcurl is not installed")
    addr = target(served)

    def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(exe), "-plaintext", "-max-time", "20", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = grpcurl(addr, "list")
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert "piecestore.v1.PieceStore" in services and "grpc.health.v1.Health" in services
    described = grpcurl(addr, "describe", "piecestore.v1.PieceStore")
    assert "rpc Get ( .piecestore.v1.GetRequest ) returns ( stream .piecestore.v1.GetResponse )" in described.stdout, described.stdout

    k = key()
    put(pb, stub(pb, served), k, b"fetched by grpcurl")
    head = grpcurl("-H", f"authorization: Bearer {TOKEN}", "-d", json.dumps({"key": k}), addr, "piecestore.v1.PieceStore/Head")
    assert head.returncode == 0, head.stderr
    info = json.loads(head.stdout)
    assert info["key"] == k and int(info["size"]) == len(b"fetched by grpcurl")
    refused = grpcurl("-d", json.dumps({"key": k}), addr, "piecestore.v1.PieceStore/Head")
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr, refused.stderr


def scrape(s: Served) -> dict[str, float]:
    """The samples of /metrics whose names start with piecestore_grpc_, by series."""
    import urllib.request

    with urllib.request.urlopen(s.endpoint + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("piecestore_grpc_"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def test_calls_are_counted_by_method_and_code_in_metrics(pb: Any, served: Served) -> None:
    """/metrics counts each gRPC call once it is over: by method and status code (trailers, or
    the headers of an error answered at once; Canceled for a stream the client abandoned),
    its latency to the end of the stream, and the bytes it sent."""
    c = stub(pb, served)
    get = "piecestore.v1.PieceStore/Get"
    head = "piecestore.v1.PieceStore/Head"

    def n(method: str, code: str, at: dict[str, float]) -> float:
        return at.get(f'piecestore_grpc_requests_total{{method="{method}",code="{code}"}}', 0.0)

    before = scrape(served)
    k = key()
    body = bytes(range(256)) * 12000  # 3 MiB: three Get messages
    put(pb, c, k, body, chunk=1 << 20)
    assert b"".join(m.data for m in c.Get(pb.m.GetRequest(key=k), metadata=AUTH, timeout=30)) == body
    with pytest.raises(grpc.RpcError):
        c.Head(pb.m.HeadRequest(key=key()), metadata=AUTH, timeout=30)
    with pytest.raises(grpc.RpcError):
        c.Head(pb.m.HeadRequest(key=k), timeout=30)  # no token
    # A Get abandoned after its first message, of a piece far larger than the flow-control
    # windows that could take it all before the client goes away.
    big = key()
    put(pb, c, big, bytes(range(256)) * (48 << 12), chunk=4 << 20)
    call = c.Get(pb.m.GetRequest(key=big), metadata=AUTH, timeout=30)
    assert len(next(call).data) > 0
    call.cancel()
    deadline = time.time() + 10
    while True:
        after = scrape(served)
        if n(get, "Canceled", after) > n(get, "Canceled", before) or time.time() > deadline:
            break
        time.sleep(0.05)

    assert n(get, "OK", after) - n(get, "OK", before) == 1
    assert n(get, "Canceled", after) - n(get, "Canceled", before) == 1
    assert n(head, "NotFound", after) - n(head, "NotFound", before) == 1
    assert n(head, "Unauthenticated", after) - n(head, "Unauthenticated", before) == 1
    assert n("piecestore.v1.PieceStore/Put", "OK", after) - n("piecestore.v1.PieceStore/Put", "OK", before) == 2
    sent = f'piecestore_grpc_response_bytes_total{{method="{get}"}}'
    # The whole piece once (plus framing), and at least the first message of the abandoned one.
    assert after[sent] - before.get(sent, 0.0) >= len(body) + (1 << 20)
    count = f'piecestore_grpc_request_duration_seconds_count{{method="{get}"}}'
    assert after[count] - before.get(count, 0.0) == 2


def test_this_package_uses_a_served_bucket_over_grpc(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `grpc://` store: this package's PieceStore whose backend is the served bucket, reached
    over the gRPC API (the token from PIECESTORE_GRPC_TOKEN); the server packs and checks
    checksums, the store checks them again."""
    import piecestore

    host = target(served)
    monkeypatch.setenv("PIECESTORE_GRPC_TOKEN", TOKEN)
    prefix = f"py{uuid.uuid4().int % 10**9}"
    with piecestore.PieceStore(f"grpc://{host}/pieces/{prefix}") as store:
        body = bytes(range(256)) * 5000  # 1.2 MiB: two Put messages, two Get messages
        store.put("5_s0", body)
        store.put("5_s1", b"small")
        assert store.get("5_s0") == body
        assert store.get_range("5_s0", 1000, 300) == body[1000:1300]
        assert store.head("5_s0").size == len(body) and store.head("5_s0").crc32c is not None
        assert sorted(p.key for p in store.list("5_")) == ["5_s0", "5_s1"]
        store.put("5_s1", b"small")  # the same bytes again: fine
        with pytest.raises(piecestore.PieceExists):
            store.put("5_s1", b"other bytes")
        store.delete("5_s1")
        assert not store.exists("5_s1")
        with pytest.raises(piecestore.PieceNotFound):
            store.get("5_s1")
    # A wrong token: refused (as the store opens), and not repeated in the error.
    monkeypatch.setenv("PIECESTORE_GRPC_TOKEN", "a-wrong-token-of-enough-length")
    with pytest.raises(piecestore.Unauthorized) as e:
        with piecestore.PieceStore(f"grpc://{host}/pieces/{prefix}") as store:
            store.get("5_s0")
    assert "a-wrong-token" not in str(e.value)


def _ca_and_leaf() -> tuple[bytes, bytes, bytes]:
    """A test CA, and a certificate for 127.0.0.1 it signed with that certificate's key: (CA
    PEM, leaf chain PEM, leaf key PEM). rustls wants a real chain: a self-signed certificate
    that is its own CA is refused as a server's."""
    import datetime
    import ipaddress

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "piecestore test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return (
        ca.public_bytes(pem),
        leaf.public_bytes(pem) + ca.public_bytes(pem),
        leaf_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def test_a_grpcs_store_trusts_the_ca_in_ssl_cert_file_and_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`grpcs://`: this package's store over the gRPC API with TLS, the server's certificate
    signed by a private CA named in SSL_CERT_FILE; with another CA there, nothing is sent."""
    import piecestore

    ca, chain, leaf_key = _ca_and_leaf()
    (tmp_path / "ca.pem").write_bytes(ca)
    (tmp_path / "chain.pem").write_bytes(chain)
    (tmp_path / "key.pem").write_bytes(leaf_key)
    s = start(
        tmp_path / "srv",
        f'TLSCert = "{tmp_path}/chain.pem"\nTLSKey = "{tmp_path}/key.pem"\nTokens = ["{TOKEN}"]',
    )
    try:
        monkeypatch.setenv("PIECESTORE_GRPC_TOKEN", TOKEN)
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        url = f"grpcs://{target(s)}/pieces"
        with piecestore.PieceStore(url) as store:
            store.put("7_s0", b"over grpcs")
            assert store.get("7_s0") == b"over grpcs"
            assert [p.key for p in store.list("7_")] == ["7_s0"]
        other_ca, _, _ = _ca_and_leaf()
        (tmp_path / "other.pem").write_bytes(other_ca)
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "other.pem"))
        with pytest.raises(piecestore.PieceStoreError) as e:
            with piecestore.PieceStore(url) as store:
                store.get("7_s0")
        assert TOKEN not in str(e.value)
    finally:
        stop(s)
