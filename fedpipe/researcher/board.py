"""The researcher's side of the server's task board: post train requests, wait for replies, read metrics."""

from collections.abc import Mapping
from typing import Any

import httpx

__all__ = ["BoardClient", "BoardError"]


class BoardError(Exception):
    """The server refused or could not be reached."""


class BoardClient:
    """httpx client of the task-board and monitor routes of ``fedpipe serve``."""

    def __init__(self, server_url: str, *, timeout: float = 30.0) -> None:
        self.server_url = server_url.rstrip("/")
        self._client = httpx.Client(base_url=self.server_url, timeout=httpx.Timeout(timeout, connect=5.0))

    def post_task(self, node_id: str, request: Mapping[str, Any]) -> str:
        """Queue ``request`` for ``node_id``; return the task id."""
        try:
            response = self._client.post(f"/tasks/{node_id}", json={"request": dict(request)})
        except httpx.HTTPError as err:
            raise BoardError(f"cannot post a task for {node_id}: {type(err).__name__}") from err
        if response.status_code != 201:
            raise BoardError(f"posting a task for {node_id}: HTTP {response.status_code}")
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
            raise BoardError(f"reading the reply of task {task_id}: HTTP {response.status_code}")
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

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
