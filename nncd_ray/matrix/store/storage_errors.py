"""Storage failures as the project's errors: one line that says what to do, never a traceback.

fsspec, s3fs, botocore and aiohttp each raise their own exceptions for the same few situations (no
credentials, a missing bucket, an unreachable endpoint, access denied). :func:`store_errors` maps
them onto :class:`~nncd_ray.errors.StoreError` subclasses with a hint, so that the CLI prints one
line and exits 2. Classes are recognised by name, so that botocore stays an optional dependency.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from nncd_ray.errors import (
    NNCDError,
    StoreAccessDenied,
    StoreCredentialsMissing,
    StoreError,
    StoreNotFound,
    StoreUnreachable,
)

P = ParamSpec("P")
R = TypeVar("R")

CREDENTIAL_ERRORS = frozenset(
    {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}
)
UNREACHABLE_ERRORS = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ClientConnectorError",
        "ServerTimeoutError",
        "ServerDisconnectedError",
        "gaierror",
    }
)
MISSING_BUCKET_MARKERS = ("NoSuchBucket", "bucket does not exist")


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes (s3fs re-raises botocore's error as an ``OSError`` ``from`` it)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _short(exc: BaseException) -> str:
    """``Kind: message`` on one line, at most ~200 characters: what the library said."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def map_store_error(exc: BaseException, url: str) -> StoreError | None:
    """The :class:`StoreError` that ``exc`` (raised while using the store at ``url``) stands for,
    or ``None`` when it is no storage failure."""
    if isinstance(exc, NNCDError):
        return None
    remote = "://" in url and not url.startswith("file://")
    chain = list(_chain(exc))
    names = set().union(*(_names(e) for e in chain))
    if isinstance(exc, ImportError):
        return StoreError(
            f"cannot open {url}: {_short(exc)} (for s3:// install the extra: "
            "pip install 'nncd_ray[s3]')"
        )
    if names & CREDENTIAL_ERRORS:
        return StoreCredentialsMissing(
            f"no credentials for {url} ({_short(exc)}): set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass --storage-option key=… "
            "--storage-option secret=…; for a public bucket, --storage-option anon=true"
        )
    if names & UNREACHABLE_ERRORS or any(
        isinstance(e, ConnectionError | TimeoutError | socket.gaierror) for e in chain
    ):
        return StoreUnreachable(
            f"cannot reach the storage of {url} ({_short(exc)}): check --storage-option "
            "endpoint_url=… and the network"
        )
    if any(isinstance(e, PermissionError) for e in chain):
        where = (
            "that the credentials may list, read, write and delete objects in the bucket"
            if remote
            else "the permissions of the folder and its parent"
        )
        return StoreAccessDenied(f"access to {url} was denied ({_short(exc)}): check {where}")
    if any(marker in str(e) for e in chain for marker in MISSING_BUCKET_MARKERS):
        return StoreNotFound(
            f"the bucket of {url} does not exist ({_short(exc)}): create it or check the URL "
            "and --storage-option endpoint_url"
        )
    if isinstance(exc, FileNotFoundError):
        return StoreNotFound(
            f"no matrix store at {url} ({_short(exc)}); compute one with `nncd matrix` or check "
            "the path"
        )
    if isinstance(exc, OSError):
        return StoreError(f"cannot access the store {url}: {_short(exc)}")
    return None


@contextmanager
def store_errors(url: str) -> Iterator[None]:
    """Re-raise storage failures inside the block as :class:`StoreError` subclasses (one line with
    a hint); everything else, the project's own errors included, passes unchanged."""
    try:
        yield
    except Exception as exc:
        mapped = map_store_error(exc, url)
        if mapped is None:
            raise
        raise mapped from exc


def maps_store_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Decorator: :func:`store_errors` around a method of an object with a ``url`` attribute, or
    a classmethod whose first argument is the URL."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        url: Any = getattr(args[0], "url", None) if args else None
        if not isinstance(url, str):
            url = args[1] if len(args) > 1 and isinstance(args[1], str) else kwargs.get("url")
        with store_errors(str(url or "the store")):
            return method(*args, **kwargs)

    return wrapper
