"""Simulations at scale: more nodes than shipped rows, and what an idle virtual node costs in memory."""

import gc
import tracemalloc
from pathlib import Path

import attrs
import numpy as np
import pytest

from fedpipe.bootstrap import open_owner
from fedpipe.researcher.config import ExperimentConfig, load_config
from fedpipe.researcher.experiment import RoundRecord
from fedpipe.simulation import SimulationError, simulate
from fedpipe.simulation.nodes import node_ids

EXAMPLE = Path(__file__).parents[2] / "examples" / "simulation.toml"


def _config(rounds: int) -> ExperimentConfig:
    """The shipped simulation study (logistic regression, FedAvg) with ``rounds`` rounds."""
    return attrs.evolve(load_config(EXAMPLE), rounds=rounds)


def test_generated_rows_give_each_node_its_share(tmp_path: Path) -> None:
    """rows = 2000 grows the 569 shipped rows (so that N may exceed 569): 10 nodes hold 200 rows each."""
    with pytest.raises(SimulationError, match="more than the dataset's 569 rows"):
        simulate(_config(1), nodes=700, workdir=tmp_path / "refused")
    result = simulate(_config(2), nodes=10, rows=2000, seed=1, workdir=tmp_path / "run")
    assert all(n.success for r in result.rounds for n in r.results)
    # the records keep no node's parameters: they went into the global model
    assert all(set(n.results) <= {"metadata"} for r in result.rounds for n in r.results)
    assert result.final_metric is not None and result.final_metric >= 0.85
    sizes = []
    for node in node_ids(10):
        with open_owner(tmp_path / "run" / "nodes" / node) as owner:
            record = owner.datasets.get("breast-cancer").unwrap()
        assert record is not None
        sizes.append(len(np.loadtxt(record.path, delimiter=",", skiprows=1, ndmin=2)))
    assert sizes == [200] * 10


@pytest.mark.parametrize("rows", [0, -3])
def test_a_bad_row_count_is_a_one_line_error(tmp_path: Path, rows: int) -> None:
    with pytest.raises(SimulationError) as caught:
        simulate(_config(1), nodes=3, rows=rows, workdir=tmp_path / "work")
    assert str(caught.value) == f"rows must be a positive integer, not {rows}"
    assert caught.value.exit_code == 2 and not (tmp_path / "work").exists()


def _held_after_the_run(nodes: int, workdir: Path) -> int:
    """Bytes of Python heap that the simulation holds when its final round ends (researcher and nodes)."""
    held: list[int] = []

    def on_round(record: RoundRecord) -> None:
        if not record.training:
            gc.collect()
            held.append(tracemalloc.get_traced_memory()[0])

    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        simulate(_config(1), nodes=nodes, rows=20 * nodes, workdir=workdir, on_round=on_round)
    finally:
        tracemalloc.stop()
    return held[0] - base


def test_an_idle_virtual_node_costs_a_few_kilobytes(tmp_path: Path) -> None:
    """Per node, everything the run holds: its rows (twice: the researcher's copy, the node's parsed table),
    its settings, its round's records and metric events. Node roots, databases and models are not in memory."""
    simulate(_config(1), nodes=2, workdir=tmp_path / "warm")  # imports and one-off caches
    small = _held_after_the_run(20, tmp_path / "small")
    large = _held_after_the_run(120, tmp_path / "large")
    per_node = (large - small) / 100
    assert per_node < 16 * 1024, f"{per_node / 1024:.1f} KiB per node"
