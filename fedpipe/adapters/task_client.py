"""Thin httpx client of the server's task board, for nodes (pull tasks, post replies)."""

from collections.abc import Mapping
from typing import Any

import httpx
from attrs import frozen

__all__ = ["HttpTaskClient", "Task", "TaskBoardUnavailable"]


class TaskBoardUnavailable(Exception):
    """The task board could not be reached or answered with an error; the caller backs off and retries."""


@frozen(kw_only=True)
class Task:
    """A train request handed to this node."""

    task_id: str
    request: Mapping[str, Any]


class HttpTaskClient:
    """Long-polls ``GET /tasks/{node_id}/next`` and posts replies; all waits are bounded."""

    def __init__(
        self, server_url: str, node_id: str, *, poll_wait: float = 10.0, connect_timeout: float = 5.0
    ) -> None:
        self.node_id = node_id
        self.poll_wait = poll_wait
        self._client = httpx.Client(
            base_url=server_url.rstrip("/"),
            timeout=httpx.Timeout(
                connect=connect_timeout, read=poll_wait + 10.0, write=30.0, pool=connect_timeout
            ),
        )

    def next_task(self) -> Task | None:
        """The next task, or None when none came within ``poll_wait`` seconds."""
        try:
            response = self._client.get(f"/tasks/{self.node_id}/next", params={"wait": self.poll_wait})
        except httpx.HTTPError as err:
            raise TaskBoardUnavailable(f"polling for tasks failed: {type(err).__name__}") from err
        if response.status_code == 204:
            return None
        if response.status_code != 200:
            raise TaskBoardUnavailable(f"polling for tasks: HTTP {response.status_code}")
        try:
            body = response.json()
            return Task(task_id=str(body["task_id"]), request=body["request"])
        except (ValueError, KeyError, TypeError) as err:
            raise TaskBoardUnavailable("the task board sent a malformed task") from err

    def post_reply(self, task_id: str, reply: Mapping[str, Any]) -> None:
        """Deliver the reply of ``task_id``."""
        try:
            response = self._client.post(f"/tasks/{task_id}/reply", json=dict(reply))
        except httpx.HTTPError as err:
            raise TaskBoardUnavailable(f"posting the reply failed: {type(err).__name__}") from err
        if response.status_code not in (
            200,
            404,
        ):  # 404: the board forgot the task (restart); nothing to retry
            raise TaskBoardUnavailable(f"posting the reply: HTTP {response.status_code}")

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()
