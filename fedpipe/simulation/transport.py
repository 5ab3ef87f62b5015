"""The in-memory transport of a simulation: a file exchange and a task board shared by researcher and nodes.

The researcher's ``Experiment`` talks to ``MemoryBoard`` and ``MemoryExchange`` through the same
ports as to ``fedpipe serve``. The board hands the tasks a round posted to an ``Engine`` as one
batch, the first time the researcher asks for a reply, and takes the nodes' outcomes as they
finish, so that the researcher's round deadline holds as with deployed nodes. Each node of the
batch reads the payloads its request names (plan source, global parameters, auxiliary
variables) from the batch's ``files``, shared by reference, and writes its results into its own
``TaskExchange``, whose uploads come back with its reply.
"""

import itertools
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attrs import field, frozen
from returns.result import Result

from fedpipe.adapters.memory_files import read_upload, take_download, write_download
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import MetricEvent

if TYPE_CHECKING:
    from fedpipe.simulation.engine import Engine, RunningBatch

__all__ = [
    "SIM_HOST",
    "EventRecorder",
    "MemoryBoard",
    "MemoryExchange",
    "RoundBatch",
    "SimTask",
    "TaskExchange",
    "TaskOutcome",
]

SIM_HOST = "http://simulation.invalid"
_RESULTS = f"{SIM_HOST}/results/"


def _error(code: ErrorCode, detail: str) -> RoundError:
    return RoundError(code=code, step="", detail=detail)


@frozen(kw_only=True)
class SimTask:
    """One task of a round: the request the researcher posted for ``node_id``."""

    task_id: str
    node_id: str
    request: Mapping[str, Any] = field(repr=False)


@frozen(kw_only=True)
class RoundBatch:
    """The tasks of one round and the payloads they name (URL -> bytes), shared by every task.

    An engine sends ``files`` once per batch (a Ray engine puts them in the object store once and
    passes the reference to every actor), never once per task.
    """

    tasks: tuple[SimTask, ...]
    files: Mapping[str, bytes] = field(repr=False)


@frozen(kw_only=True)
class TaskOutcome:
    """What a node gives back for a task: its reply, its metric events and the files it uploaded."""

    task_id: str
    reply: Mapping[str, Any] = field(repr=False)
    events: tuple[Mapping[str, Any], ...] = field(default=(), repr=False)
    uploads: Mapping[str, bytes] = field(factory=dict, repr=False)


class MemoryExchange:
    """The researcher's file exchange, in a dict (URL -> bytes).

    A node's results are read once: downloading them drops them, so that finished rounds hold
    no memory of the nodes' updates.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self._ids: Iterator[int] = itertools.count()

    def upload(self, path: Path) -> Result[str, RoundError]:
        """Keep the file's bytes under a new URL."""
        return read_upload(path).map(
            lambda content: self._keep(f"{SIM_HOST}/files/{next(self._ids)}", content)
        )

    def _keep(self, url: str, content: bytes) -> str:
        self.files[url] = content
        return url

    def _held(self, url: str) -> bytes | None:
        return self.files.pop(url, None) if url.startswith(_RESULTS) else self.files.get(url)

    def download(self, url: str, dest: Path, *, max_bytes: int) -> Result[Path, RoundError]:
        """Write the bytes of ``url`` to ``dest``; results are dropped once read."""
        return write_download(url, self._held(url), dest, max_bytes=max_bytes)

    def read_bytes(self, url: str, *, max_bytes: int) -> Result[bytes, RoundError]:
        """The bytes of ``url``, with no file in between (the researcher's results); dropped once read."""
        return take_download(url, self._held(url), max_bytes=max_bytes)

    def put(self, url: str, content: bytes) -> None:
        """Keep ``content`` under ``url`` (a node's upload, as its engine brought it back)."""
        self.files[url] = content


class TaskExchange:
    """A node's file exchange for one task: reads the batch's shared files, keeps its own uploads."""

    def __init__(self, files: Mapping[str, bytes], task_id: str) -> None:
        self._files = files
        self._prefix = f"{_RESULTS}{task_id}/"
        self.uploads: dict[str, bytes] = {}

    def download(self, url: str, dest: Path, *, max_bytes: int) -> Result[Path, RoundError]:
        """Copy the shared bytes of ``url`` into ``dest`` (unknown URLs fail like a 404)."""
        return write_download(url, self._files.get(url), dest, max_bytes=max_bytes)

    def upload(self, path: Path) -> Result[str, RoundError]:
        """Keep the file's bytes; its URL is the task's own."""
        return read_upload(path).map(self._keep)

    def _keep(self, content: bytes) -> str:
        url = f"{self._prefix}{len(self.uploads)}"
        self.uploads[url] = content
        return url


class EventRecorder:
    """A node's monitor for one task: keeps the events, which travel back with the reply."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def report(self, event: MetricEvent) -> None:
        """Keep ``event`` (as the monitor route receives it)."""
        self.events.append(event.to_dict())


def _urls(request: Mapping[str, Any]) -> list[str]:
    """The payload URLs a request names."""
    urls = [request.get("training_plan_url"), request.get("params_url")]
    aux = request.get("aux_var_urls")
    if isinstance(aux, list):
        urls.extend(aux)
    return [u for u in urls if isinstance(u, str)]


class MemoryBoard:
    """The task board of a simulation: queues a round's tasks, runs them as one batch on ``engine``.

    The batch is submitted when the researcher first asks for a reply, i.e. once every task of
    the round is posted; ``reply`` then waits on it as on a deployed node's reply, taking the
    outcomes as the nodes finish. A reply is delivered whole: the node's uploads go into
    ``exchange`` and its events into the monitor log just before its reply is returned. A new
    round's batch (or ``close``) cancels what the previous one still runs and drops its outcomes
    nobody took, so that nothing of a node the researcher stopped waiting for reaches a later
    round.
    """

    def __init__(self, engine: "Engine", exchange: MemoryExchange) -> None:
        self._engine = engine
        self._exchange = exchange
        self._queued: list[SimTask] = []
        self._running: RunningBatch | None = None
        self._arrived: dict[str, TaskOutcome] = {}
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._ids: Iterator[int] = itertools.count()

    def post_task(self, node_id: str, request: Mapping[str, Any]) -> str:
        """Queue ``request`` for ``node_id``; return the task id."""
        task_id = f"task-{next(self._ids)}"
        self._queued.append(SimTask(task_id=task_id, node_id=node_id, request=dict(request)))
        return task_id

    def _submit(self) -> None:
        self._drop()
        tasks = tuple(self._queued)
        self._queued.clear()
        files = self._exchange.files
        shared = {u: files[u] for t in tasks for u in _urls(t.request) if u in files}
        self._running = self._engine.submit(RoundBatch(tasks=tasks, files=shared))

    def _drop(self) -> None:
        """Cancel the running batch and forget the outcomes nobody took."""
        if self._running is not None:
            self._running.cancel()
            self._running = None
        self._arrived.clear()

    def reply(self, task_id: str, wait: float) -> dict[str, Any] | None:
        """The node's reply to ``task_id``, waiting up to ``wait`` seconds for it; None if none came.

        The round's queued tasks are submitted first (cancelling what an earlier round still runs).
        """
        if self._queued and task_id not in self._arrived:
            self._submit()
        end = time.monotonic() + max(0.0, wait)
        running = self._running
        while task_id not in self._arrived and running is not None and not running.done:
            for arrived in running.wait(max(0.0, end - time.monotonic())):
                self._arrived[arrived.task_id] = arrived
            if time.monotonic() >= end:
                break
        outcome = self._arrived.pop(task_id, None)
        if outcome is None:
            return None
        for url, content in outcome.uploads.items():
            self._exchange.put(url, content)
        for event in outcome.events:
            job = event.get("job_id")
            if isinstance(job, str):
                self._events.setdefault(job, []).append(dict(event))
        return dict(outcome.reply)

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """Every monitor event of ``job_id`` the nodes sent with the replies taken so far."""
        return list(self._events.get(job_id, ()))

    def close(self) -> None:
        """Cancel what still runs and drop the outcomes nobody took (the engine itself stays open)."""
        self._queued.clear()
        self._drop()
