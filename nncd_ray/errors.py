"""One exception hierarchy for the whole project.

Every error a user can cause derives from :class:`NNCDError`; the CLI turns these into one line on
stderr and exit code 2. Each class also mixes in the closest built-in so that callers who catch
``ValueError`` or ``FileNotFoundError`` keep working.
"""

from __future__ import annotations


class NNCDError(Exception):
    """Base class of every error nncd_ray raises on purpose."""


class InputError(NNCDError, ValueError):
    """The documents given cannot be used (empty, invalid UTF-8, duplicate ids, missing fields)."""


class DatasetNotFound(InputError, FileNotFoundError):
    """A dataset path or name does not exist."""


class ConfigError(NNCDError, ValueError):
    """An option or combination of options is invalid."""


class UnknownCompressor(ConfigError, KeyError):
    """A compressor name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelNotFound(NNCDError, FileNotFoundError):
    """A model path that does not exist, or a hub id that cannot be loaded offline."""


class DocumentTooLong(InputError):
    """A document exceeds the context and the truncation policy says to refuse it."""


class InvalidCodeLengths(NNCDError, ValueError):
    """A scorer returned code lengths that cannot be right (NaN, infinite or negative bits); the
    tile is not stored."""


class StoreError(NNCDError, OSError):
    """A matrix store cannot be opened, read or written."""


class StoreNotFound(StoreError, FileNotFoundError):
    """No matrix store at the given location."""


class StoreMismatch(StoreError):
    """An existing store was computed with another configuration; resuming it is refused."""


class StoreLocked(StoreError):
    """Another live driver holds the store's lease."""


class IncompleteMatrix(StoreError):
    """The matrix has tiles that are not computed yet."""


class CorruptTile(StoreError):
    """A tile marked done whose data cannot be decoded (checksum, codec) or holds impossible code
    lengths (NaN, infinite, negative). ``nncd status --verify`` lists every such tile; running the
    same ``nncd matrix`` command again recomputes them."""


class StoreAccessDenied(StoreError, PermissionError):
    """The storage service refused access to the store (HTTP 403, missing permission)."""


class StoreCredentialsMissing(StoreAccessDenied):
    """No credentials were found for a remote store."""


class StoreUnreachable(StoreError, ConnectionError):
    """The storage endpoint of a remote store cannot be reached."""


class ClusterError(NNCDError, RuntimeError):
    """The Ray cluster cannot provide what the job asks for."""


class TileFailed(NNCDError, RuntimeError):
    """One or more tiles failed after every allowed attempt."""


class CodecError(NNCDError, ValueError):
    """A compressed file is truncated, corrupted, or was made with another model."""


class ServiceError(NNCDError, RuntimeError):
    """An ``nncd serve`` service refused a request (``status`` holds the HTTP status), or could
    not be reached (``status`` is None)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
