"""Simulated federations: many virtual nodes running the real node round.

``simulate(config, nodes=N, ...)`` (and ``fedpipe simulate``) runs an experiment of
``fedpipe run`` on N virtual nodes of this machine: each has its own node root, made the first
time it is sampled, and runs the real round; only the transport is in memory. ``Engine`` is what
runs a round's tasks; ``InlineEngine`` runs them in this process. The names are imported on
first use, so that ``fedpipe.simulation.cli`` loads without the training stack.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedpipe.simulation.api import SimulationError, sampler, simulate
    from fedpipe.simulation.engine import Engine, EngineOptions, InlineEngine, NodesSpec
    from fedpipe.simulation.nodes import VirtualNodes, node_ids
    from fedpipe.simulation.transport import MemoryBoard, MemoryExchange, RoundBatch, SimTask, TaskOutcome

_HOMES = {
    "SimulationError": "api",
    "sampler": "api",
    "simulate": "api",
    "Engine": "engine",
    "EngineOptions": "engine",
    "InlineEngine": "engine",
    "NodesSpec": "engine",
    "VirtualNodes": "nodes",
    "node_ids": "nodes",
    "MemoryBoard": "transport",
    "MemoryExchange": "transport",
    "RoundBatch": "transport",
    "SimTask": "transport",
    "TaskOutcome": "transport",
}

__all__ = [
    "Engine",
    "EngineOptions",
    "InlineEngine",
    "MemoryBoard",
    "MemoryExchange",
    "NodesSpec",
    "RoundBatch",
    "SimTask",
    "SimulationError",
    "TaskOutcome",
    "VirtualNodes",
    "node_ids",
    "sampler",
    "simulate",
]


def __getattr__(name: str) -> Any:
    """The public names, imported from their module on first use."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
