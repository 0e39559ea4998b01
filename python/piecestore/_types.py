"""Plain value types returned by :class:`piecestore.PieceStore`."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Optional

__all__ = ["PieceInfo", "DeleteSummary"]


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


def _piece_info(key: str, size: int, crc32c: Optional[int], ts: float) -> PieceInfo:
    return PieceInfo(key, size, crc32c, _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc))
