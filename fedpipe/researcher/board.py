"""The researcher's side of the server's task board: post train requests, wait for replies, read metrics."""

import ssl
from collections.abc import Mapping
from typing import Any, Protocol

import httpx

from fedpipe.adapters.http_exchange import CLIENT_LIMITS, ssl_context

__all__ = ["BoardClient", "BoardError", "TaskBoard"]


class BoardError(Exception):
    """The server refused or could not be reached; ``status`` is the HTTP status of a refusal (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TaskBoard(Protocol):
    """What an experiment needs of a task board: post requests, read replies and metric events.

    ``BoardClient`` is the one of ``fedpipe serve``; a simulation passes an in-memory board.
    """

    def post_task(self, node_id: str, request: Mapping[str, Any]) -> str:
        """Queue ``request`` for ``node_id``; return the task id."""
        ...

    def reply(self, task_id: str, wait: float) -> dict[str, Any] | None:
        """The node's reply to ``task_id``, or None if none came within ``wait`` seconds."""
        ...

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """Every monitor event the nodes sent for ``job_id``."""
        ...


class BoardClient:
    """httpx client of the task-board and monitor routes of ``fedpipe serve``.

    ``token`` is the researcher's bearer token (``fedpipe tokens issue --researcher ...``);
    ``verify`` is httpx's TLS verification (True, a CA file path, or an ``ssl.SSLContext``).
    """

    def __init__(
        self,
        server_url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        verify: ssl.SSLContext | str | bool = True,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.server_url,
            headers={"Authorization": f"Bearer {token}"} if token else {},
            verify=ssl_context(verify),
            trust_env=False,  # the token goes to this server only, never through an environment proxy
            timeout=httpx.Timeout(timeout, connect=5.0),
            limits=CLIENT_LIMITS,
        )

    def post_task(self, node_id: str, request: Mapping[str, Any]) -> str:
        """Queue ``request`` for ``node_id``; return the task id."""
        try:
            response = self._client.post(f"/tasks/{node_id}", json={"request": dict(request)})
        except httpx.HTTPError as err:
            raise BoardError(f"cannot post a task for {node_id}: {type(err).__name__}") from err
        if response.status_code != 201:
            raise BoardError(
                f"posting a task for {node_id}: HTTP {response.status_code}{_why(response)}",
                response.status_code,
            )
        return str(response.json()["task_id"])

    def reply(self, task_id: str, wait: float) -> dict[str, Any] | None:
        """The node's reply to ``task_id``, or None if none came within ``wait`` seconds."""
        try:
            response = self._client.get(f"/tasks/{task_id}/reply", params={"wait": wait}, timeout=wait + 15.0)
        except httpx.HTTPError as err:
            raise BoardError(f"cannot read the reply of task {task_id}: {type(err).__name__}") from err
        if response.status_code == 204:
            return None
        if response.status_code != 200:
            raise BoardError(
                f"reading the reply of task {task_id}: HTTP {response.status_code}", response.status_code
            )
        body = response.json()
        return body if isinstance(body, dict) else None

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """Every monitor event the nodes sent for ``job_id`` (training losses, validation metrics)."""
        try:
            response = self._client.get("/monitor", params={"job_id": job_id})
        except httpx.HTTPError as err:
            raise BoardError(f"cannot read monitor events: {type(err).__name__}") from err
        if response.status_code != 200:
            return []
        body = response.json()
        events = body if isinstance(body, list) else []
        return [e for e in events if isinstance(e, dict) and e.get("job_id") == job_id]

    def nodes(self) -> dict[str, float]:
        """The nodes that polled the board, with the time of their last poll (seconds since the epoch)."""
        try:
            response = self._client.get("/nodes")
        except httpx.HTTPError as err:
            raise BoardError(f"cannot list the nodes: {type(err).__name__}") from err
        if response.status_code != 200:
            raise BoardError(
                f"listing the nodes: HTTP {response.status_code}{_why(response)}", response.status_code
            )
        body = response.json()
        nodes = body.get("nodes") if isinstance(body, dict) else None
        return dict(nodes) if isinstance(nodes, dict) else {}

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def _why(response: httpx.Response) -> str:
    """The server's one-line reason, when it gave one."""
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    return f" ({error[:200]})" if isinstance(error, str) else ""
