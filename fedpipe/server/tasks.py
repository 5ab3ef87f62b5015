"""The server's task board: researchers post train requests per node, nodes pull them under a lease and reply.

Nodes only make outbound connections (as hospitals require): they long-poll
``GET /tasks/{node_id}/next`` with their own token and answer with ``POST /tasks/{task_id}/reply``
under the lease that came with the task. The board lives in ``<root>/board.sqlite`` (WAL,
``synchronous=FULL``), so a server killed and restarted loses no queued, leased or answered task;
lease expiry times are wall-clock and survive the restart.

Routes (JSON bodies; every route needs a bearer token, see ``fedpipe.server.auth``):

| method | path                                  | who                         | answers                                   |
|--------|---------------------------------------|-----------------------------|-------------------------------------------|
| POST   | /tasks/{node_id}                      | researcher                  | ``{"request": {...}}`` -> 201 ``{task_id}``; 429 when full |
| GET    | /tasks/{node_id}/next?wait=s[&fresh=1]| that node                   | 200 ``{task_id, request, lease_id, lease_seconds, delivery}`` or 204 |
| POST   | /tasks/{task_id}/lease                | the node holding the lease  | ``{"lease_id"}`` -> 200 ``{lease_seconds}``; 409 lease lost |
| POST   | /tasks/{task_id}/reply                | the node holding the lease  | ``{"lease_id", "reply": {...}}`` -> 200 ``{"ok": true}``; 409 |
| GET    | /tasks/{task_id}/reply?wait=s         | the researcher who posted it| 200 the reply, 204 not yet, 404 unknown    |
| GET    | /nodes                                | researcher                  | ``{"nodes": {node_id: last_poll_epoch_s}}`` |

Leases and poison tasks: a delivery creates a random ``lease_id`` valid ``lease_seconds``; the node
renews it while the round runs. A lease that ends without a reply (it expired, or the node polled
with ``fresh=1``: a new process on that node, so every lease it held is from a dead one) puts the
task back at the front of its node's queue, unless it was delivered ``max_deliveries`` times:
then it is dead-lettered (set aside with a failure reply the researcher reads like any other),
and the queue behind it drains. A task is delivered to one poller at a time; the first valid
reply wins. A task id that is not the node's own gets 403 (whether or not it exists); the
node's own task with a lease that is no longer current gets 409.

Limits: request and reply bodies 1 MiB (``MAX_TASK_BYTES``, ``MAX_REPLY_BYTES``), lease bodies
4 KiB, all enforced while streaming (413); strict JSON only (no NaN/Infinity, no lone
surrogates, at most 64 nested containers: 400 at the door, nothing stored); at most
``max_tasks_per_node`` unanswered tasks per node and ``max_board_bytes`` of stored requests and
replies (429 to the poster; a reply is always stored, so a node never loses its work to the
cap); answered and dead-lettered tasks are purged ``reply_retention_s`` after their reply.
``wait`` is a finite decimal number in [0, ``MAX_WAIT_S``], else 400. Expiry is checked on
every board operation, and waiting polls wake when the next lease ends: no background thread.
"""

import asyncio
import contextlib
import enum
import hmac
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from attrs import frozen
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fedpipe.server.auth import Principal, TokenStore, authorize, forbidden, valid_subject
from fedpipe.server.board_db import connect
from fedpipe.server.bodies import canonical, json_error, json_object

__all__ = [
    "MAX_LEASE_BODY_BYTES",
    "MAX_REPLY_BYTES",
    "MAX_TASK_BYTES",
    "MAX_WAIT_S",
    "BoardFull",
    "Delivery",
    "LeaseCheck",
    "TaskBoard",
    "parse_wait",
    "task_routes",
]

MAX_WAIT_S = 30.0
MAX_TASK_BYTES = 1024 * 1024
MAX_REPLY_BYTES = 1024 * 1024
MAX_LEASE_BODY_BYTES = 4 * 1024
DEFAULT_LEASE_S = 60.0
DEFAULT_MAX_DELIVERIES = 3
DEFAULT_MAX_TASKS_PER_NODE = 1000
DEFAULT_MAX_BOARD_BYTES = 256 * 1024 * 1024
DEFAULT_REPLY_RETENTION_S = 24 * 3600.0
# what one task costs beyond its texts (row, indexes), so that empty requests count too
TASK_OVERHEAD_BYTES = 512
# how far last-poll times may lag on disk (they are exact in memory): a poll is not a disk write
_LAST_POLL_PERSIST_S = 10.0
_TASK_ID = re.compile(r"[0-9a-f]{32}")
_WAIT = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def parse_wait(text: str | None) -> float | None:
    """The seconds a long poll may wait: a finite decimal in [0, MAX_WAIT_S]; missing is 0; else None.

    >>> parse_wait("2.5"), parse_wait(None), parse_wait("nan"), parse_wait("-1"), parse_wait("1e9")
    (2.5, 0.0, None, None, None)
    """
    if text is None:
        return 0.0
    if len(text) > 32 or _WAIT.fullmatch(text) is None:
        return None
    value = float(text)
    return value if 0.0 <= value <= MAX_WAIT_S else None


class BoardFull(Exception):
    """The node's queue or the whole board is at its cap; the message says which."""


class LeaseCheck(enum.StrEnum):
    """What the board made of a node's lease: held (OK), not the node's task (FORBIDDEN), or LOST."""

    OK = "ok"
    FORBIDDEN = "forbidden"
    LOST = "lease lost"


@frozen(kw_only=True)
class Delivery:
    """One delivery of a task to its node: the stored request text and the lease that goes with it."""

    task_id: str
    request: bytes
    lease_id: str
    lease_seconds: float
    delivery: int

    def body(self) -> bytes:
        """The JSON answer of ``GET /tasks/{node}/next`` (the request text is spliced in verbatim)."""
        head = json.dumps({"task_id": self.task_id})[:-1].encode()
        tail = json.dumps(
            {"lease_id": self.lease_id, "lease_seconds": self.lease_seconds, "delivery": self.delivery}
        )[1:].encode()
        return head + b', "request": ' + self.request + b", " + tail


def dead_letter_reply(request_text: bytes, node_id: str, deliveries: int) -> bytes:
    """The failure reply of a task set aside after ``deliveries`` deliveries without a reply.

    ``researcher_id``, ``job_id`` and ``dataset_id`` come from the request when they are strings
    (else ""); ``node_id`` is the node the task was queued for.

    >>> json.loads(dead_letter_reply(b'{"job_id": "j", "researcher_id": 7}', "n1", 3))["researcher_id"]
    ''
    """
    try:
        request = json.loads(request_text)
    except ValueError:
        request = {}
    if not isinstance(request, dict):
        request = {}

    def text(key: str) -> str:
        value = request.get(key)
        return value if isinstance(value, str) else ""

    times = "time" if deliveries == 1 else "times"
    reply: dict[str, Any] = {
        "protocol_version": "1",
        "researcher_id": text("researcher_id"),
        "job_id": text("job_id"),
        "state_id": None,
        "success": False,
        "node_id": node_id,  # the node the task was posted to, whatever the request says
        "dataset_id": text("dataset_id"),
        "params_url": "",
        "timing": {},
        "sample_size": None,
        "msg": f"The node stopped {deliveries} {times} while running this task; it was set aside.",
        "command": "train",
    }
    return canonical(reply)


class TaskBoard:
    """Tasks, leases and replies in ``<root>/board.sqlite``; long polls wait on an asyncio condition.

    The synchronous methods are short SQLite statements (safe from any thread, one at a time);
    the ``async`` ones also wake the waiting polls and must run on the server's event loop.
    ``clock`` gives wall-clock seconds (leases and retention survive restarts with it).
    """

    def __init__(
        self,
        root: Path,
        *,
        lease_seconds: float = DEFAULT_LEASE_S,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        max_tasks_per_node: int = DEFAULT_MAX_TASKS_PER_NODE,
        max_board_bytes: int = DEFAULT_MAX_BOARD_BYTES,
        reply_retention_s: float = DEFAULT_REPLY_RETENTION_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < lease_seconds < 1e6 or max_deliveries < 1:
            raise ValueError("lease_seconds must be in (0, 1e6) and max_deliveries at least 1")
        self.lease_seconds = float(lease_seconds)
        self.max_deliveries = max_deliveries
        self.max_tasks_per_node = max_tasks_per_node
        self.max_board_bytes = max_board_bytes
        self.reply_retention_s = reply_retention_s
        self.clock = clock
        self._conn = connect(Path(root))
        self._lock = threading.RLock()
        self._changed: asyncio.Condition | None = None
        self._changed_loop: asyncio.AbstractEventLoop | None = None
        self._dirty = False
        (stored,) = self._conn.execute("SELECT COALESCE(SUM(nbytes), 0) FROM tasks").fetchone()
        self.stored_bytes = int(stored)
        self.last_poll: dict[str, float] = dict(
            self._conn.execute("SELECT node_id, last_poll FROM nodes").fetchall()
        )
        self._persisted_poll = dict(self.last_poll)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    # -- storage -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _end_leases(self, conn: sqlite3.Connection, rows: list[Any], now: float) -> None:
        # rows: (seq, node_id, deliveries, request) of leased tasks whose lease ends now
        for seq, node_id, deliveries, request in rows:
            if deliveries >= self.max_deliveries:
                reply = dead_letter_reply(request.encode("utf-8"), node_id, deliveries)
                conn.execute(
                    "UPDATE tasks SET state = 'dead', lease_id = NULL, lease_expires = NULL, reply = ?,"
                    " replied_at = ?, nbytes = nbytes + ? WHERE seq = ?",
                    (reply.decode("utf-8"), now, len(reply), seq),
                )
                self.stored_bytes += len(reply)
            else:
                conn.execute(
                    "UPDATE tasks SET state = 'queued', priority = -1, lease_id = NULL,"
                    " lease_expires = NULL WHERE seq = ?",
                    (seq,),
                )
        if rows:
            self._dirty = True

    def _maintain(self, now: float) -> None:
        """End the leases that expired and purge old replies (reads first: nothing to do costs no write)."""
        with self._lock:
            expired = self._conn.execute(
                "SELECT seq, node_id, deliveries, request FROM tasks"
                " WHERE state = 'leased' AND lease_expires <= ?",
                (now,),
            ).fetchall()
            old = self._conn.execute(
                "SELECT COALESCE(SUM(nbytes), 0), COUNT(*) FROM tasks WHERE replied_at <= ?",
                (now - self.reply_retention_s,),
            ).fetchone()
            if not expired and not old[1]:
                return
            with self._transaction() as conn:
                self._end_leases(conn, expired, now)
                if old[1]:
                    conn.execute("DELETE FROM tasks WHERE replied_at <= ?", (now - self.reply_retention_s,))
            self.stored_bytes -= int(old[0])

    def _seen(self, node_id: str, now: float) -> None:
        self.last_poll[node_id] = now
        if now - self._persisted_poll.get(node_id, float("-inf")) >= _LAST_POLL_PERSIST_S:
            self._persisted_poll[node_id] = now
            with self._lock:
                self._conn.execute(
                    "INSERT INTO nodes (node_id, last_poll) VALUES (?, ?)"
                    " ON CONFLICT (node_id) DO UPDATE SET last_poll = excluded.last_poll",
                    (node_id, now),
                )

    # -- synchronous operations --------------------------------------------------------------

    def post(self, researcher: str, node_id: str, request: bytes, job_id: str | None = None) -> str:
        """Queue the canonical JSON ``request`` for ``node_id``; the new task id, or BoardFull."""
        now = self.clock()
        self._maintain(now)
        nbytes = len(request) + TASK_OVERHEAD_BYTES
        task_id = secrets.token_hex(16)
        with self._transaction() as conn:
            (waiting,) = conn.execute(
                "SELECT COUNT(*) FROM tasks WHERE node_id = ? AND state IN ('queued', 'leased')", (node_id,)
            ).fetchone()
            if waiting >= self.max_tasks_per_node:
                raise BoardFull("the node's queue is full")
            if self.stored_bytes + nbytes > self.max_board_bytes:
                raise BoardFull("the task board is full")
            conn.execute(
                "INSERT INTO tasks (task_id, node_id, researcher, job_id, request, state, nbytes, created)"
                " VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                (task_id, node_id, researcher, job_id, request.decode("utf-8"), nbytes, now),
            )
        self.stored_bytes += nbytes
        self._dirty = True
        return task_id

    def take(self, node_id: str, *, fresh: bool = False) -> Delivery | None:
        """Lease the next task of ``node_id`` to the caller, or None; ``fresh`` first ends its leases."""
        now = self.clock()
        self._maintain(now)
        self._seen(node_id, now)
        with self._transaction() as conn:
            if fresh:
                held = conn.execute(
                    "SELECT seq, node_id, deliveries, request FROM tasks"
                    " WHERE node_id = ? AND state = 'leased'",
                    (node_id,),
                ).fetchall()
                self._end_leases(conn, held, now)
            row = conn.execute(
                "SELECT seq, task_id, request, deliveries FROM tasks WHERE node_id = ? AND state = 'queued'"
                " ORDER BY priority, seq LIMIT 1",
                (node_id,),
            ).fetchone()
            if row is None:
                return None
            seq, task_id, request, deliveries = row
            lease_id = secrets.token_urlsafe(24)
            conn.execute(
                "UPDATE tasks SET state = 'leased', lease_id = ?, lease_expires = ?,"
                " deliveries = deliveries + 1 WHERE seq = ?",
                (lease_id, now + self.lease_seconds, seq),
            )
        return Delivery(
            task_id=task_id,
            request=request.encode("utf-8"),
            lease_id=lease_id,
            lease_seconds=self.lease_seconds,
            delivery=deliveries + 1,
        )

    def _check_lease(self, node_id: str, task_id: str, lease_id: str) -> tuple[LeaseCheck, int | None]:
        if _TASK_ID.fullmatch(task_id) is None:
            return LeaseCheck.FORBIDDEN, None
        row = self._conn.execute(
            "SELECT seq, node_id, state, lease_id FROM tasks WHERE task_id = ?", (task_id,)
        ).fetchone()
        if row is None or not hmac.compare_digest(_utf8(row[1]), _utf8(node_id)):
            return LeaseCheck.FORBIDDEN, None
        current = row[3] or ""
        if row[2] != "leased" or not hmac.compare_digest(_utf8(current), _utf8(lease_id)):
            return LeaseCheck.LOST, None
        return LeaseCheck.OK, row[0]

    def renew(self, node_id: str, task_id: str, lease_id: str) -> LeaseCheck:
        """Extend the lease ``lease_id`` of ``task_id`` by ``lease_seconds`` from now."""
        now = self.clock()
        self._maintain(now)
        with self._transaction() as conn:
            check, seq = self._check_lease(node_id, task_id, lease_id)
            if check is LeaseCheck.OK:
                conn.execute(
                    "UPDATE tasks SET lease_expires = ? WHERE seq = ?", (now + self.lease_seconds, seq)
                )
        return check

    def answer(self, node_id: str, task_id: str, lease_id: str, reply: bytes) -> LeaseCheck:
        """Store the canonical JSON ``reply`` of ``task_id`` if ``lease_id`` is its current lease."""
        now = self.clock()
        self._maintain(now)
        with self._transaction() as conn:
            check, seq = self._check_lease(node_id, task_id, lease_id)
            if check is LeaseCheck.OK:
                conn.execute(
                    "UPDATE tasks SET state = 'answered', lease_id = NULL, lease_expires = NULL, reply = ?,"
                    " replied_at = ?, nbytes = nbytes + ? WHERE seq = ?",
                    (reply.decode("utf-8"), now, len(reply), seq),
                )
                self.stored_bytes += len(reply)
                self._dirty = True
        return check

    def reply(self, researcher: str, task_id: str) -> tuple[bool, bytes | None]:
        """(whether ``researcher`` posted ``task_id``, its reply text or None while there is none)."""
        if _TASK_ID.fullmatch(task_id) is None:
            return False, None
        self._maintain(self.clock())
        with self._lock:
            row = self._conn.execute(
                "SELECT researcher, reply FROM tasks WHERE task_id = ?", (task_id,)
            ).fetchone()
        if row is None or not hmac.compare_digest(_utf8(row[0]), _utf8(researcher)):
            return False, None
        return True, None if row[1] is None else row[1].encode("utf-8")

    def state_of(self, task_id: str) -> str | None:
        """The state of ``task_id``: "queued", "leased", "answered", "dead", or None (unknown, purged)."""
        if _TASK_ID.fullmatch(task_id) is None:
            return None
        with self._lock:
            row = self._conn.execute("SELECT state FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else str(row[0])

    def jobs_of(self, researcher: str) -> set[str]:
        """The job ids of the tasks ``researcher`` posted that the board still holds."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT DISTINCT job_id FROM tasks WHERE researcher = ? AND job_id IS NOT NULL", (researcher,)
            ).fetchall()
        return {r[0] for r in rows}

    def owns_job(self, researcher: str, job_id: str) -> bool:
        """Whether ``researcher`` posted a task of ``job_id`` that the board still holds."""
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM tasks WHERE researcher = ? AND job_id = ? LIMIT 1", (researcher, job_id)
            ).fetchone()
        return row is not None

    def _next_expiry_in(self) -> float:
        with self._lock:
            (soonest,) = self._conn.execute(
                "SELECT MIN(lease_expires) FROM tasks WHERE state = 'leased'"
            ).fetchone()
        return float("inf") if soonest is None else max(0.01, soonest - self.clock())

    # -- waiting -----------------------------------------------------------------------------

    def _condition(self) -> asyncio.Condition:
        # one per event loop: an app served again (a new uvicorn run) gets a new loop
        loop = asyncio.get_running_loop()
        if self._changed is None or self._changed_loop is not loop:
            self._changed = asyncio.Condition()
            self._changed_loop = loop
        return self._changed

    async def notify(self) -> None:
        """Wake the waiting polls if anything changed since they last looked."""
        if self._dirty:
            cond = self._condition()
            async with cond:
                self._dirty = False
                cond.notify_all()

    async def _wait(
        self, check: Callable[[], Any], wait: float, gone: Callable[[], Awaitable[bool]] | None = None
    ) -> Any:
        deadline = time.monotonic() + min(max(wait, 0.0), MAX_WAIT_S)
        cond = self._condition()
        async with cond:
            while True:
                if gone is not None and await gone():
                    return None
                found = check()
                if self._dirty:
                    self._dirty = False
                    cond.notify_all()
                left = deadline - time.monotonic()
                if found is not None or left <= 0:
                    return found
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cond.wait(), timeout=min(left, self._next_expiry_in()))

    async def next_for(
        self,
        node_id: str,
        wait: float,
        *,
        fresh: bool = False,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> Delivery | None:
        """The node's next task under a new lease, waiting up to ``wait`` seconds for one.

        ``gone`` tells whether the poller hung up: checked before each take, so that a task is
        not leased to a connection that can no longer receive it (nor counted as delivered).
        """
        first = [fresh]

        def check() -> Delivery | None:
            delivery = self.take(node_id, fresh=first[0])
            first[0] = False
            return delivery

        result: Delivery | None = await self._wait(check, wait, gone)
        return result

    async def reply_of(self, researcher: str, task_id: str, wait: float) -> tuple[bool, bytes | None]:
        """Like ``reply``, waiting up to ``wait`` seconds for the reply to come."""
        outcome: list[tuple[bool, bytes | None]] = []

        def check() -> bool | None:
            outcome[:] = [self.reply(researcher, task_id)]
            known, reply = outcome[0]
            return True if not known or reply is not None else None

        await self._wait(check, wait)
        return outcome[0]


def task_routes(board: TaskBoard, tokens: TokenStore) -> list[Route]:
    """The task-board routes over ``board``, authenticated by ``tokens``, to mount in the server app."""

    async def node_body(request: Request, limit: int) -> tuple[Principal, dict[str, Any]] | Response:
        # a lease or reply: the node's credential first, then its JSON object body
        who = authorize(request, tokens, "node")
        if not isinstance(who, Principal):
            return who
        body = await json_object(request, limit)
        return body if isinstance(body, Response) else (who, body)

    async def lease_answer(check: LeaseCheck, ok: dict[str, Any]) -> Response:
        await board.notify()
        if check is LeaseCheck.OK:
            return JSONResponse(ok)
        return forbidden() if check is LeaseCheck.FORBIDDEN else json_error(409, "lease lost")

    async def post_task(request: Request) -> Response:
        who = authorize(request, tokens, "researcher")
        if not isinstance(who, Principal):
            return who
        node_id = request.path_params["node_id"]
        if not valid_subject(node_id):
            return json_error(400, "invalid node id")
        body = await json_object(request, MAX_TASK_BYTES)
        if not isinstance(body, dict):
            return body
        task = body.get("request")
        if not isinstance(task, dict):
            return json_error(400, 'expected {"request": {...}}')
        job_id = task.get("job_id")
        try:
            task_id = board.post(
                who.subject, node_id, canonical(task), job_id if isinstance(job_id, str) else None
            )
        except BoardFull as err:
            return json_error(429, str(err))
        await board.notify()
        return JSONResponse({"task_id": task_id}, status_code=201)

    async def next_task(request: Request) -> Response:
        who = authorize(request, tokens, "node")
        if not isinstance(who, Principal):
            return who
        if not hmac.compare_digest(_utf8(who.subject), _utf8(request.path_params["node_id"])):
            return forbidden()
        wait = parse_wait(request.query_params.get("wait"))
        fresh = request.query_params.get("fresh", "0")
        if wait is None:
            return json_error(400, f"wait is a number of seconds from 0 to {MAX_WAIT_S:g}")
        if fresh not in ("0", "1"):
            return json_error(400, "fresh is 0 or 1")
        delivery = await board.next_for(who.subject, wait, fresh=fresh == "1", gone=request.is_disconnected)
        if delivery is None:
            return Response(status_code=204)
        return Response(delivery.body(), media_type="application/json")

    async def renew_lease(request: Request) -> Response:
        got = await node_body(request, MAX_LEASE_BODY_BYTES)
        if isinstance(got, Response):
            return got
        who, body = got
        lease_id = body.get("lease_id")
        if not isinstance(lease_id, str):
            return json_error(400, 'expected {"lease_id": "..."}')
        check = board.renew(who.subject, request.path_params["task_id"], lease_id)
        return await lease_answer(check, {"lease_seconds": board.lease_seconds})

    async def post_reply(request: Request) -> Response:
        got = await node_body(request, MAX_REPLY_BYTES)
        if isinstance(got, Response):
            return got
        who, body = got
        lease_id, reply = body.get("lease_id"), body.get("reply")
        if not isinstance(lease_id, str) or not isinstance(reply, dict):
            return json_error(400, 'expected {"lease_id": "...", "reply": {...}}')
        check = board.answer(who.subject, request.path_params["task_id"], lease_id, canonical(reply))
        return await lease_answer(check, {"ok": True})

    async def get_reply(request: Request) -> Response:
        who = authorize(request, tokens, "researcher")
        if not isinstance(who, Principal):
            return who
        wait = parse_wait(request.query_params.get("wait"))
        if wait is None:
            return json_error(400, f"wait is a number of seconds from 0 to {MAX_WAIT_S:g}")
        known, reply = await board.reply_of(who.subject, request.path_params["task_id"], wait)
        if not known:
            return json_error(404, "unknown task")
        if reply is None:
            return Response(status_code=204)
        return Response(reply, media_type="application/json")

    async def nodes(request: Request) -> Response:
        who = authorize(request, tokens, "researcher")
        if not isinstance(who, Principal):
            return who
        return JSONResponse({"nodes": dict(board.last_poll)})

    return [
        Route("/tasks/{node_id}", post_task, methods=["POST"]),
        Route("/tasks/{node_id}/next", next_task, methods=["GET"]),
        Route("/tasks/{task_id}/lease", renew_lease, methods=["POST"]),
        Route("/tasks/{task_id}/reply", post_reply, methods=["POST"]),
        Route("/tasks/{task_id}/reply", get_reply, methods=["GET"]),
        Route("/nodes", nodes, methods=["GET"]),
    ]
