"""The exceptions of PieceStore. Every one is a :class:`PieceStoreError`.

Each carries ``code`` (a stable name such as ``"PIECE_NOT_FOUND"``), ``key`` and ``backend``
(``None`` when they do not apply; a backend is its endpoint without credentials) and
``retryable`` (whether the same call may succeed later). Messages never contain a secret.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
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
]


class PieceStoreError(Exception):
    """Base class of every PieceStore error."""

    code: str = "PIECESTORE"
    key: Optional[str] = None
    backend: Optional[str] = None
    retryable: bool = False

    def __str__(self) -> str:  # KeyError would quote the message; we want it as written.
        return str(self.args[0]) if self.args else self.code


class PieceNotFound(PieceStoreError, KeyError):
    """No piece under that key (also a :class:`KeyError`)."""

    code = "PIECE_NOT_FOUND"


class PieceExists(PieceStoreError):
    """A piece with different bytes already exists under that key (pass ``overwrite=True``)."""

    code = "PIECE_EXISTS"


class InvalidKey(PieceStoreError, ValueError):
    """The key breaks a key rule (also a :class:`ValueError`)."""

    code = "INVALID_KEY"


class InvalidRange(PieceStoreError, ValueError):
    """The range lies (partly) outside the piece (also a :class:`ValueError`)."""

    code = "INVALID_RANGE"


class CorruptPiece(PieceStoreError):
    """The stored bytes do not match their checksum; they are never returned."""

    code = "CORRUPT_PIECE"


class ConfigError(PieceStoreError, ValueError):
    """The configuration is invalid (a bad URL, option or config file)."""

    code = "CONFIG"


class BucketNotFound(ConfigError):
    """The bucket the store names does not exist, and ``create_bucket`` is off (the default
    outside the original's config layout). A :class:`ConfigError` too; ``backend`` names the
    endpoint."""

    code = "BUCKET_NOT_FOUND"


class BackendError(PieceStoreError, OSError):
    """The backend failed; ``retryable`` says whether trying again later may help."""

    code = "BACKEND"


class Unauthorized(BackendError, PermissionError):
    """The backend refused the credentials."""

    code = "UNAUTHORIZED"


class StoreClosed(PieceStoreError, ValueError):
    """The store was closed (like I/O on a closed file, also a :class:`ValueError`)."""

    code = "CLOSED"
