"""PieceStore: immutable piece storage over memory, local disk and S3-compatible object stores.

Open a store from a URL, a path or a config, then put and get pieces::

    import piecestore

    with piecestore.PieceStore("file:///var/lib/pieces") as store:
        store.put("42_s0", b"hello")
        assert store.get("42_s0") == b"hello"

Every blocking method releases the GIL; each has an asyncio twin named ``*_async``
(``await store.get_async(key)``), and ``store.list(prefix)`` works with both ``for`` and
``async for``. ``get`` returns a :class:`Buffer`: the store's bytes without a copy, usable
anywhere a bytes-like object is (``bytes(b)``, ``memoryview(b)``, ``len(b)``, ``f.write(b)``).
``help(piecestore.PieceStore)`` lists every keyword option of the constructor.
``store.metrics()`` gives counts, bytes, errors and latencies per shard and operation as
Prometheus text (``store.metrics_summary()``: as dicts); ``metrics=False`` turns them off.

All of it is the Rust core's behaviour; this package only converts arguments, results and
errors. Errors are :class:`PieceStoreError` subclasses; see :mod:`piecestore._exceptions`.
"""

from __future__ import annotations

from ._exceptions import (
    BackendError,
    BucketNotFound,
    ConfigError,
    CorruptPiece,
    InvalidKey,
    InvalidRange,
    PieceExists,
    PieceNotFound,
    PieceStoreError,
    StoreClosed,
    Unauthorized,
)
from ._native import (
    MAX_KEY_LEN,
    OPTION_KINDS,
    OPTION_NAMES,
    Buffer,
    ListIterator,
    PieceReader,
    PieceStore,
    __version__,
    configure_runtime,
    ec_key,
    parse_key,
    segment_key,
    validate_key,
    zero_copy_get,
)
from ._options import constructor_doc as _constructor_doc
from ._types import (
    DeleteSummary,
    DoomedSummary,
    FsckProblem,
    FsckReport,
    GcReport,
    MigrateFailure,
    MigrateReport,
    OpMetrics,
    PieceInfo,
)

# ``help(piecestore.PieceStore)`` shows the constructor and every option it takes.
PieceStore.__doc__ = _constructor_doc(list(OPTION_NAMES))

__all__ = [
    "PieceStore",
    "Buffer",
    "ListIterator",
    "PieceReader",
    "PieceInfo",
    "DeleteSummary",
    "OpMetrics",
    "GcReport",
    "DoomedSummary",
    "FsckReport",
    "FsckProblem",
    "MigrateReport",
    "MigrateFailure",
    "PieceStoreError",
    "PieceNotFound",
    "PieceExists",
    "InvalidKey",
    "InvalidRange",
    "CorruptPiece",
    "ConfigError",
    "BucketNotFound",
    "BackendError",
    "Unauthorized",
    "StoreClosed",
    "configure_runtime",
    "validate_key",
    "segment_key",
    "ec_key",
    "parse_key",
    "zero_copy_get",
    "MAX_KEY_LEN",
    "OPTION_NAMES",
    "OPTION_KINDS",
    "__version__",
]
