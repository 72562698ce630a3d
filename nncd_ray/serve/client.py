"""A Python client of an ``nncd serve`` service, for people who do not want to write HTTP
(standard library only: no Ray, no torch).

    from nncd_ray.serve.client import ServiceClient

    client = ServiceClient("http://127.0.0.1:8000", token_file="token")
    answer = client.classify("Oil prices rise as storms threaten the Gulf")
    answer["label"], answer["neighbours"][0]["ncd"], answer["bits_per_byte"]

The token is found as the server finds its own (:func:`nncd_ray.serve.auth.find_token`):
``token=``, else ``token_file=``, else ``$NNCD_SERVE_TOKEN``, else ``$NNCD_SERVE_TOKEN_PATH``.
An answer other than 200 raises :class:`~nncd_ray.errors.ServiceError` with the service's
one-line reason and the HTTP status; a service out of reach raises it with ``status`` None.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from nncd_ray.errors import ServiceError
from nncd_ray.serve.auth import find_token

# seconds one request may take (a long list of documents on a loaded CPU service takes a while)
DEFAULT_TIMEOUT_S = 300.0


class ServiceClient:
    """Requests to one service at ``url`` (scheme, host, port and route prefix)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        token_file: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ServiceError(f"the service URL must start with http:// or https://, not {url!r}")
        self.url = url.rstrip("/")
        self.token = token if token is not None else find_token(token_file)[0]
        self.timeout_s = timeout_s

    def classify(self, text: str | Sequence[str], *, k: int | None = None) -> Any:
        """``POST /classify``: for one text a dict (``label``, ``neighbours`` as dicts of ``id``,
        ``label`` and ``ncd``, nearest first, ``bits_per_byte``…), for a list a list of them."""
        return self._post("/classify", self._body(text, "k", k))

    def distances(self, text: str | Sequence[str], *, top: int | None = None) -> Any:
        """``POST /distances``: NCD to every reference in reference order (``ncd``), or the
        ``top`` nearest references (``neighbours``); a list for a list of texts."""
        return self._post("/distances", self._body(text, "top", top))

    def health(self) -> dict[str, Any]:
        """``GET /health``: the answering scorer replica's description."""
        answer: dict[str, Any] = self._request("GET", "/health")
        return answer

    def metrics(self) -> dict[str, Any]:
        """``GET /metrics``: requests, latency percentiles (ms), queries and pairs per second."""
        answer: dict[str, Any] = self._request("GET", "/metrics")
        return answer

    def references(self) -> dict[str, Any]:
        """``GET /references``: ids and labels of the references, in the order of ``ncd``."""
        answer: dict[str, Any] = self._request("GET", "/references")
        return answer

    @staticmethod
    def _body(text: str | Sequence[str], option: str, value: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"text": text if isinstance(text, str) else list(text)}
        if value is not None:
            body[option] = value
        return body

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return self._request("POST", path, json.dumps(body).encode("utf-8"))

    def _request(self, method: str, path: str, data: bytes | None = None) -> Any:
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise ServiceError(
                f"{self.url}{path} answered HTTP {exc.code}: {_reason(exc)}", status=exc.code
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceError(
                f"cannot reach the service at {self.url} ({reason}); is `nncd serve` running there?"
            ) from None
        except ValueError as exc:
            raise ServiceError(
                f"{self.url}{path} answered something that is not JSON ({exc})"
            ) from None


def _reason(exc: urllib.error.HTTPError) -> str:
    """The service's one-line ``{"error": ...}``, else the start of whatever came back."""
    try:
        raw = exc.read()
    except OSError:
        raw = b""
    try:
        message = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        message = raw.decode("utf-8", "replace").strip()[:200] or str(exc.reason)
    return str(message).splitlines()[0] if str(message) else str(exc.reason)


__all__ = ["DEFAULT_TIMEOUT_S", "ServiceClient"]
