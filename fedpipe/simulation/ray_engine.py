"""The Ray engine: a pool of Ray actors, each hosting many virtual nodes, runs each round's batch.

Each actor builds its own ``VirtualNodes`` from the simulation's ``NodesSpec`` (put in the object
store once) and keeps what a process keeps warm (the plan module) across rounds. A node always
goes to the same actor (a stable hash of its id), so that its actor's caches stay warm. A round
puts its shared files in the object store once; its tasks are grouped per actor and sent as one
call per actor, with the files by reference. Tasks and outcomes cross as plain data (dicts,
strings, bytes). An actor that dies mid-round is replaced, and the tasks of its call run again
on another actor: a call that died returned nothing, so no outcome is taken twice, and a node's
re-run starts from the state its request names (the round saves state last, under a new id),
not from whatever the dead attempt may have left.
"""

import logging
import socket
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from returns.result import Failure

from fedpipe.errors import ErrorCode, RoundError
from fedpipe.reply import header_of, to_reply
from fedpipe.simulation.engine import NodesSpec
from fedpipe.simulation.nodes import VirtualNodes
from fedpipe.simulation.transport import RoundBatch, SimTask, TaskOutcome

__all__ = ["NodeHost", "RayEngine", "slot_of"]

_ATTEMPTS = 3
"""How many actors a task's call may die on before its nodes are given a failure reply."""


def slot_of(node_id: str, actors: int) -> int:
    """The actor (0 .. actors-1) that hosts ``node_id``: the same in every process and run.

    >>> slot_of("sim-0001", 4) == slot_of("sim-0001", 4), 0 <= slot_of("sim-0002", 3) < 3
    (True, True)
    """
    return zlib.crc32(node_id.encode("utf-8")) % actors


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
        self._nodes: VirtualNodes = spec.build()

    def run(self, tasks: Sequence[Mapping[str, Any]], files: Mapping[str, bytes]) -> list[dict[str, Any]]:
        """Run ``tasks`` (plain task data) in order on their nodes; their outcomes as plain data."""
        outcomes = []
        for task in tasks:
            sim = SimTask(task_id=task["task_id"], node_id=task["node_id"], request=task["request"])
            outcomes.append(_outcome_data(self._nodes.run(sim, files)))
        return outcomes

    def where(self) -> tuple[str, int]:
        """The Ray node id and process id this host runs in."""
        import os

        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()


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


class RayEngine:
    """Runs each round's tasks on a pool of Ray actors hosting the virtual nodes of ``spec``.

    ``address`` joins a running Ray cluster; without it a local Ray is started with ``num_cpus``
    CPUs (default: all of this machine) and stopped by ``close``. A Ray already started in this
    process is used as it is and left running. ``actors`` is the pool's size (default: one per
    CPU of the cluster, or ``num_cpus`` with ``address``); each actor holds one CPU.
    ``on_submit`` (for tests) is called with the actor handles once a round's calls are sent.
    """

    def __init__(
        self,
        spec: NodesSpec,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        actors: int | None = None,
        on_submit: Callable[[Sequence[Any]], None] | None = None,
    ) -> None:
        if actors is not None and actors < 1:
            raise ValueError(f"the pool needs at least one actor, not {actors}")
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
                ray.init(address="local", num_cpus=num_cpus, **options)
            else:
                _check_address(address)
                ray.init(address=address, **options)
            self._owns_runtime = True
        if actors is None:
            actors = num_cpus if address is not None and num_cpus else None
        if actors is None:
            resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
            actors = max(1, int(resources.get("CPU", 1)))
        self._host = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(NodeHost)
        self._spec = ray.put(spec)
        self._actors: list[Any] = [self._start() for _ in range(actors)]
        self._on_submit = on_submit

    def _start(self) -> Any:
        return self._host.remote(self._spec)

    @property
    def actors(self) -> tuple[Any, ...]:
        """The pool's actor handles, by slot (a dead actor's slot gets a new one)."""
        return tuple(self._actors)

    def run(self, batch: RoundBatch) -> Sequence[TaskOutcome]:
        """Run ``batch`` on the pool: one call per actor, the files shared through the object store."""
        ray = self._ray
        files = ray.put(dict(batch.files))
        n = len(self._actors)
        groups: dict[int, list[SimTask]] = {}
        for task in batch.tasks:
            groups.setdefault(slot_of(task.node_id, n), []).append(task)
        outcomes: dict[str, TaskOutcome] = {}
        for attempt in range(_ATTEMPTS):
            if not groups:
                break
            calls = {
                slot: self._actors[slot].run.remote([_task_data(t) for t in tasks], files)
                for slot, tasks in groups.items()
            }
            if self._on_submit is not None:
                self._on_submit(self.actors)
            again: dict[int, list[SimTask]] = {}
            for slot, ref in calls.items():
                try:
                    done = ray.get(ref)
                except ray.exceptions.RayActorError:
                    # the call died whole: none of its outcomes exist, so none can be taken twice
                    self._actors[slot] = self._start()
                    again.setdefault((slot + 1) % n if attempt == 0 else slot, []).extend(groups[slot])
                    continue
                for data in done:
                    outcomes.setdefault(data["task_id"], _outcome(data))
            groups = again
        for tasks in groups.values():
            for task in tasks:
                outcomes.setdefault(task.task_id, _lost(task))
        return list(outcomes.values())

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
