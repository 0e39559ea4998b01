"""Plain value types returned by :class:`piecestore.PieceStore`."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Dict, Optional, TypedDict

__all__ = ["PieceInfo", "DeleteSummary", "OpMetrics"]


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
