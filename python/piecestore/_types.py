"""Plain value types returned by :class:`piecestore.PieceStore`."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Dict, List, Optional, TypedDict

__all__ = [
    "PieceInfo",
    "DeleteSummary",
    "OpMetrics",
    "GcReport",
    "DoomedSummary",
    "FsckReport",
    "FsckProblem",
]


@dataclass(frozen=True)
class PieceInfo:
    """A piece's metadata, as ``head`` and ``list`` return it."""

    key: str
    """The piece key."""
    size: int
    """Size of the piece in bytes."""
    crc32c: Optional[int]
    """CRC32C of the piece; ``None`` from ``head`` means the piece was stored without one (it is
    read as-is). Listings of S3 and memory stores carry no metadata, so ``list`` gives ``None``
    there too: ask ``head`` for the checksum."""
    last_modified: _dt.datetime
    """When the piece was written (UTC)."""

    @property
    def verified(self) -> bool:
        """Whether reads of this piece are checked against a checksum (as ``head`` reports)."""
        return self.crc32c is not None


@dataclass(frozen=True)
class DeleteSummary:
    """What ``delete_prefix`` removed."""

    pieces: int
    """Pieces deleted."""
    bytes: int
    """Their total size."""


class OpMetrics(TypedDict):
    """One (shard, operation) entry of ``PieceStore.metrics_summary()``."""

    backend: str
    """The shard's backend kind: ``memory``, ``file`` or ``s3``."""
    shard: int
    """The shard index."""
    op: str
    """The operation: ``put``, ``get``, ``get_range``, ``head``, ``delete`` or ``list``."""
    count: int
    """Operations finished, failed ones included."""
    bytes: int
    """Bytes stored (put) or returned (get, get_range) by successful operations."""
    errors: Dict[str, int]
    """Failed operations by error code (``PIECE_NOT_FOUND``, ...); codes without failures left
    out."""
    latency_sum_s: float
    """Total time the operations took, in seconds."""
    p50_s: Optional[float]
    """Median latency in seconds: the upper bound of its histogram bucket (powers of two from
    1 µs); ``None`` without samples, ``inf`` past the last bucket (~67 s)."""
    p99_s: Optional[float]
    """99th percentile latency in seconds, estimated as ``p50_s``."""


def _piece_info(key: str, size: int, crc32c: Optional[int], ts: float) -> PieceInfo:
    return PieceInfo(key, size, crc32c, _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc))


class DoomedSummary(TypedDict):
    """The compacted packs that wait for their grace period (``GcReport["doomed"]``)."""

    packs: int
    """How many."""
    bytes: int
    """Their bytes: the storage that deleting them frees."""
    first_due_ms: Optional[int]
    """When the first may be deleted (Unix milliseconds); ``None`` when none waits."""
    last_due_ms: Optional[int]
    """When the last may be deleted (Unix milliseconds); ``None`` when none waits."""
    grace_ms: int
    """The grace period these times were computed with, in milliseconds."""


class GcReport(TypedDict):
    """What ``PieceStore.gc()`` did, summed over shards (the fields of ``piecestore gc --json``)."""

    packs_before: int
    """Packs before."""
    packs_after: int
    """Packs after (live and doomed)."""
    packs_compacted: int
    """Packs whose live pieces were copied out."""
    packs_written: int
    """New packs written."""
    packs_deleted: int
    """Compacted packs deleted (grace over)."""
    packs_doomed: int
    """Compacted packs still waiting for their grace period."""
    pieces_moved: int
    """Pieces copied into new packs."""
    bytes_moved: int
    """Their bytes."""
    bytes_reclaimed: int
    """Storage freed by deleting packs."""
    tombstones_dropped: int
    """Tombstones no pack needs any more, dropped."""
    packs_damaged: int
    """Packs left alone because they are damaged (``fsck`` names them)."""
    doomed: DoomedSummary
    """The compacted packs left after this run."""


class FsckProblem(TypedDict):
    """One thing ``PieceStore.fsck()`` found wrong."""

    shard: int
    """The shard."""
    pack: Optional[str]
    """The pack object, when the problem is in or about a pack."""
    key: Optional[str]
    """The piece key, when one piece is concerned."""
    what: str
    """What is wrong."""


class FsckReport(TypedDict):
    """What ``PieceStore.fsck()`` found, summed over shards (``piecestore fsck --json``)."""

    packs: int
    """Pack objects read."""
    bytes: int
    """Their bytes."""
    records: int
    """Records (pieces and tombstones) verified."""
    entries: int
    """Index entries checked."""
    packed_pieces: int
    """Packed pieces checked against their packs' records."""
    objects: int
    """Pieces stored as objects of their own, read whole and verified."""
    object_bytes: int
    """Their bytes."""
    objects_unverified: int
    """Of those, pieces with no checksum anywhere: read, but not verifiable."""
    problems: List[FsckProblem]
    """What is wrong (after the rebuild, when one ran); empty when the store is clean."""
    problems_before_rebuild: Optional[List[FsckProblem]]
    """Problems found before the rebuild, when one ran."""
    rebuilt_pieces: Optional[int]
    """Pieces indexed by the rebuild, when one ran."""


class MigrateFailure(TypedDict):
    """One piece ``PieceStore.migrate_to()`` could not copy."""

    key: str
    """The piece key."""
    code: str
    """The error's stable code (``PIECE_NOT_FOUND``, ``CORRUPT_PIECE``, ...)."""
    message: str
    """What went wrong."""


class MigrateReport(TypedDict):
    """What ``PieceStore.migrate_to()`` did."""

    total_pieces: int
    """Pieces in the source."""
    total_bytes: int
    """Their bytes."""
    done_pieces: int
    """Pieces handled (copied, skipped or failed)."""
    done_bytes: int
    """Their bytes."""
    copied: int
    """Pieces copied (or, in a dry run, that would be)."""
    copied_bytes: int
    """Bytes copied (or that would be)."""
    skipped: int
    """Pieces already at the destination with the same size and checksum."""
    failed: int
    """Pieces that failed."""
    failures: List[MigrateFailure]
    """Each failed piece."""
