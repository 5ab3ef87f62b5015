"""Engines: what runs a round's batch of tasks on the virtual nodes.

``InlineEngine`` runs them in this process, one after another. ``RayEngine``
(``fedpipe.simulation.ray_engine``, with the optional ``ray`` extra) takes the same ``RoundBatch``:
it puts the batch's shared files in Ray's object store once per round, groups the tasks by the
actor that hosts their node (each actor a ``VirtualNodes`` built from the same ``NodesSpec``)
and gathers the ``TaskOutcome``s; the board and the researcher stay as they are.
"""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from attrs import field, frozen

from fedpipe.simulation.nodes import VirtualNodes
from fedpipe.simulation.transport import RoundBatch, TaskOutcome

__all__ = ["ENGINES", "Engine", "EngineOptions", "InlineEngine", "NodesSpec", "make_engine"]

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

    def build(self) -> VirtualNodes:
        """The virtual nodes this spec describes (nothing is made on disk until a node runs)."""
        return VirtualNodes(
            Path(self.workdir),
            ids=self.ids,
            features=self.features,
            labels=self.labels,
            columns=self.columns,
            partitions=self.partitions,
            dataset_id=self.dataset_id,
            plan_source=self.plan_source,
        )


@frozen(kw_only=True)
class EngineOptions:
    """How an engine runs; the inline engine ignores them.

    ``address``: the Ray cluster to join (None: start a local one, stopped again at the end).
    ``num_cpus``: the CPUs of that local Ray; with ``address``, the number of actors. ``actors``:
    the pool's size (default: one per CPU). ``on_submit``: called with the pool's actor handles
    once a round's calls are sent and before they are gathered (how tests crash an actor
    mid-round).
    """

    address: str | None = None
    num_cpus: int | None = None
    actors: int | None = None
    on_submit: Callable[[Sequence[Any]], None] | None = field(default=None, eq=False, repr=False)


class Engine(Protocol):
    """Runs a batch of tasks on virtual nodes and returns one outcome per task (any order)."""

    def run(self, batch: RoundBatch) -> Sequence[TaskOutcome]:
        """Run every task of ``batch``."""
        ...

    def close(self) -> None:
        """Release the engine's workers."""
        ...


class InlineEngine:
    """Runs every task in this process, in order, on ``nodes``."""

    def __init__(self, nodes: VirtualNodes) -> None:
        self.nodes = nodes

    def run(self, batch: RoundBatch) -> Sequence[TaskOutcome]:
        """Run the tasks one after another."""
        return [self.nodes.run(task, batch.files) for task in batch.tasks]

    def close(self) -> None:
        """Nothing to release."""


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
            actors=opts.actors,
            on_submit=opts.on_submit,
        )
    raise ValueError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")
