"""The Ray engine: the same model as the inline engine, crashed actors re-run once, ``fedpipe simulate --engine ray``."""

import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import torch

from fedpipe.bootstrap import open_owner
from fedpipe.researcher.experiment import RoundRecord
from fedpipe.simulation import sampler, simulate
from fedpipe.simulation.engine import EngineOptions
from fedpipe.simulation.nodes import node_ids
from fedpipe.simulation.ray_engine import slot_of
from tests.simulation.test_simulate import EXAMPLE, _config

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One local Ray with two CPUs for the module; every engine of its tests joins it."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_fifty_nodes_give_the_same_model_inline_and_on_ray(tmp_path: Path, one_thread: None) -> None:
    config = _config(rounds=3, training_args={"epochs": 1})
    pools: list[int] = []
    inline = simulate(config, nodes=50, seed=4, partition="dirichlet", workdir=tmp_path / "inline")
    on_ray = simulate(
        config,
        nodes=50,
        seed=4,
        partition="dirichlet",
        workdir=tmp_path / "ray",
        engine="ray",
        engine_options=EngineOptions(on_submit=lambda actors: pools.append(len(actors))),
    )
    assert inline.params.keys() == on_ray.params.keys()
    assert all(torch.equal(inline.params[k], on_ray.params[k]) for k in inline.params)
    assert inline.final_metric == on_ray.final_metric
    assert pools == [2, 2, 2, 2]  # calls sent once per round (3 trainings, 1 validation), to two actors
    assert [len(r.results) for r in on_ray.rounds] == [50, 50, 50]


def _states(root: Path) -> dict[str, str | None]:
    """The node states the node at ``root`` holds, id -> previous id (read-only, beside the node's writers)."""
    with closing(sqlite3.connect(f"file:{root / 'node.sqlite'}?mode=ro", uri=True)) as db:
        return dict(db.execute("SELECT state_id, previous_state_id FROM node_states").fetchall())


def test_a_crashed_actor_s_nodes_are_rerun_once_and_their_state_chains(tmp_path: Path) -> None:
    # two rounds: a node keeps its three newest states, and the check below reads them all
    config = _config(rounds=2, training_args={"epochs": 1})
    ids = node_ids(40)
    # the first node actor 0 runs in round 2 (tasks run in the order the batch lists them)
    victim = next(n for n in sampler(ids, 30, seed=5)(1) if slot_of(n, 2) == 0)
    calls: list[tuple[Any, ...]] = []
    killed: list[Any] = []

    def crash_in_round_two(actors: Sequence[Any]) -> None:
        calls.append(tuple(a._actor_id for a in actors))
        if len(calls) != 2:
            return
        # kill actor 0 mid-call, once its first node has saved its state but not replied
        root = tmp_path / "nodes" / victim
        before = len(_states(root)) if (root / "node.sqlite").exists() else 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (root / "node.sqlite").exists() and len(_states(root)) > before:
                break
            time.sleep(0.002)
        killed.append(actors[0]._actor_id)
        ray.kill(actors[0], no_restart=True)

    seen: dict[str, list[str]] = {}

    def note(record: RoundRecord) -> None:
        if record.training:
            for r in record.results:
                seen.setdefault(r.node_id, []).append(str(r.state_id))

    result = simulate(
        config,
        nodes=40,
        per_round=30,
        seed=5,
        workdir=tmp_path,
        engine="ray",
        engine_options=EngineOptions(on_submit=crash_in_round_two),
        on_round=note,
    )
    assert killed and killed[0] not in calls[-1]  # the dead actor's slot got a new actor
    assert len(calls) == 4  # the dead call was sent again once (3 calls otherwise: 2 trainings, 1 validation)
    for record in result.rounds:
        ids_ = [r.node_id for r in record.results]
        assert len(ids_) == len(set(ids_)) == 30  # one outcome per sampled node, none twice
        assert all(r.success for r in record.results)
    assert result.final is not None and len(result.final.results) == 40
    # the dead attempt saved a state no reply names; the re-run resumed from the one the last reply named
    first, second = seen[victim]
    states = _states(tmp_path / "nodes" / victim)
    orphans = set(states) - {first, second}
    assert len(orphans) == 1 and states[orphans.pop()] == first == states[second]
    job = "simulation-5"
    for node, states in seen.items():
        with open_owner(tmp_path / "nodes" / node) as owner:
            previous = None
            for state_id in states:
                state = owner.states.load(job, state_id).unwrap()
                assert state is not None and state.previous_state_id == previous
                previous = state_id


def test_fedpipe_simulate_runs_on_a_local_ray(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedpipe",
            "simulate",
            "--config",
            str(EXAMPLE),
            "--nodes",
            "12",
            "--per-round",
            "6",
            "--engine",
            "ray",
            "--cpus",
            "2",
            "--output",
            "out",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [
        line for line in done.stderr.splitlines() if " nodes ok" in line
    ]  # the rounds' summaries, not their bars
    assert [line.split(":")[0] for line in lines] == [
        "round 1/3",
        "round 2/3",
        "round 3/3",
        "final validation",
    ]
    assert "6/6 nodes ok" in lines[0] and "12/12 nodes ok" in lines[-1]
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"model.mpk", "model.safetensors", "metrics.csv"}
    assert "final global accuracy:" in done.stdout


def _free_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--cpus", "2"), "error: --cpus is an option of --engine ray"),
        (
            ("--gpus-per-actor", "0.5", "--chunk", "4"),
            "error: --gpus-per-actor and --chunk are options of --engine ray",
        ),
        (
            ("--engine", "ray", "--address", "127.0.0.1:1", "--gpus", "1"),
            "error: cannot start the ray engine: the GPUs are those of a local Ray: a cluster joined at an"
            " address has its own",
        ),
        (
            ("--engine", "ray", "--gpus-per-actor", "1.5"),
            "error: cannot start the ray engine: an actor's share of a GPU is a fraction up to 1 or a whole"
            " number, not 1.5",
        ),
        (
            ("--engine", "ray", "--address", "127.0.0.1:{port}"),
            "error: cannot start the ray engine: no Ray cluster answers at 127.0.0.1:{port}",
        ),
    ],
)
def test_ray_mistakes_are_one_line_exit_2_and_write_nothing(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    port = _free_port()  # nothing listens there
    command = ["simulate", "--config", str(EXAMPLE), "--nodes", "3", *(a.format(port=port) for a in args)]
    done = subprocess.run(
        [sys.executable, "-m", "fedpipe", *command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == message.format(port=port)
    assert list(tmp_path.iterdir()) == []
