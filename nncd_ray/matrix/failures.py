"""Which tile failures are worth retrying, and when a job should stop instead of going on.

A tile attempt can fail for two kinds of reasons:

- **deterministic** ones, which fail the same way on every attempt: the input (a document longer
  than the context under ``--truncation error``, invalid text), the settings, the model files,
  access rights (permission denied, a read-only or full file system) and memory (an out-of-memory
  error that the scorer's own batch halving could not avoid). Retrying them only repeats the
  failure, so the tile is given up on after its first attempt;
- **transient** ones, which may not happen again: an actor or node that died, a network error,
  anything not known to be deterministic. They keep the bounded retries (``max_attempts``).

And a job stops early, instead of walking every remaining tile, when :data:`STOP_AFTER` tiles in a
row (no tile succeeding in between) have failed deterministically with the same kind of error: a
job whose first tiles all fail the same way ends with one message. Transient failures never stop a
job: a tile that keeps failing for an unknown reason (one poisoned document, say) is given up on
after its attempts while every other tile is still computed.

The classification runs where the exception was raised (in the actor, where its ``__cause__``
chain is intact; Ray pickles only the exception itself), and travels to the driver as a
:class:`TileAttemptFailed`.
"""

from __future__ import annotations

import errno
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nncd_ray.errors import CodecError, ConfigError, InputError, ModelNotFound, StoreMismatch

if TYPE_CHECKING:
    from nncd_ray.matrix.tile_ledger import TileLedger
    from nncd_ray.matrix.tiling import Tile

log = logging.getLogger(__name__)

# tiles failing deterministically in a row, with the same kind of error, after which the job stops
STOP_AFTER = 3
# errors about the input, the settings and the model files: the same on every attempt
_DETERMINISTIC_TYPES: tuple[type[BaseException], ...] = (
    InputError,
    ConfigError,
    ModelNotFound,
    StoreMismatch,
    CodecError,
    PermissionError,
    MemoryError,
)
# OSError numbers that retrying within seconds cannot fix
_DETERMINISTIC_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}
)
# exception class names (not imported: torch loads only with the LM) of out-of-memory errors;
# torch.OutOfMemoryError (torch.cuda.OutOfMemoryError) derives from RuntimeError
_OOM_NAMES = frozenset({"OutOfMemoryError"})


@dataclass(frozen=True)
class Failure:
    """One failed attempt, as the driver sees it."""

    # the exception's class name ("DocumentTooLong", "ActorDiedError"): what "the same way" means
    kind: str
    # "Kind: first line of the message", at most 500 characters
    message: str
    deterministic: bool


def one_line(exc: BaseException) -> str:
    """``"Kind: first line"`` of an exception, at most 500 characters."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes/contexts, outermost first, without cycles."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not other for other in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_deterministic(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) fails the same way on every retry."""
    for link in _chain(exc):
        if isinstance(link, _DETERMINISTIC_TYPES):
            return True
        if isinstance(link, OSError) and link.errno in _DETERMINISTIC_ERRNOS:
            return True
        if any(cls.__name__ in _OOM_NAMES for cls in type(link).__mro__):
            return True
    return False


def classify(exc: BaseException) -> Failure:
    """The :class:`Failure` of an exception raised by a tile attempt (in this process)."""
    if isinstance(exc, TileAttemptFailed):
        return exc.failure
    return Failure(
        kind=type(exc).__name__, message=one_line(exc), deterministic=is_deterministic(exc)
    )


class TileAttemptFailed(RuntimeError):
    """A tile attempt's failure, classified where it happened; raised by the scorer actor so that
    the driver learns the classification (the original exception's cause chain does not survive
    Ray's pickling)."""

    def __init__(self, kind: str, message: str, deterministic: bool) -> None:
        super().__init__(kind, message, deterministic)
        self.failure = Failure(kind=kind, message=message, deterministic=deterministic)

    def __str__(self) -> str:
        return self.failure.message

    @classmethod
    def wrap(cls, exc: BaseException) -> TileAttemptFailed:
        failure = classify(exc)
        return cls(failure.kind, failure.message, failure.deterministic)


@dataclass
class RetryPolicy:
    """Attempts per tile and the stop rule of one job run (driver side; see the module doc).

    After each failed attempt call :meth:`on_failure` (it records the attempt in the job's ledger
    and says whether to try the tile again), after each stored tile :meth:`on_success`, and
    before handing out another tile look at :attr:`stopped`.
    """

    max_attempts: int
    stop_after: int = STOP_AFTER
    attempts: Counter[str] = field(default_factory=Counter)
    # tiles failed deterministically since the last success, in order: (key, failure)
    streak: list[tuple[str, Failure]] = field(default_factory=list)
    # every tile given up on in this run: key -> failure
    given_up: dict[str, Failure] = field(default_factory=dict)
    # tiles left uncomputed because the job stopped (set by the executor that stopped)
    not_attempted: int = 0
    # kinds of deterministic failure already logged (the first of each kind is a warning)
    _logged: set[str] = field(default_factory=set)

    def on_failure(self, tile: Tile, failure: Failure, ledger: TileLedger) -> bool:
        """Record a failed attempt of ``tile`` in ``ledger``; True when it should be tried again."""
        key = tile.key
        self.attempts[key] += 1
        attempt = self.attempts[key]
        if failure.deterministic:
            ledger.attempts_failed += 1
            level = logging.DEBUG if failure.kind in self._logged else logging.WARNING
            self._logged.add(failure.kind)
            log.log(
                level,
                "tile %s failed: %s (not retried: it fails the same way every time)",
                key,
                failure.message,
            )
        else:
            ledger.attempt_failed(tile, failure.message, attempt)
            if attempt < self.max_attempts:
                return True
        self.given_up[key] = failure
        if failure.deterministic:
            self.streak.append((key, failure))
        ledger.tile_failed(tile, failure.message)
        return False

    def on_success(self, tile: Tile) -> None:
        self.streak.clear()
        self.given_up.pop(tile.key, None)

    @property
    def stopped(self) -> tuple[str, Failure] | None:
        """(first tile key, failure) when the job must stop: the last :attr:`stop_after` tiles
        that failed deterministically, with no success in between, all failed with the same kind
        of error; None while it goes on."""
        if len(self.streak) < self.stop_after:
            return None
        recent = self.streak[-self.stop_after :]
        if len({failure.kind for _, failure in recent}) == 1:
            return recent[0]
        return None

    @property
    def deterministic_failures(self) -> dict[str, Failure]:
        """Tiles given up on after a deterministic failure: key -> failure."""
        return {key: f for key, f in self.given_up.items() if f.deterministic}


__all__ = [
    "STOP_AFTER",
    "Failure",
    "RetryPolicy",
    "TileAttemptFailed",
    "classify",
    "is_deterministic",
    "one_line",
]
