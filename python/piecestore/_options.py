"""The keyword options of ``PieceStore(...)`` and ``PieceStore.from_config(...)``, documented.

The names are the core's (``piecestore.OPTION_NAMES``, in their ``config.toml`` spelling); any
spelling that differs only in case, ``_`` or ``-`` is the same option (``MaxRetries``,
``max_retries``, ``max-retries``). The reference is docs/config.md ("Options by name").
"""

from __future__ import annotations

import re
import textwrap
from typing import Dict, Tuple

__all__ = ["OPTION_DOCS", "snake_case", "constructor_doc"]

# name -> (what it takes, what it does). One entry per name of ``piecestore.OPTION_NAMES``, in
# the same order (python/tests/test_docs.py checks both).
OPTION_DOCS: Dict[str, Tuple[str, str]] = {
    # [PieceStore] and [PieceStore.Sharding]
    "Shards": (
        "int",
        "number of shards (default 0: one store); above 1 the URL must hold ``%d`` exactly once, "
        "replaced by 0 .. N-1",
    ),
    "Placement": (
        "str",
        '``"fnv-mod"`` (the original Go piecestore\'s, the default) or ``"jump"`` (jump '
        "consistent hash: growing N to N+1 moves about 1/(N+1) of the pieces)",
    ),
    # [PieceStore.Store]
    "Storage": (
        "str",
        '``"s3"``, ``"minio"``, ``"oss"``, ``"b2"``, ``"file"``, ``"memory"`` or ``"grpc"`` (default: from '
        "the URL); also decides which credential variables of the environment are read",
    ),
    "BucketURL": (
        "str",
        "the bucket URL (see docs/config.md, Bucket URLs); the ``BUCKET_URL`` environment "
        "variable replaces it",
    ),
    "AccessKey": ("str, secret", "access key id (default: from the environment)"),
    "SecretKey": ("str, secret", "secret access key"),
    "SessionToken": ("str, secret", "session token of temporary (STS) credentials"),
    "NoSignRequest": ("bool", "send unsigned requests (public buckets); default False"),
    "MaxRetries": (
        "int",
        "retries of a failed request (5xx, throttling, timeouts, connection errors; never 4xx); "
        "default 5, and ``max_retries=0`` by name means no retries",
    ),
    "MinRetryDelay": (
        "duration",
        "first retry delay (default 100ms); later delays grow with jitter up to "
        "``max_retry_delay``",
    ),
    "TLSInsecureSkipVerify": (
        "bool",
        "accept any TLS certificate (testing only); default False",
    ),
    "IAMType": (
        "str",
        '``"AKSK"`` (keys must be given) or ``"SA"`` (the default: keys if given, else web '
        "identity, else the instance's IAM role)",
    ),
    # [PieceStore.Backend]
    "Region": ("str", "signing region (default: from the URL, else the environment)"),
    "Endpoint": (
        "str",
        "endpoint of ``s3://``, ``oss://`` and ``b2://`` URLs (default: ``AWS_ENDPOINT_URL``)",
    ),
    "MaxRetryDelay": ("duration", "longest delay between retries (default 10s)"),
    "RetryTimeout": ("duration", "stop retrying a request after this long (default 60s)"),
    "RequestTimeout": ("duration", "timeout of one HTTP request (default 60s)"),
    "ConnectTimeout": ("duration", "timeout of one connect (default 5s)"),
    "GetTimeout": (
        "duration",
        "deadline of one whole read (get, head, exists), retries included (default 0s: none)",
    ),
    "PutTimeout": (
        "duration",
        "deadline of one whole put, retries included; a timed-out put may still have stored "
        "its bytes, and putting the same bytes again succeeds (default 0s: none)",
    ),
    "DeleteTimeout": (
        "duration",
        "deadline of one whole delete, retries included (default 0s: none)",
    ),
    "ListTimeout": (
        "duration",
        "longest wait for the next page of a listing, retries included (default 0s: none)",
    ),
    "ConditionalWrites": (
        "str or bool",
        '``"auto"`` (the default: probe once whether the backend honours ``If-None-Match``), '
        '``"on"`` (always conditional) or ``"off"`` (a HEAD before each PUT)',
    ),
    "Fsync": (
        "bool",
        "file backend: fsync each piece and its directory before ``put`` returns (default True)",
    ),
    "CheckBucket": (
        "bool",
        "list one page of each shard's bucket at open, so bad credentials or an unreachable "
        "endpoint fail at once (default True)",
    ),
    "UnsignedPayload": (
        "bool",
        "sign S3 requests without hashing their bodies (saves a SHA-256 pass per put; the "
        "piece's CRC32C still protects it); default False",
    ),
    "AllowUnverified": (
        "bool",
        "return pieces that carry no checksum as stored instead of raising ``CorruptPiece`` "
        "(default True in the original's layout, else False)",
    ),
    "Layout": (
        "str",
        '``"piecestore"`` (PieceStore\'s own) or ``"original"`` (byte for byte the original Go '
        "piecestore's; the default for a config with only the original's tables)",
    ),
    "CreateBucket": (
        "bool",
        "with ``check_bucket``: create a shard's missing bucket at open (default: only for a "
        "config in the original's layout; otherwise a missing bucket raises ``BucketNotFound``)",
    ),
    "Metrics": (
        "bool",
        "keep operation metrics (``metrics()``, ``metrics_summary()``); default True",
    ),
    # [PieceStore.Pack]
    "Pack": (
        "bool",
        "pack small pieces (default: on for directories and buckets, off for ``memory://``); "
        "a store that holds packs refuses ``pack=False``",
    ),
    "PackThreshold": (
        "size",
        "pieces smaller than this are packed (default 1MiB, at most 64MiB)",
    ),
    "PackTargetSize": (
        "size",
        "a pack is closed once it holds this many bytes (default 64MiB)",
    ),
    "PackMaxAge": (
        "duration",
        "accepted for configs of earlier versions; has no effect (puts never wait for a timer)",
    ),
    "GcGarbageRatio": (
        "float",
        "gc rewrites a pack once at least this share of it is garbage (default 0.5)",
    ),
    "GcGrace": (
        "duration",
        "a pack gc compacted is deleted this long after its pieces moved (default 1h)",
    ),
    "GcInterval": (
        "duration",
        "run gc in the background this often while the store is open (default: never; run "
        "``piecestore gc``)",
    ),
    "IndexDir": (
        "str or path",
        "where a bucket store keeps its pack index, one SQLite file per shard (default: the "
        "user's cache directory); a directory store keeps it inside the directory",
    ),
    # [PieceStore.Index]
    "IndexUrl": (
        "str, secret",
        "a PostgreSQL URL (``postgres://user:password@host/db``): one pack index shared by "
        "several hosts (default: ``PIECESTORE_INDEX_URL``, else a local SQLite index)",
    ),
    # [PieceStore.Cache]
    "CacheMemory": (
        "size",
        "the data cache's memory tier in bytes; 0 turns it off (default 256MiB in front of "
        "buckets, off for directories and ``memory://``)",
    ),
    "CacheDisk": (
        "str or path",
        "the data cache's disk tier: a directory that survives restarts (default: none)",
    ),
    "CacheDiskSize": ("size", "the disk tier's size (default 10GiB)"),
    "CacheAdmit": (
        "str",
        "what the cache takes in: ``\"reads\"`` (default) or ``\"reads-and-writes\"`` "
        "(a piece just put is read from the cache)",
    ),
    "CacheMaxPiece": ("size", "pieces larger than this are not cached (default 4MiB)"),
}


def snake_case(name: str) -> str:
    """``MaxRetries`` -> ``max_retries``, ``TLSInsecureSkipVerify`` -> ``tls_insecure_skip_verify``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


_INTRO = """\
A store of immutable pieces over memory, a local disk or S3-compatible buckets.

PieceStore(store, /, **options) opens ``store``: a URL (``memory://``, ``file:///path``,
``s3://bucket``, ``http://127.0.0.1:9000/bucket-%d?shards=4``), a path (a directory, or a
``.toml`` config file), or a dict laid out like ``config.toml``'s ``[PieceStore]`` table.
``PieceStore.from_config(path, **options)`` opens the store a ``config.toml`` describes.
Keyword options override what ``store`` says; then the environment applies (credentials,
region, ``BUCKET_URL``), as everywhere in PieceStore. Use the store as a context manager
(``with`` / ``async with``) or call ``close()``.

Options (snake_case, or the config.toml spelling in parentheses; ``None`` leaves an option
unset). A duration is seconds (``2.5``), a ``datetime.timedelta`` or text (``"200ms"``,
``"1h"``); a size is bytes or text (``"512KiB"``, ``"64MiB"``). An unknown name, or a value
the option cannot take, raises ``ConfigError`` (a value of a type no option takes, such as a
list, ``TypeError``). Full reference: docs/config.md.
"""


def constructor_doc(names: "list[str]") -> str:
    """The class docstring of ``PieceStore``: the constructor and every option in ``names``."""
    lines = [_INTRO]
    for name in names:
        takes, meaning = OPTION_DOCS.get(name, ("", "see docs/config.md"))
        head = f"{snake_case(name)} ({name})" + (f": {takes}" if takes else "")
        body = textwrap.fill(
            meaning + ".", width=92, initial_indent=" " * 8, subsequent_indent=" " * 8
        )
        lines.append(f"    {head}\n{body}")
    return "\n".join(lines) + "\n"
