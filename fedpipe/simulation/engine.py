"""Engines: what runs a round's batch of tasks on the virtual nodes, streaming their outcomes back.

An ``Engine`` takes a round's ``RoundBatch`` with ``submit`` and gives back a ``RunningBatch``,
which hands out the ``TaskOutcome``s as the nodes finish (``wait``) and can be cancelled, so
that the researcher's round deadline holds in a simulation as with deployed nodes: a node that
has not replied by then is left behind, and what it has not started is never run.

``InlineEngine`` runs the tasks in this process, one at a time, while someone waits for them.
``RayEngine`` (``fedpipe.simulation.ray_engine``, with the optional ``ray`` extra) takes the same
``RoundBatch``: it puts the batch's shared files in Ray's object store once per round, sends
each actor (a ``VirtualNodes`` built from the same ``NodesSpec``) the tasks of its nodes in a
few chunks, and hands out each chunk's outcomes as it finishes; the board and the researcher
stay as they are.
"""

import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from attrs import field, frozen

from fedpipe.settings import GpuPolicy
from fedpipe.simulation.nodes import VirtualNodes
from fedpipe.simulation.transport import RoundBatch, SimTask, TaskOutcome

__all__ = [
    "ENGINES",
    "Engine",
    "EngineOptions",
    "InlineEngine",
    "NodesSpec",
    "RunningBatch",
    "make_engine",
]

ENGINES = ("inline", "ray")
"""The engines ``simulate`` knows."""


@frozen(kw_only=True)
class NodesSpec:
    """What it takes to build the ``VirtualNodes`` of a simulation, in any process that sees ``workdir``.

    Plain data only (paths as text, arrays, strings), so that a worker process gets it once and
    builds its own ``VirtualNodes`` over the same node roots and partitions.
    """

    workdir: str
    ids: tuple[str, ...]
    features: np.ndarray = field(eq=False, repr=False)
    labels: np.ndarray = field(eq=False, repr=False)
    columns: tuple[str, ...]
    partitions: tuple[np.ndarray, ...] = field(eq=False, repr=False)
    dataset_id: str
    plan_source: str = field(repr=False)

    def build(self, *, gpu: GpuPolicy | None = None) -> VirtualNodes:
        """The virtual nodes this spec describes (nothing is made on disk until a node runs).

        ``gpu``: the nodes' GPU policy (default: their roots' own, which allows no GPU).
        """
        return VirtualNodes(
            Path(self.workdir),
            ids=self.ids,
            features=self.features,
            labels=self.labels,
            columns=self.columns,
            partitions=self.partitions,
            dataset_id=self.dataset_id,
            plan_source=self.plan_source,
            gpu=gpu,
        )


@frozen(kw_only=True)
class EngineOptions:
    """How an engine runs; the inline engine ignores them.

    ``address``: the Ray cluster to join (None: start a local one, stopped again at the end).
    ``num_cpus``: the CPUs of that local Ray; with ``address``, the number of actors. ``gpus``: the
    GPUs of that local Ray (default: those Ray finds). ``gpus_per_actor``: the share of a GPU each
    actor holds (a fraction up to 1, or a whole number; default: none), its nodes then allowed to
    train there. ``actors``: the pool's size (default: one per CPU, and no more than the GPUs
    hold at ``gpus_per_actor``). ``chunk``: how many tasks one actor call runs at
    most (default: the Ray engine's choice, a few calls per actor and round). ``on_submit``:
    called with the pool's actor handles each time calls are sent (a round's, then any re-sent
    after an actor died), before their outcomes are gathered (how tests crash an actor
    mid-round).
    """

    address: str | None = None
    num_cpus: int | None = None
    gpus: int | None = None
    gpus_per_actor: float | None = None
    actors: int | None = None
    chunk: int | None = None
    on_submit: Callable[[Sequence[Any]], None] | None = field(default=None, eq=False, repr=False)


class RunningBatch(Protocol):
    """A submitted batch: its outcomes, handed out as its tasks finish, once each, in any order.

    Not thread-safe: one caller polls it. Once ``cancel`` is called, or every outcome was handed
    out, it is ``done`` and ``wait`` returns nothing.
    """

    @property
    def pending(self) -> int:
        """How many tasks have not had their outcome handed out (0 once cancelled)."""
        ...

    @property
    def done(self) -> bool:
        """Whether nothing more will come out of ``wait`` (every outcome handed out, or cancelled)."""
        ...

    def wait(self, timeout: float) -> Sequence[TaskOutcome]:
        """The outcomes finished since the last call: blocks up to ``timeout`` seconds for at least one.

        Returns ``[]`` when ``timeout`` passes first, or when the batch is ``done``.
        """
        ...

    def cancel(self) -> None:
        """Give up the tasks still pending: those not started never run; running ones finish, unread."""
        ...


class Engine(Protocol):
    """Runs batches of tasks on virtual nodes: one outcome per task, streamed back (any order)."""

    def submit(self, batch: RoundBatch) -> RunningBatch:
        """Start running ``batch``; its outcomes come out of the returned ``RunningBatch``."""
        ...

    def close(self) -> None:
        """Release the engine's workers (pending tasks are dropped; a running one is let finish)."""
        ...


_MIN_WAIT = 0.05
"""The shortest wait of the inline engine for a running task (seconds); see ``_InlineBatch.wait``."""


class _InlineBatch:
    """A batch of the inline engine: its tasks start one at a time, only while a caller waits."""

    def __init__(self, worker: ThreadPoolExecutor, nodes: VirtualNodes, batch: RoundBatch) -> None:
        self._worker = worker
        self._nodes = nodes
        self._files = batch.files
        self._todo: deque[SimTask] = deque(batch.tasks)
        self._running: Future[TaskOutcome] | None = None
        self._pending = len(batch.tasks)

    @property
    def pending(self) -> int:
        """How many tasks have not had their outcome handed out (0 once cancelled)."""
        return self._pending

    @property
    def done(self) -> bool:
        """Whether nothing more will come out of ``wait``."""
        return self._pending == 0

    def _start(self) -> None:
        task = self._todo.popleft()
        self._running = self._worker.submit(self._nodes.run, task, self._files)

    def wait(self, timeout: float) -> Sequence[TaskOutcome]:
        """The next finished outcome (at most one), waiting up to ``timeout``; the next task starts meanwhile.

        A positive ``timeout`` is taken as at least ``_MIN_WAIT``: the outcome of a task that
        finishes sooner is returned at once, and a caller polling many tasks with very short
        waits would otherwise wake this thread every few milliseconds, each time taking the
        interpreter lock from the node's worker (measured: a third more CPU per node round).
        """
        if timeout > 0:
            timeout = max(timeout, _MIN_WAIT)
        end = time.monotonic() + max(0.0, timeout)
        if self._running is None:
            if not self._todo or timeout <= 0:
                # nobody waits: a task the deadline left behind is never started
                return []
            self._start()
        assert self._running is not None
        try:
            outcome = self._running.result(timeout=max(0.0, end - time.monotonic()))
        except FutureTimeout:
            return []
        self._running = None
        self._pending -= 1
        if self._todo and time.monotonic() < end:
            # keep the worker busy while the caller still waits: it reads this outcome meanwhile
            self._start()
        return [outcome]

    def cancel(self) -> None:
        """Drop the tasks not started; a running one finishes on the worker, its outcome unread."""
        self._todo.clear()
        if self._running is not None:
            self._running.cancel()  # only takes when it is still queued behind an earlier batch
            self._running = None
        self._pending = 0


class InlineEngine:
    """Runs the tasks in this process, one at a time, in the order of each batch, on ``nodes``.

    A task starts only while someone waits on its batch (``RunningBatch.wait``), so that the
    tasks a round's deadline left behind are never run. It runs on one worker thread, so that
    ``wait`` returns on time even while a slow node runs: that node's outcome comes later (or
    never, when the batch is cancelled), as a deployed node's late reply would. One task at a
    time: a new batch's first task waits for a running one of a cancelled batch to finish.

    >>> engine = InlineEngine(VirtualNodes(Path("."), ids=(), features=np.zeros((0, 1)),
    ...     labels=np.zeros(0), columns=("x", "label"), partitions=(), dataset_id="d", plan_source=""))
    >>> running = engine.submit(RoundBatch(tasks=(), files={}))
    >>> running.done, list(running.wait(0.1))
    (True, [])
    >>> engine.close()
    """

    def __init__(self, nodes: VirtualNodes) -> None:
        self.nodes = nodes
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedpipe-sim")

    def submit(self, batch: RoundBatch) -> RunningBatch:
        """The running ``batch``: nothing runs until its first ``wait``."""
        return _InlineBatch(self._worker, self.nodes, batch)

    def close(self) -> None:
        """Stop the worker once its running task (if any) has finished; queued tasks are dropped."""
        self._worker.shutdown(wait=True, cancel_futures=True)


def make_engine(name: str, spec: NodesSpec, options: EngineOptions | None = None) -> Engine:
    """The engine called ``name`` (one of ``ENGINES``) over the nodes of ``spec``; ValueError for another name.

    ``"ray"`` imports Ray only now (ImportError when the ``ray`` extra is not installed) and
    connects to it (``RuntimeError``/``ConnectionError`` from Ray when it cannot).
    """
    if name == "inline":
        return InlineEngine(spec.build())
    if name == "ray":
        from fedpipe.simulation.ray_engine import RayEngine

        opts = options or EngineOptions()
        return RayEngine(
            spec,
            address=opts.address,
            num_cpus=opts.num_cpus,
            gpus=opts.gpus,
            gpus_per_actor=opts.gpus_per_actor,
            actors=opts.actors,
            chunk=opts.chunk,
            on_submit=opts.on_submit,
        )
    raise ValueError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")
