"""Thin httpx client of the server's task board, for nodes: pull tasks under a lease, renew it, reply.

The node authenticates with its own bearer token and only ever sees its own queue. A task comes
with a lease: the node renews it while the round runs, and its reply is accepted only while the
lease is current (a node that lost its lease, say after a long pause, cannot overwrite the reply
of the node that got the task next).
"""

import contextlib
import enum
import json
import socket
import ssl
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import httpcore
import httpx
from attrs import frozen

from fedpipe.adapters.http_exchange import CLIENT_LIMITS, ssl_context

__all__ = ["HttpTaskClient", "ReplyOutcome", "Task", "TaskBoardRefused", "TaskBoardUnavailable"]


class TaskBoardUnavailable(Exception):
    """The task board could not be reached or answered with a server error; back off and retry."""


class TaskBoardRefused(Exception):
    """The task board refused the node's credential (401/403): retrying cannot help."""


class ReplyOutcome(enum.Enum):
    """What became of a posted reply."""

    ACCEPTED = "accepted"
    LEASE_LOST = "lease lost"  # the lease expired or the task went to another delivery
    REFUSED = "refused"  # the board refused the reply itself (too large, not valid JSON ...)


@frozen(kw_only=True)
class Task:
    """A train request handed to this node under a lease.

    ``request`` is whatever JSON value the board stored (normally an object); the round parses it.
    """

    task_id: str
    request: Any
    lease_id: str
    lease_seconds: float
    delivery: int = 1


def _task_of(body: Any) -> Task:
    if not isinstance(body, dict):
        raise TypeError("a task is a JSON object")
    task_id, lease_id = body["task_id"], body["lease_id"]
    lease = body.get("lease_seconds", 60.0)
    delivery = body.get("delivery", 1)
    if not isinstance(task_id, str) or not isinstance(lease_id, str):
        raise TypeError("task and lease ids are strings")
    if isinstance(lease, bool) or not isinstance(lease, int | float) or not 0 < lease < 1e6:
        raise TypeError("lease_seconds is a positive number")
    return Task(
        task_id=task_id,
        request=body.get("request"),
        lease_id=lease_id,
        lease_seconds=float(lease),
        delivery=delivery if isinstance(delivery, int) and not isinstance(delivery, bool) else 1,
    )


class _InterruptibleBackend(httpcore.NetworkBackend):
    """httpcore's blocking backend, remembering its live sockets so that a call can be cut short."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._streams: weakref.WeakSet[httpcore.NetworkStream] = weakref.WeakSet()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        self._streams.add(stream)
        return stream

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(path, timeout=timeout, socket_options=socket_options)
        self._streams.add(stream)
        return stream

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)

    def shutdown_all(self) -> None:
        """Shut every live socket down: a blocked read on it returns at once, in any thread.

        Only ``shutdown`` (no lock, no close): it is safe from a signal handler, and the owner of
        the connection still closes it as for any broken connection.
        """
        for stream in list(self._streams):
            sock = stream.get_extra_info("socket")
            if isinstance(sock, socket.socket):
                # the plain socket's shutdown, under TLS too: the TLS object stays to its owner;
                # an OSError means it is closed already, with nothing in flight on it
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


class HttpTaskClient:
    """Long-polls ``GET /tasks/{node_id}/next`` and answers under the task's lease; all waits are bounded.

    ``token`` is the node's bearer token (``fedpipe tokens issue --node ...``); ``verify`` is
    httpx's TLS verification (True, a CA file path, or an ``ssl.SSLContext``).
    """

    def __init__(
        self,
        server_url: str,
        node_id: str,
        *,
        token: str | None = None,
        poll_wait: float = 10.0,
        connect_timeout: float = 5.0,
        verify: ssl.SSLContext | str | bool = True,
    ) -> None:
        self.node_id = node_id
        self.poll_wait = min(max(poll_wait, 0.0), 30.0)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.HTTPTransport(verify=ssl_context(verify), trust_env=False, limits=CLIENT_LIMITS)
        self._backend = _InterruptibleBackend()
        pool = getattr(transport, "_pool", None)
        if isinstance(pool, httpcore.ConnectionPool):
            # httpx has no public hook for the backend; without it interrupt() waits the poll out
            pool._network_backend = self._backend
        self._client = httpx.Client(
            base_url=server_url.rstrip("/"),
            headers=headers,
            transport=transport,
            trust_env=False,  # the token goes to this server only, never through an environment proxy
            follow_redirects=False,
            timeout=httpx.Timeout(
                connect=connect_timeout, read=self.poll_wait + 10.0, write=30.0, pool=connect_timeout
            ),
        )

    def _call(
        self, what: str, method: str, path: str, *, own_task: bool = False, **kwargs: Any
    ) -> httpx.Response:
        # 403 on a task route means "not your lease" (the credential itself is fine)
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise TaskBoardUnavailable(f"{what} failed: {type(err).__name__}") from err
        if response.status_code == 401 or (response.status_code == 403 and not own_task):
            raise TaskBoardRefused(
                f"{what}: the server refused this node's credential (HTTP {response.status_code})"
            )
        if response.status_code >= 500 or response.status_code == 429:
            raise TaskBoardUnavailable(f"{what}: HTTP {response.status_code}")
        return response

    def next_task(self, *, fresh: bool = False, wait: float | None = None) -> Task | None:
        """The next task, or None when none came within ``wait`` (default ``poll_wait``) seconds.

        ``fresh`` says this process just started, so that the board ends the leases a dead
        predecessor held (one process per node root) and hands those tasks back now.
        Raises TaskBoardUnavailable for a malformed task: the board stored it, so it will set
        it aside after its lease runs out too often.
        """
        seconds = self.poll_wait if wait is None else min(max(wait, 0.0), self.poll_wait)
        params: dict[str, Any] = {"wait": f"{seconds:g}"}
        if fresh:
            params["fresh"] = "1"
        response = self._call("polling for tasks", "GET", f"/tasks/{self.node_id}/next", params=params)
        if response.status_code == 204:
            return None
        if response.status_code != 200:
            raise TaskBoardUnavailable(f"polling for tasks: HTTP {response.status_code}")
        try:
            return _task_of(response.json())
        except (ValueError, KeyError, TypeError, RecursionError) as err:
            raise TaskBoardUnavailable("the task board sent a malformed task") from err

    def renew(self, task: Task) -> bool:
        """Extend the lease of ``task``; False when the node no longer holds it."""
        response = self._call(
            "renewing a lease",
            "POST",
            f"/tasks/{task.task_id}/lease",
            own_task=True,
            json={"lease_id": task.lease_id},
        )
        return response.status_code == 200

    def post_reply(self, task: Task, reply: Mapping[str, Any]) -> ReplyOutcome:
        """Deliver the reply of ``task`` under its lease.

        A reply that is not strict JSON is REFUSED: by the node before sending (NaN, infinities)
        or by the board (lone surrogates); the lease stays, so a fallback reply can follow.
        """
        try:
            body = json.dumps({"lease_id": task.lease_id, "reply": dict(reply)}, allow_nan=False).encode()
        except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
            return ReplyOutcome.REFUSED
        response = self._call(
            "posting the reply",
            "POST",
            f"/tasks/{task.task_id}/reply",
            own_task=True,
            content=body,
            headers={"Content-Type": "application/json"},
        )
        if response.status_code == 200:
            return ReplyOutcome.ACCEPTED
        if response.status_code in (403, 404, 409):
            return ReplyOutcome.LEASE_LOST
        return ReplyOutcome.REFUSED

    def interrupt(self) -> None:
        """Cut short the call in flight (the long poll), from a signal handler or another thread.

        Its connection is shut down, so the call raises TaskBoardUnavailable at once, and the
        server sees the node leave: it hands no task to a poll whose node is gone. Later calls
        open a fresh connection.
        """
        self._backend.shutdown_all()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()
