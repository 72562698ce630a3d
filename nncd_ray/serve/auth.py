"""Bearer-token authentication of the service, as for the project's other Ray use.

The service's token is its own secret, not the Ray cluster's (whoever may classify documents
need not administer the cluster). It is found, on the server and in the client alike, in this
order: ``--token-file PATH``, ``$NNCD_SERVE_TOKEN`` (the token itself), ``$NNCD_SERVE_TOKEN_PATH``
(a file). ``nncd serve`` refuses to start without one unless ``--no-auth`` is given.

Only the token's SHA-256 reaches the cluster (the front end's constructor arguments live in the
Serve controller's state); a request's ``Authorization: Bearer <token>`` is hashed and compared in
constant time. ``GET /health`` needs no token (load balancers and Kubernetes probes call it; it
says only whether the service answers).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from nncd_ray.errors import ConfigError
from nncd_ray.serve.config import MIN_TOKEN_CHARS

TOKEN_ENV = "NNCD_SERVE_TOKEN"
TOKEN_PATH_ENV = "NNCD_SERVE_TOKEN_PATH"
MAKE_TOKEN_HINT = (
    "python -c 'import secrets; print(secrets.token_hex(32))' > token && chmod 600 token"
)


def _read(path: str, source: str) -> str:
    try:
        token = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the service token from {source} ({path}): {exc}") from exc
    if not token:
        raise ConfigError(f"the service token file {path} ({source}) is empty")
    return token


def find_token(token_file: str | None = None) -> tuple[str | None, str]:
    """``(token, where it came from)`` in the order of the module doc; ``(None, "none")``."""
    if token_file:
        return _read(token_file, "--token-file"), f"--token-file {token_file}"
    value = os.environ.get(TOKEN_ENV, "").strip()
    if value:
        return value, f"${TOKEN_ENV}"
    path = os.environ.get(TOKEN_PATH_ENV)
    if path:
        return _read(path, f"${TOKEN_PATH_ENV}"), f"${TOKEN_PATH_ENV} ({path})"
    return None, "none"


def token_digest(token: str) -> str:
    """SHA-256 of the token, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def server_token_digest(token_file: str | None, *, no_auth: bool) -> str | None:
    """The digest the front end checks requests against, or None with ``no_auth``; refuses a
    server without a token, or with one too short to be a secret."""
    if no_auth:
        if token_file:
            raise ConfigError("--no-auth and --token-file contradict each other; give one")
        return None
    token, source = find_token(token_file)
    if token is None:
        raise ConfigError(
            f"the service needs a bearer token: pass --token-file PATH or set ${TOKEN_ENV} "
            f"(make one with: {MAKE_TOKEN_HINT}), or turn authentication off with --no-auth"
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"the token from {source} has {len(token)} characters; use at least "
            f"{MIN_TOKEN_CHARS} random ones ({MAKE_TOKEN_HINT})"
        )
    return token_digest(token)


def authorized(header: str | None, digest: str | None) -> bool:
    """Whether an ``Authorization`` header value carries the token of ``digest`` (always true
    when ``digest`` is None: authentication off)."""
    if digest is None:
        return True
    scheme, _, presented = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return False
    return hmac.compare_digest(token_digest(presented.strip()), digest)


__all__ = [
    "TOKEN_ENV",
    "TOKEN_PATH_ENV",
    "authorized",
    "find_token",
    "server_token_digest",
    "token_digest",
]
