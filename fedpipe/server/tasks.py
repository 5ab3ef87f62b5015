"""The server's task board: researchers post train requests per node, nodes pull them and post replies.

Nodes only make outbound connections (as hospitals require): they long-poll
``GET /tasks/{node_id}/next`` and answer with ``POST /tasks/{task_id}/reply``. A node that polls
again while a task it took is unanswered has restarted or lost it: the board hands that task back
first, so a node killed mid-round picks its round up again. Every wait is bounded.

Routes (JSON bodies):

| method | path                          | who        | effect                                          |
|--------|-------------------------------|------------|-------------------------------------------------|
| POST   | /tasks/{node_id}              | researcher | queue ``{"request": {...}}``; returns task_id    |
| GET    | /tasks/{node_id}/next?wait=s  | node       | the next task (200) or nothing yet (204)         |
| POST   | /tasks/{task_id}/reply        | node       | store the reply for the task                     |
| GET    | /tasks/{task_id}/reply?wait=s | researcher | the reply (200) or not yet (204)                 |
| GET    | /nodes                        | anyone     | nodes seen and when they last polled             |
"""

import asyncio
import contextlib
import json
import time
import uuid
from collections import deque
from typing import Any

from attrs import define, field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["MAX_TASK_BYTES", "MAX_WAIT_S", "TaskBoard", "task_routes"]

MAX_WAIT_S = 30.0
MAX_TASK_BYTES = 1024 * 1024
_NODE_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@define
class _Task:
    task_id: str
    node_id: str
    request: dict[str, Any]
    reply: dict[str, Any] | None = None
    taken: bool = False


@define
class TaskBoard:
    """In-memory tasks and replies, with waits bounded by ``MAX_WAIT_S`` (one event loop only)."""

    tasks: dict[str, _Task] = field(factory=dict)
    queues: dict[str, deque[str]] = field(factory=dict)
    in_flight: dict[str, str] = field(factory=dict)  # node_id -> task_id taken and not answered
    last_seen: dict[str, float] = field(factory=dict)
    _changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        cond = self._condition()
        async with cond:
            cond.notify_all()

    async def post(self, node_id: str, request: dict[str, Any]) -> str:
        """Queue ``request`` for ``node_id``; return the new task id."""
        task = _Task(task_id=uuid.uuid4().hex, node_id=node_id, request=request)
        self.tasks[task.task_id] = task
        self.queues.setdefault(node_id, deque()).append(task.task_id)
        await self._notify()
        return task.task_id

    def _take(self, node_id: str) -> _Task | None:
        pending = self.in_flight.get(node_id)
        if pending is not None and self.tasks[pending].reply is None:
            return self.tasks[pending]  # the node lost it (restart): hand it back
        queue = self.queues.get(node_id)
        while queue:
            task = self.tasks[queue.popleft()]
            task.taken = True
            self.in_flight[node_id] = task.task_id
            return task
        return None

    async def next_for(self, node_id: str, wait: float) -> _Task | None:
        """The node's next task, waiting up to ``wait`` seconds for one."""
        deadline = time.monotonic() + min(max(wait, 0.0), MAX_WAIT_S)
        cond = self._condition()
        async with cond:
            while True:
                self.last_seen[node_id] = time.time()
                task = self._take(node_id)
                left = deadline - time.monotonic()
                if task is not None or left <= 0:
                    return task
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cond.wait(), timeout=left)

    async def answer(self, task_id: str, reply: dict[str, Any]) -> bool:
        """Store the reply of ``task_id``; False when there is no such task."""
        task = self.tasks.get(task_id)
        if task is None:
            return False
        task.reply = reply
        if self.in_flight.get(task.node_id) == task_id:
            del self.in_flight[task.node_id]
        await self._notify()
        return True

    async def reply_of(self, task_id: str, wait: float) -> dict[str, Any] | None:
        """The reply of ``task_id``, waiting up to ``wait`` seconds for it."""
        deadline = time.monotonic() + min(max(wait, 0.0), MAX_WAIT_S)
        cond = self._condition()
        async with cond:
            while True:
                task = self.tasks.get(task_id)
                left = deadline - time.monotonic()
                if task is None or task.reply is not None or left <= 0:
                    return None if task is None else task.reply
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cond.wait(), timeout=left)


def _wait_of(request: Request) -> float:
    try:
        return float(request.query_params.get("wait", "0"))
    except ValueError:
        return 0.0


async def _json_body(request: Request) -> dict[str, Any] | None:
    body = await request.body()
    if len(body) > MAX_TASK_BYTES:
        return None
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _valid_id(value: str) -> bool:
    return 0 < len(value) <= 128 and set(value) <= _NODE_ID_CHARS


def task_routes(board: TaskBoard) -> list[Route]:
    """The task-board routes over ``board``, to mount in the file-exchange server app."""

    async def post_task(request: Request) -> Response:
        node_id = request.path_params["node_id"]
        body = await _json_body(request)
        if not _valid_id(node_id) or body is None or not isinstance(body.get("request"), dict):
            return JSONResponse({"error": 'expected {"request": {...}} for a valid node id'}, status_code=400)
        return JSONResponse({"task_id": await board.post(node_id, body["request"])}, status_code=201)

    async def next_task(request: Request) -> Response:
        node_id = request.path_params["node_id"]
        if not _valid_id(node_id):
            return JSONResponse({"error": "invalid node id"}, status_code=400)
        task = await board.next_for(node_id, _wait_of(request))
        if task is None:
            return Response(status_code=204)
        return JSONResponse({"task_id": task.task_id, "request": task.request})

    async def post_reply(request: Request) -> Response:
        body = await _json_body(request)
        if body is None:
            return JSONResponse({"error": "expected a JSON object"}, status_code=400)
        if not await board.answer(request.path_params["task_id"], body):
            return JSONResponse({"error": "unknown task"}, status_code=404)
        return JSONResponse({"ok": True})

    async def get_reply(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        if task_id not in board.tasks:
            return JSONResponse({"error": "unknown task"}, status_code=404)
        reply = await board.reply_of(task_id, _wait_of(request))
        return Response(status_code=204) if reply is None else JSONResponse(reply)

    async def nodes(request: Request) -> Response:
        return JSONResponse({"nodes": board.last_seen})

    return [
        Route("/tasks/{node_id}", post_task, methods=["POST"]),
        Route("/tasks/{node_id}/next", next_task, methods=["GET"]),
        Route("/tasks/{task_id}/reply", post_reply, methods=["POST"]),
        Route("/tasks/{task_id}/reply", get_reply, methods=["GET"]),
        Route("/nodes", nodes, methods=["GET"]),
    ]
