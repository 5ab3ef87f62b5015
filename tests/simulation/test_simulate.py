"""Simulations on virtual nodes that run the real node round: accuracy, node state, sampling, determinism."""

import os
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedpipe.bootstrap import open_owner
from fedpipe.researcher.config import ExperimentConfig, parse_config
from fedpipe.researcher.experiment import RoundRecord
from fedpipe.simulation import SimulationError, sampler, simulate
from fedpipe.simulation.nodes import node_ids

EXAMPLE = Path(__file__).parents[2] / "examples" / "experiment.toml"


def _config(**changes: Any) -> ExperimentConfig:
    """The example configuration of ``fedpipe run`` (the demo plan), with ``changes`` applied."""
    table = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    training = {**table.pop("training_args"), **changes.pop("training_args", {})}
    return parse_config({**table, **changes, "training_args": training}, base_dir=EXAMPLE.parent)


def _open_files_under(folder: Path) -> list[str]:
    """The files this process holds open below ``folder`` (Linux: /proc/self/fd)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            held.append(target)
    return held


def test_ten_nodes_three_rounds_reach_ninety_percent(tmp_path: Path) -> None:
    rounds: list[RoundRecord] = []
    result = simulate(_config(), nodes=10, seed=0, workdir=tmp_path, on_round=rounds.append)
    assert [r.number for r in result.rounds] == [1, 2, 3]
    assert all(len(r.results) == 10 and all(n.success for n in r.results) for r in result.rounds)
    assert result.final is not None and len(result.final.results) == 10
    assert result.final_metric is not None and result.final_metric >= 0.90
    assert len(rounds) == 4  # three training rounds and the final validation, as `fedpipe run` reports them
    # each node is a real node root: its own database, settings and partition
    for node in node_ids(10):
        assert {"settings.json", "data"} <= {p.name for p in (tmp_path / "nodes" / node).iterdir()}


def test_node_state_chains_across_rounds_per_virtual_node(tmp_path: Path) -> None:
    config = _config(rounds=4, training_args={"epochs": 1})
    result = simulate(config, nodes=6, per_round=3, seed=3, workdir=tmp_path)
    job = "simulation-3"
    seen: dict[str, str] = {}
    chained = 0
    for record in result.rounds:
        for r in record.results:
            assert r.success and r.state_id is not None
            with open_owner(tmp_path / "nodes" / r.node_id) as owner:
                state = owner.states.load(job, r.state_id).unwrap()
            assert state is not None
            # the node resumed from the state it saved the last time it was sampled
            assert state.previous_state_id == seen.get(r.node_id)
            chained += r.node_id in seen
            seen[r.node_id] = r.state_id
    assert chained >= 3  # some nodes were sampled again after a round off


def test_rounds_sample_k_of_n_with_the_seed(tmp_path: Path) -> None:
    ids = node_ids(8)
    picked: list[tuple[str, ...]] = []
    config = _config(rounds=3, training_args={"epochs": 1})

    def note(record: RoundRecord) -> None:
        if record.training:
            picked.append(tuple(r.node_id for r in record.results))

    simulate(config, nodes=8, per_round=3, seed=11, workdir=tmp_path, on_round=note)
    assert picked == [tuple(sampler(ids, 3, seed=11)(r)) for r in range(3)]
    # only the sampled nodes got a root during training; the final validation then made the others
    assert len({n for p in picked for n in p}) < 8
    assert {p.name for p in (tmp_path / "nodes").iterdir()} == set(ids)


@given(
    n=st.integers(1, 60),
    data=st.data(),
    seed=st.integers(0, 2**31),
    round_number=st.integers(0, 1000),
)
def test_sampling_is_k_distinct_nodes_fixed_by_seed_and_round(
    n: int, data: st.DataObject, seed: int, round_number: int
) -> None:
    k = data.draw(st.integers(1, n))
    ids = node_ids(n)
    pick = sampler(ids, k, seed)
    chosen = pick(round_number)
    assert len(chosen) == k == len(set(chosen)) and set(chosen) <= set(ids)
    assert sampler(ids, k, seed)(round_number) == chosen


def test_the_same_seed_gives_the_same_final_model(tmp_path: Path) -> None:
    config = _config(rounds=2, training_args={"epochs": 1})
    runs = [
        simulate(config, nodes=5, per_round=3, partition="dirichlet", seed=7, workdir=tmp_path / str(i))
        for i in range(2)
    ]
    other = simulate(config, nodes=5, per_round=3, partition="dirichlet", seed=8, workdir=tmp_path / "other")
    first, second = (run.params for run in runs)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other.params[k]) for k in first)


def test_an_idle_node_holds_no_open_database(tmp_path: Path) -> None:
    held: list[list[str]] = []
    simulate(
        _config(rounds=2, training_args={"epochs": 1}),
        nodes=4,
        workdir=tmp_path,
        on_round=lambda record: held.append(_open_files_under(tmp_path / "nodes")),
    )
    assert held == [[], [], []]
    # the probe does see a node whose database is open
    with open_owner(tmp_path / "nodes" / "sim-0001") as owner:
        assert str(owner.settings.db_path) in _open_files_under(tmp_path / "nodes")


@pytest.mark.parametrize(
    ("changes", "options", "message"),
    [
        ({}, {"nodes": 600}, "cannot partition the data: n_nodes (600) is more than the dataset's 569 rows"),
        ({}, {"nodes": 3, "per_round": 4}, "4 nodes per round is more than the 3 nodes simulated"),
        ({"nodes": ["a"]}, {"nodes": 3}, 'leave nodes = "all"'),
        ({}, {"nodes": 3, "engine": "warp"}, "unknown engine 'warp'"),
    ],
)
def test_mistakes_are_one_line_errors_before_any_node_exists(
    tmp_path: Path, changes: dict[str, Any], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(SimulationError) as caught:
        simulate(_config(**changes), workdir=tmp_path / "work", **options)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.exit_code == 2
    assert not (tmp_path / "work").exists()


def test_a_workdir_holding_nodes_is_refused(tmp_path: Path) -> None:
    (tmp_path / "nodes").mkdir()
    with pytest.raises(SimulationError, match="already holds a simulation"):
        simulate(_config(rounds=1), nodes=2, workdir=tmp_path)


def test_partitions_are_what_the_nodes_registered(tmp_path: Path) -> None:
    simulate(_config(rounds=1, training_args={"epochs": 1}), nodes=3, partition="label", workdir=tmp_path)
    sizes = []
    for node in node_ids(3):
        with open_owner(tmp_path / "nodes" / node) as owner:
            record = owner.datasets.get("breast-cancer").unwrap()
        assert record is not None
        table = np.loadtxt(record.path, delimiter=",", skiprows=1, ndmin=2)
        sizes.append(len(table))
    assert sum(sizes) == 569
