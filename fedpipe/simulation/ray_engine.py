"""The Ray engine: a pool of Ray actors, each hosting many virtual nodes, streams each round's outcomes.

Each actor builds its own ``VirtualNodes`` from the simulation's ``NodesSpec`` (put in the object
store once) and keeps what a process keeps warm (the plan module, the round's shared files)
across calls. A node always goes to the same actor (a stable hash of its id), so that its
actor's caches stay warm. A round puts its shared files in the object store once; its tasks are
grouped per actor, and each group is sent at once as a few calls ("chunks", which the actor runs
in order), with the files by reference: each finished chunk's outcomes come back while the
others run, and a cancelled round drops its chunks not yet started. Tasks and outcomes cross as
plain data (dicts, strings, bytes). An actor that dies mid-round is replaced, and the tasks of
its unfinished chunks run again on another actor: a chunk that died returned nothing, so no
outcome is taken twice, and a node's re-run starts from the state its request names (the round
saves state last, under a new id), not from whatever the dead attempt may have left.
"""

import logging
import math
import socket
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from attrs import frozen
from returns.result import Failure

from fedpipe.errors import ErrorCode, RoundError
from fedpipe.reply import header_of, to_reply
from fedpipe.settings import GpuPolicy
from fedpipe.simulation.engine import NodesSpec, RunningBatch
from fedpipe.simulation.nodes import VirtualNodes
from fedpipe.simulation.transport import RoundBatch, SimTask, TaskOutcome

__all__ = ["CHUNKS_PER_ACTOR", "MAX_CHUNK", "NodeHost", "RayEngine", "chunked", "slot_of"]

_ATTEMPTS = 3
"""How many actors a task's call may die on before its nodes are given a failure reply."""

_MIN_WAIT = 0.05
"""The shortest wait for a running call (seconds), as the inline engine's (``engine._MIN_WAIT``)."""

CHUNKS_PER_ACTOR = 8
"""How many calls an actor's share of a round is split into, by default: progress 8 times a round."""

MAX_CHUNK = 32
"""The most tasks one call runs, by default: bounds what a crash re-runs and how late progress comes."""

_START_S = 300.0
"""How long the pool's actors may take to start (a cluster short of CPUs never starts some)."""

_SETTLE_S = 30.0
"""How long the other calls of an actor that died may take to report their end."""


def slot_of(node_id: str, actors: int) -> int:
    """The actor (0 .. actors-1) that hosts ``node_id``: the same in every process and run.

    >>> slot_of("sim-0001", 4) == slot_of("sim-0001", 4), 0 <= slot_of("sim-0002", 3) < 3
    (True, True)
    """
    return zlib.crc32(node_id.encode("utf-8")) % actors


def chunked(tasks: Sequence[SimTask], size: int | None = None) -> list[tuple[SimTask, ...]]:
    """``tasks`` in order, cut into calls of ``size`` (default: ``CHUNKS_PER_ACTOR`` calls of at most ``MAX_CHUNK``).

    >>> from fedpipe.simulation.transport import SimTask
    >>> tasks = [SimTask(task_id=str(i), node_id="n", request={}) for i in range(20)]
    >>> [len(c) for c in chunked(tasks)], [len(c) for c in chunked(tasks, 8)], chunked([])
    ([3, 3, 3, 3, 3, 3, 2], [8, 8, 4], [])
    """
    if size is None:
        size = min(MAX_CHUNK, math.ceil(len(tasks) / CHUNKS_PER_ACTOR))
    size = max(1, size)
    return [tuple(tasks[i : i + size]) for i in range(0, len(tasks), size)]


def _check_address(address: str) -> None:
    """Fail fast (ConnectionError, one line) when nothing listens at a ``HOST:PORT`` address.

    Ray itself retries an unreachable cluster for minutes, logging every attempt; a Ray client
    address (``ray://...``) or ``auto`` is left to Ray.
    """
    if "://" in address or address == "auto":
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"a Ray address is HOST:PORT, not {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError:
        raise ConnectionError(f"no Ray cluster answers at {address}") from None


def _check_gpus(gpus: int | None, per_actor: float | None, address: str | None) -> None:
    """Refuse GPU settings Ray would refuse later, never schedule, or not apply, in one line (ValueError)."""
    if gpus is not None and address is not None:
        raise ValueError("the GPUs are those of a local Ray: a cluster joined at an address has its own")
    if gpus is not None and gpus < 0:
        raise ValueError(f"a Ray's GPUs are a whole number >= 0, not {gpus!r}")
    if per_actor is None:
        return
    if not (math.isfinite(per_actor) and per_actor > 0):
        raise ValueError(f"an actor's share of a GPU is a number > 0, not {per_actor!r}")
    if per_actor > 1 and per_actor != int(per_actor):
        raise ValueError(
            f"an actor's share of a GPU is a fraction up to 1 or a whole number, not {per_actor:g}"
        )


def _gpu_slots(resources: Mapping[str, float], per_actor: float) -> int:
    """How many actors of ``per_actor`` GPU the cluster's GPUs hold; ValueError when none."""
    total = float(resources.get("GPU", 0))
    slots = math.floor(total / per_actor + 1e-9)
    if slots < 1:
        raise ValueError(f"actors of {per_actor:g} GPU each: the Ray cluster has {total:g} GPUs")
    return slots


def _pool_size(resources: Mapping[str, float], actors: int | None, per_actor: float | None) -> int:
    """The pool's size: ``actors``, or one per CPU of the cluster; no more than its GPUs hold at ``per_actor``.

    >>> _pool_size({"CPU": 8.0, "GPU": 1.0}, None, 0.25), _pool_size({"CPU": 2.0}, None, None)
    (4, 2)
    """
    if actors is None:
        actors = max(1, int(resources.get("CPU", 1)))
        return min(actors, _gpu_slots(resources, per_actor)) if per_actor else actors
    if per_actor and actors > _gpu_slots(resources, per_actor):
        raise ValueError(
            f"{actors} actors of {per_actor:g} GPU each need more than the cluster's "
            f"{resources.get('GPU', 0):g} GPUs"
        )
    return actors


def _task_data(task: SimTask) -> dict[str, Any]:
    return {"task_id": task.task_id, "node_id": task.node_id, "request": dict(task.request)}


def _outcome_data(outcome: TaskOutcome) -> dict[str, Any]:
    return {
        "task_id": outcome.task_id,
        "reply": dict(outcome.reply),
        "events": [dict(e) for e in outcome.events],
        "uploads": dict(outcome.uploads),
    }


def _outcome(data: Mapping[str, Any]) -> TaskOutcome:
    return TaskOutcome(
        task_id=data["task_id"],
        reply=data["reply"],
        events=tuple(data["events"]),
        uploads=data["uploads"],
    )


class NodeHost:
    """What one actor runs: the virtual nodes of ``spec``, built once, running the tasks it is sent."""

    def __init__(self, spec: NodesSpec) -> None:
        # the nodes' own log lines would repeat, per node, what the researcher's round lines say
        node_log = logging.getLogger("fedpipe.node")
        node_log.addHandler(logging.NullHandler())
        node_log.propagate = False
        import ray

        # an actor that holds a share of a GPU (Ray set its CUDA_VISIBLE_DEVICES) lets its nodes use it
        self._gpus = tuple(str(g) for g in ray.get_gpu_ids())
        self._nodes: VirtualNodes = spec.build(gpu=GpuPolicy(gpu=True) if self._gpus else None)
        self._files: tuple[str, Mapping[str, bytes]] = ("", {})

    def run(self, tasks: Sequence[Mapping[str, Any]], shared: Sequence[Any]) -> list[dict[str, Any]]:
        """Run ``tasks`` (plain task data) in order on their nodes; their outcomes as plain data.

        ``shared`` holds the object reference of the round's files; passed inside a list, Ray
        leaves it unresolved, so the files are read once per round, not once per call.
        """
        import ray

        (ref,) = shared
        if self._files[0] != ref.hex():
            self._files = (ref.hex(), ray.get(ref))
        files = self._files[1]
        context = ray.get_runtime_context()
        outcomes = []
        for task in tasks:
            if context.is_canceled():
                # the round gave up on this call: its outcomes would be dropped unread
                break
            sim = SimTask(task_id=task["task_id"], node_id=task["node_id"], request=task["request"])
            outcomes.append(_outcome_data(self._nodes.run(sim, files)))
        return outcomes

    def where(self) -> tuple[str, int]:
        """The Ray node id and process id this host runs in."""
        import os

        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()

    def gpus(self) -> tuple[tuple[str, ...], bool]:
        """The ids of the GPUs Ray gave this actor, and whether its nodes may train on a GPU."""
        return self._gpus, self._nodes.gpu is not None and self._nodes.gpu.gpu


def _lost(task: SimTask) -> TaskOutcome:
    """The reply of a node whose actor died on every attempt: a failure, like an unreachable node's."""
    error = RoundError(
        code=ErrorCode.INTERNAL,
        step="(engine)",
        detail=f"virtual node {task.node_id}: its Ray actor died {_ATTEMPTS} times",
        public="The simulated node's worker stopped before it replied.",
    )
    return TaskOutcome(
        task_id=task.task_id, reply=to_reply(Failure(error), header_of(task.request, task.node_id)).to_dict()
    )


@frozen(kw_only=True)
class _Call:
    """One call in flight: the tasks it runs, the actor it was sent to (by slot), its attempt."""

    slot: int
    actor: Any
    tasks: tuple[SimTask, ...]
    attempt: int


class _RayBatch:
    """A batch on the pool: its calls in flight, their outcomes handed out as each call ends."""

    def __init__(self, engine: "RayEngine", files: Any, tasks: int) -> None:
        self._engine = engine
        self._ray = engine._ray
        self._files = files
        self._calls: dict[Any, _Call] = {}
        self._pending = tasks

    @property
    def pending(self) -> int:
        """How many tasks have not had their outcome handed out (0 once cancelled)."""
        return self._pending

    @property
    def done(self) -> bool:
        """Whether nothing more will come out of ``wait``."""
        return self._pending == 0

    def send(self, calls: Sequence[tuple[int, tuple[SimTask, ...], int]]) -> None:
        """Send each ``(slot, tasks, attempt)`` to the actor of ``slot``, then call ``on_submit``."""
        actors = self._engine._actors
        for slot, tasks, attempt in calls:
            actor = actors[slot]
            ref = actor.run.remote([_task_data(t) for t in tasks], [self._files])
            self._calls[ref] = _Call(slot=slot, actor=actor, tasks=tasks, attempt=attempt)
        if calls and self._engine._on_submit is not None:
            self._engine._on_submit(self._engine.actors)

    def wait(self, timeout: float) -> Sequence[TaskOutcome]:
        """The outcomes of every call that ended, waiting up to ``timeout`` for the first one."""
        ray = self._ray
        if not self._calls:
            return []
        refs = list(self._calls)
        # a positive wait of at least _MIN_WAIT: a call that ends sooner is seen at once, and a
        # researcher polling many tasks with very short waits would otherwise spend on polls
        # the CPU that the actors share with it
        wait_s = max(timeout, _MIN_WAIT) if timeout > 0 else 0.0
        first, _ = ray.wait(refs, num_returns=1, timeout=wait_s)
        if not first:
            return []
        ended, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        outcomes: list[TaskOutcome] = []
        again: list[_Call] = []
        for ref in ended:
            self._settle(ref, outcomes, again)
        if again:
            # a dead actor's other calls die with it: settle them now, and send all of them again at once
            dead = {id(c.actor) for c in again}
            doomed = [ref for ref, c in self._calls.items() if id(c.actor) in dead]
            if doomed:
                ended, _ = ray.wait(doomed, num_returns=len(doomed), timeout=_SETTLE_S)
                for ref in ended:
                    self._settle(ref, outcomes, again)
            self._retry(again, outcomes)
        self._pending -= len(outcomes)
        return outcomes

    def _settle(self, ref: Any, outcomes: list[TaskOutcome], again: list[_Call]) -> None:
        ray = self._ray
        call = self._calls.pop(ref)
        try:
            done = ray.get(ref)
        except ray.exceptions.RayActorError:
            # the call died whole: none of its outcomes exist, so none can be taken twice
            self._engine._replace(call.slot, call.actor)
            again.append(call)
            return
        outcomes.extend(_outcome(data) for data in done)

    def _retry(self, failed: Sequence[_Call], outcomes: list[TaskOutcome]) -> None:
        n = len(self._engine._actors)
        calls = []
        for call in failed:
            if call.attempt + 1 >= _ATTEMPTS:
                outcomes.extend(_lost(task) for task in call.tasks)
                continue
            # first to a warm neighbour; after that to the slot's new actor
            slot = (call.slot + 1) % n if call.attempt == 0 else call.slot
            calls.append((slot, call.tasks, call.attempt + 1))
        self.send(calls)

    def cancel(self) -> None:
        """Cancel the calls not started (an actor runs its calls in order); running ones end unread."""
        for ref in self._calls:
            self._ray.cancel(ref)
        self._calls.clear()
        self._pending = 0


class RayEngine:
    """Runs each round's tasks on a pool of Ray actors hosting the virtual nodes of ``spec``.

    ``address`` joins a running Ray cluster; without it a local Ray is started with ``num_cpus``
    CPUs (default: all of this machine) and stopped by ``close``. A Ray already started in this
    process is used as it is and left running. ``actors`` is the pool's size (default: one per
    CPU of the cluster, or ``num_cpus`` with ``address``); each actor holds one CPU and, with
    ``gpus_per_actor``, that share of a GPU (the pool is then no larger than the cluster's GPUs
    hold; ``gpus`` sets those of a local Ray), whose nodes may train there. ``chunk``
    is the most tasks one call runs (default: ``chunked``'s). ``on_submit`` (for tests) is
    called with the actor handles each time calls are sent: a round's, then any sent again.
    """

    def __init__(
        self,
        spec: NodesSpec,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        gpus: int | None = None,
        gpus_per_actor: float | None = None,
        actors: int | None = None,
        chunk: int | None = None,
        on_submit: Callable[[Sequence[Any]], None] | None = None,
    ) -> None:
        _check_gpus(gpus, gpus_per_actor, address)
        if actors is not None and actors < 1:
            raise ValueError(f"the pool needs at least one actor, not {actors}")
        if chunk is not None and chunk < 1:
            raise ValueError(f"a call runs at least one task, not {chunk}")
        import ray

        self._ray = ray
        self._owns_runtime = False
        if not ray.is_initialized():
            options: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": logging.ERROR,
            }
            if address is None:
                # "local": a new Ray of its own, even where a `ray start` cluster runs on this machine
                ray.init(address="local", num_cpus=num_cpus, num_gpus=gpus, **options)
            else:
                _check_address(address)
                ray.init(address=address, **options)
            self._owns_runtime = True
        if actors is None:
            actors = num_cpus if address is not None and num_cpus else None
        self._actors: list[Any] = []
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        try:
            actors = _pool_size(resources, actors, gpus_per_actor)
        except ValueError:
            self.close()
            raise
        self._host = ray.remote(num_cpus=1, num_gpus=gpus_per_actor or 0, max_restarts=0, max_task_retries=0)(
            NodeHost
        )
        self._spec = ray.put(spec)
        self._actors = [self._start() for _ in range(actors)]
        self._chunk = chunk
        self._on_submit = on_submit
        # a round's deadline runs from its start: the pool's start-up must not eat into the first one
        ready, _ = ray.wait([a.where.remote() for a in self._actors], num_returns=actors, timeout=_START_S)
        if len(ready) < actors:
            self.close()
            raise RuntimeError(
                f"{actors - len(ready)} of the {actors} Ray actors did not start in {_START_S:.0f} s"
            )

    def _start(self) -> Any:
        return self._host.remote(self._spec)

    def _replace(self, slot: int, dead: Any) -> None:
        """Give ``slot`` a new actor, unless its dead one was replaced already."""
        if self._actors[slot] is dead:
            self._actors[slot] = self._start()

    @property
    def actors(self) -> tuple[Any, ...]:
        """The pool's actor handles, by slot (a dead actor's slot gets a new one)."""
        return tuple(self._actors)

    def submit(self, batch: RoundBatch) -> RunningBatch:
        """Send ``batch`` to the pool: each actor's tasks in a few calls, the files once in the object store."""
        n = len(self._actors)
        groups: dict[int, list[SimTask]] = {}
        for task in batch.tasks:
            groups.setdefault(slot_of(task.node_id, n), []).append(task)
        running = _RayBatch(self, self._ray.put(dict(batch.files)), len(batch.tasks))
        running.send([(slot, c, 0) for slot, tasks in groups.items() for c in chunked(tasks, self._chunk)])
        return running

    def where(self) -> list[tuple[str, int]]:
        """The Ray node id and process id of each actor of the pool."""
        return list(self._ray.get([a.where.remote() for a in self._actors]))

    def close(self) -> None:
        """Stop the pool's actors, and the local Ray if this engine started it."""
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors.clear()
        if self._owns_runtime:
            self._ray.shutdown()
