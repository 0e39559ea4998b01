"""Type stubs of the native module (``bindings/python``); import from ``piecestore``."""

import builtins
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, Awaitable, Literal, Optional, Tuple, TypeVar, Union

from ._types import DeleteSummary, FsckReport, GcReport, MigrateReport, OpMetrics, PieceInfo

if sys.version_info >= (3, 12):
    from collections.abc import Buffer as _BytesLike
else:
    _BytesLike = Union[bytes, bytearray, memoryview, "Buffer"]

_Self = TypeVar("_Self", bound="PieceStore")
_OptionValue = Union[bool, int, float, str, timedelta, os.PathLike[str], None]

__version__: str
MAX_KEY_LEN: int
OPTION_NAMES: list[str]
# option name -> what its value is: bool, number, duration, size, text, choice or
# conditional-writes (the core's table, which every binding checks values by)
OPTION_KINDS: dict[str, str]

class Buffer:
    """A piece's bytes, shared with the store without a copy (read-only buffer protocol)."""

    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes: ...
    def to_bytes(self) -> bytes:
        """A ``bytes`` copy."""
    def __eq__(self, other: object) -> bool: ...

class ListIterator(Iterator[PieceInfo], AsyncIterator[PieceInfo]):
    """The pieces of ``PieceStore.list``: iterate with ``for`` or ``async for``."""

    def __iter__(self) -> "ListIterator": ...
    def __next__(self) -> PieceInfo: ...
    def __aiter__(self) -> "ListIterator": ...
    def __anext__(self) -> Awaitable[PieceInfo]: ...

class PieceReader(Iterator[Buffer], AsyncIterator[Buffer]):
    """A piece read as a stream (``PieceStore.get_stream``): ``info``, then its bytes as
    ``Buffer`` chunks of about 1 MiB with ``for`` or ``async for``; ``CorruptPiece`` is raised
    in place of the last chunk when the piece fails its checksum."""

    @property
    def info(self) -> PieceInfo:
        """The piece's key, size and checksum, known before its first byte."""
    def __iter__(self) -> "PieceReader": ...
    def __next__(self) -> Buffer: ...
    def __aiter__(self) -> "PieceReader": ...
    def __anext__(self) -> Awaitable[Buffer]: ...

class PieceStore:
    """A store of immutable pieces over memory, a local disk or S3-compatible buckets."""

    def __init__(
        self,
        store: Union[str, "os.PathLike[str]", Mapping[str, Any]],
        /,
        **options: _OptionValue,
    ) -> None:
        """Opens the store at ``store`` (URL, path, or dict laid out like config.toml).

        Keyword options override it (``shards=4``, ``region="us-east-1"``, ``max_retries=3``,
        ``request_timeout=2.5``, ``pack=False``, ...): any name of ``OPTION_NAMES``, in
        snake_case or its config.toml spelling. ``help(piecestore.PieceStore)`` describes each.
        """
    @classmethod
    def from_config(
        cls, path: Union[str, "os.PathLike[str]"], /, **options: _OptionValue
    ) -> "PieceStore":
        """Opens the store a ``config.toml`` describes; keyword options as for the constructor."""
    def put(self, key: str, data: _BytesLike, /, *, overwrite: bool = False) -> None:
        """Stores a piece; returns once it is durable."""
    def get(self, key: str) -> Buffer:
        """The piece's verified bytes."""
    def get_range(self, key: str, offset: int, length: int) -> Buffer:
        """``length`` bytes from ``offset``."""
    def head(self, key: str) -> PieceInfo:
        """The piece's metadata."""
    def exists(self, key: str) -> bool:
        """Whether a piece exists under ``key``."""
    def delete(self, key: str) -> None:
        """Deletes a piece (a missing piece is fine)."""
    def delete_prefix(self, prefix: str) -> DeleteSummary:
        """Deletes every piece whose key starts with ``prefix``, on every shard."""
    def get_stream(self, key: str) -> PieceReader:
        """The piece as a stream of verified chunks (for large pieces passed on)."""
    def list(self, prefix: str = "") -> ListIterator:
        """The pieces whose keys start with ``prefix``."""
    def put_many(
        self,
        items: Union[Mapping[str, _BytesLike], Iterable[Tuple[str, _BytesLike]]],
        /,
        *,
        overwrite: bool = False,
    ) -> None:
        """Stores many pieces concurrently; raises the first failure."""
    def get_many(self, keys: Iterable[str]) -> builtins.list[Buffer]:
        """Reads many pieces concurrently, in order; raises the first failure."""
    def flush(self) -> None:
        """Writes every shard's open pack now and waits until it is durable (each ``put``
        already waits for its own pack); nothing to do for an unpacked store."""
    def clear_cache(self) -> bool:
        """Empties the pieces cache's tiers (memory, and the disk tier's files); the pieces
        stay in the store. ``False`` when the store has no cache."""
    def gc(
        self,
        *,
        grace: Union[float, timedelta, None] = None,
        garbage_ratio: Optional[float] = None,
        dry_run: bool = False,
        progress: Optional[Callable[[int, int], object]] = None,
    ) -> GcReport:
        """Garbage collection of a packed store (``piecestore gc``), safe while others read and
        write. ``grace`` and ``garbage_ratio`` default to the store's config; ``progress(done,
        total)`` gets the bytes of packs processed, from a thread of the library."""
    def fsck(
        self,
        *,
        rebuild_index: bool = False,
        progress: Optional[Callable[[int, int], object]] = None,
    ) -> FsckReport:
        """Checks every pack and index entry (``piecestore fsck``); problems are in the
        report's ``problems``, not raised. ``rebuild_index`` rebuilds the index from the packs,
        then checks again."""
    def migrate_to(
        self,
        dest: PieceStore,
        *,
        dry_run: bool = False,
        concurrency: int = 16,
        progress: Optional[Callable[[int, int], object]] = None,
    ) -> MigrateReport:
        """Copies every piece into ``dest``, verified, skipping pieces already there with the
        same size and checksum (a rerun resumes). Failed pieces are listed in ``failures``;
        ``progress(done_pieces, total_pieces)`` is called after each piece."""
    def inventory(
        self,
        *,
        max_orphan_samples: int = 20,
        progress: Optional[Callable[[int, int], object]] = None,
    ) -> dict[str, Any]:
        """What the store holds (``piecestore profile``): ``pieces``, ``bytes``, ``sizes``,
        ``shards``, skews, ``orphans`` and ``packs``, the fields of ``profile --json``."""
    def close(self) -> None:
        """Closes the store; later calls raise ``StoreClosed``. A ``memory://`` store's
        pieces are freed at once, not when this object is garbage-collected."""
    @property
    def closed(self) -> bool:
        """Whether the store was closed."""
    @property
    def shard_count(self) -> int:
        """Number of shards."""
    @property
    def shard_labels(self) -> builtins.list[str]:
        """Each shard's backend, without credentials."""
    @property
    def placement(self) -> Literal["fnv-mod", "jump"]:
        """How keys are placed on shards."""
    @property
    def packing(self) -> str:
        """How small pieces are packed: ``off``, or the threshold, pack size, gc settings and
        where the index is kept."""
    def shard_of(self, key: str) -> int:
        """The shard that holds ``key``."""
    def metrics(self) -> str:
        """Operation metrics in the Prometheus text format (a snapshot, no I/O).

        ``piecestore_operations_total``, ``piecestore_operation_errors_total`` (by ``kind``, the
        error code), ``piecestore_operation_bytes_total`` and the histogram
        ``piecestore_operation_duration_seconds``, labelled ``backend``, ``shard`` and ``op``.
        With ``metrics=False`` only the HELP and TYPE lines remain.
        """
    def metrics_summary(self) -> builtins.list[OpMetrics]:
        """The same metrics as one dict per (shard, operation); empty with ``metrics=False``."""
    async def put_async(
        self, key: str, data: _BytesLike, /, *, overwrite: bool = False
    ) -> None: ...
    async def get_async(self, key: str) -> Buffer: ...
    async def get_range_async(self, key: str, offset: int, length: int) -> Buffer: ...
    async def head_async(self, key: str) -> PieceInfo: ...
    async def exists_async(self, key: str) -> bool: ...
    async def delete_async(self, key: str) -> None: ...
    async def delete_prefix_async(self, prefix: str) -> DeleteSummary: ...
    async def put_many_async(
        self,
        items: Union[Mapping[str, _BytesLike], Iterable[Tuple[str, _BytesLike]]],
        /,
        *,
        overwrite: bool = False,
    ) -> None: ...
    async def get_many_async(self, keys: Iterable[str]) -> builtins.list[Buffer]: ...
    async def flush_async(self) -> None: ...
    async def clear_cache_async(self) -> bool: ...
    async def gc_async(
        self,
        *,
        grace: Union[float, timedelta, None] = None,
        garbage_ratio: Optional[float] = None,
        dry_run: bool = False,
        progress: Optional[Callable[[int, int], object]] = None,
    ) -> GcReport: ...
    async def fsck_async(
        self,
        *,
        rebuild_index: bool = False,
        progress: Optional[Callable[[int, int], object]] = None,
    ) -> FsckReport: ...
    async def get_stream_async(self, key: str) -> PieceReader: ...
    async def migrate_to_async(
        self,
        dest: PieceStore,
        *,
        dry_run: bool = False,
        concurrency: int = 16,
        progress: Optional[Callable[[int, int], object]] = None,
    ) -> MigrateReport: ...
    async def inventory_async(
        self,
        *,
        max_orphan_samples: int = 20,
        progress: Optional[Callable[[int, int], object]] = None,
    ) -> dict[str, Any]: ...
    async def close_async(self) -> None: ...
    def __enter__(self: _Self) -> _Self: ...
    def __exit__(self, *args: object) -> Literal[False]: ...
    async def __aenter__(self: _Self) -> _Self: ...
    async def __aexit__(self, *args: object) -> Literal[False]: ...

def configure_runtime(
    *, worker_threads: Optional[int] = None, max_blocking_threads: Optional[int] = None
) -> None:
    """Sizes the shared runtime before its first use."""

def validate_key(key: str) -> None:
    """Raises ``InvalidKey`` when ``key`` breaks a key rule."""

def segment_key(object_id: int, segment: int, *, version: Optional[int] = None) -> str:
    """The key of a Greenfield segment piece."""

def ec_key(
    object_id: int, segment: int, ec_index: int, *, version: Optional[int] = None
) -> str:
    """The key of a Greenfield erasure-coded piece."""

def parse_key(key: str) -> Tuple[int, int, Optional[int], Optional[int]]:
    """``(object_id, segment, ec_index, version)`` of a Greenfield piece key."""

def zero_copy_get() -> bool:
    """Whether ``get`` returns zero-copy buffers in this build."""
