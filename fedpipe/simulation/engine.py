"""Engines: what runs a round's batch of tasks on the virtual nodes.

``InlineEngine`` runs them in this process, one after another. An engine on a cluster takes the
same ``RoundBatch``: it sends the batch's shared files once (for Ray, one object-store put per
round), groups the tasks by the worker that hosts their node (each worker a ``VirtualNodes`` over
the same folder and partitions) and gathers the ``TaskOutcome``s; the board and the researcher
stay as they are.
"""

from collections.abc import Sequence
from typing import Protocol

from fedpipe.simulation.nodes import VirtualNodes
from fedpipe.simulation.transport import RoundBatch, TaskOutcome

__all__ = ["ENGINES", "Engine", "InlineEngine", "make_engine"]

ENGINES = ("inline",)
"""The engines ``simulate`` knows."""


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


def make_engine(name: str, nodes: VirtualNodes) -> Engine:
    """The engine called ``name`` (one of ``ENGINES``) over ``nodes``; ValueError for another name."""
    if name == "inline":
        return InlineEngine(nodes)
    raise ValueError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")
