"""Thin httpx client of the server's task board, for nodes: pull tasks under a lease, renew it, reply.

The node authenticates with its own bearer token and only ever sees its own queue. A task comes
with a lease: the node renews it while the round runs, and its reply is accepted only while the
lease is current (a node that lost its lease, say after a long pause, cannot overwrite the reply
of the node that got the task next).
"""

import enum
import json
import ssl
from collections.abc import Mapping
from typing import Any

import httpx
from attrs import frozen

from fedpipe.adapters.http_exchange import ssl_context

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
        self._client = httpx.Client(
            base_url=server_url.rstrip("/"),
            headers=headers,
            verify=ssl_context(verify),
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

    def next_task(self, *, fresh: bool = False) -> Task | None:
        """The next task, or None when none came within ``poll_wait`` seconds.

        ``fresh`` says this process just started, so that the board ends the leases a dead
        predecessor held (one process per node root) and hands those tasks back now.
        Raises TaskBoardUnavailable for a malformed task: the board stored it, so it will set
        it aside after its lease runs out too often.
        """
        params: dict[str, Any] = {"wait": f"{self.poll_wait:g}"}
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

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()
