"""Thin httpx client of the server's key relay (``fedpipe.server.relay``): the ``SecaggRelay`` port.

The node posts its signed key offer with ``PUT /secagg/{id}/keys/{node}`` and long-polls
``GET /secagg/{id}/keys?count=n&wait=s`` with its own token. Every failure is a ``RoundError``
(``SECAGG_CONFIG``) whose public text says what went wrong without any network detail.
"""

import base64
import binascii
import re
import ssl
from collections.abc import Mapping
from typing import Any

import httpx
from returns.result import Failure, Result, Success

from fedpipe.adapters.http_exchange import CLIENT_LIMITS, ssl_context
from fedpipe.errors import ErrorCode, RoundError

__all__ = ["MAX_RELAY_WAIT_S", "HttpSecaggRelay"]

MAX_RELAY_WAIT_S = 30.0
"""The server's longest long-poll; a longer ``wait`` is asked as several."""
_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def _fail(detail: str, public: str, *, retryable: bool = True) -> Failure[RoundError]:
    return Failure(
        RoundError(code=ErrorCode.SECAGG_CONFIG, step="", detail=detail, public=public, retryable=retryable)
    )


_UNREACHABLE = "The node could not reach the server's key relay."


def _reason(response: httpx.Response) -> str:
    """The server's one-line reason, for the node log."""
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    return error[:200] if isinstance(error, str) else ""


class HttpSecaggRelay:
    """The key relay of the server at ``server_url``, with this node's bearer ``token``.

    ``verify`` is httpx's TLS verification (True, a CA file path, or an ``ssl.SSLContext``).
    """

    def __init__(
        self,
        server_url: str,
        *,
        token: str | None = None,
        connect_timeout: float = 5.0,
        verify: ssl.SSLContext | str | bool = True,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(
            base_url=server_url.rstrip("/"),
            headers=headers,
            verify=ssl_context(verify),
            trust_env=False,  # the token goes to this server only
            follow_redirects=False,
            limits=CLIENT_LIMITS,
            timeout=httpx.Timeout(
                connect=connect_timeout, read=MAX_RELAY_WAIT_S + 10.0, write=30.0, pool=connect_timeout
            ),
        )

    @staticmethod
    def _ids_problem(*ids: str) -> Failure[RoundError] | None:
        for value in ids:
            if not isinstance(value, str) or _ID.fullmatch(value) is None:
                return _fail(
                    f"id {value!r} cannot be relayed",
                    "A LOM context id and node ids must be 1-128 letters, digits, '_', '.' or '-' to be relayed.",
                    retryable=False,
                )
        return None

    def _call(self, what: str, method: str, path: str, **kwargs: Any) -> Result[httpx.Response, RoundError]:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            return _fail(f"{what}: {type(err).__name__}: {err}", _UNREACHABLE)
        if response.status_code in (401, 403):
            return _fail(
                f"{what}: HTTP {response.status_code}",
                "The server's key relay refused this node's credential.",
                retryable=False,
            )
        if response.status_code == 429:
            return _fail(
                f"{what}: HTTP 429: {_reason(response)}",
                "The server's key relay is full (too many set-ups, or parties in this one); retry later.",
            )
        if response.status_code >= 500:
            return _fail(f"{what}: HTTP {response.status_code}", _UNREACHABLE)
        return Success(response)

    def publish(self, secagg_id: str, node_id: str, blob: bytes) -> Result[None, RoundError]:
        """Post this node's offer; a failure when refused (409: another offer of this node is there)."""
        problem = self._ids_problem(secagg_id, node_id)
        if problem is not None:
            return problem

        def answer(response: httpx.Response) -> Result[None, RoundError]:
            if response.status_code == 204:
                return Success(None)
            if response.status_code == 409:
                return _fail(
                    "relay 409: another offer of this node",
                    "The relay holds another key offer of this node for this LOM context; set up a new context.",
                    retryable=False,
                )
            return _fail(
                f"posting a key offer: HTTP {response.status_code}",
                "The server's key relay refused this node's key offer.",
                retryable=False,
            )

        return self._call(
            "posting a key offer",
            "PUT",
            f"/secagg/{secagg_id}/keys/{node_id}",
            content=blob,
            headers={"Content-Type": "application/octet-stream"},
        ).bind(answer)

    def collect(self, secagg_id: str, *, count: int, wait: float) -> Result[Mapping[str, bytes], RoundError]:
        """The offers posted for ``secagg_id``, once ``count`` are there or after ``wait`` seconds (at most 30)."""
        problem = self._ids_problem(secagg_id)
        if problem is not None:
            return problem
        params = {"count": str(max(1, int(count))), "wait": f"{min(max(wait, 0.0), MAX_RELAY_WAIT_S):.3f}"}

        def answer(response: httpx.Response) -> Result[Mapping[str, bytes], RoundError]:
            if response.status_code != 200:
                return _fail(
                    f"reading key offers: HTTP {response.status_code}",
                    "The server's key relay refused to hand out the key offers.",
                    retryable=False,
                )
            try:
                keys = response.json()["keys"]
                if not isinstance(keys, dict):
                    raise TypeError("keys is not an object")
                return Success(
                    {str(node): base64.b64decode(text, validate=True) for node, text in keys.items()}
                )
            except (ValueError, KeyError, TypeError, binascii.Error) as err:
                return _fail(
                    f"malformed relay answer: {err}", "The server's key relay sent a malformed answer."
                )

        return self._call("reading key offers", "GET", f"/secagg/{secagg_id}/keys", params=params).bind(
            answer
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()
