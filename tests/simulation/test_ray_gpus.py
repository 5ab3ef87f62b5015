"""GPU shares on the Ray engine: actors that hold a fraction of a GPU, their nodes allowed to train there.

This machine has no GPU: the local Ray is told it has one (Ray schedules GPUs as a counted
resource and gives each actor the ids of its share), so what is tested is the scheduling and the
nodes' policy; training falls back to the CPU, as a node's does where CUDA is absent.
"""

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from fedpipe.researcher.config import parse_config
from fedpipe.simulation import simulate
from fedpipe.simulation.api import SimulationError
from fedpipe.simulation.engine import EngineOptions
from fedpipe.simulation.ray_engine import _check_gpus, _pool_size
from tests.simulation.test_simulate import _config

EXAMPLES = Path(__file__).parents[2] / "examples"

ray = pytest.importorskip("ray")


@pytest.mark.parametrize(
    ("resources", "actors", "share", "size"),
    [
        ({"CPU": 8.0, "GPU": 1.0}, None, 0.25, 4),  # four actors share the GPU
        ({"CPU": 2.0, "GPU": 1.0}, None, 0.25, 2),  # no more actors than CPUs
        ({"CPU": 8.0, "GPU": 2.0}, None, 1.0, 2),
        ({"CPU": 8.0, "GPU": 3.0}, None, 1 / 3, 8),  # 9 thirds, but 8 CPUs
        ({"CPU": 8.0, "GPU": 1.0}, 2, 0.5, 2),
        ({"CPU": 2.0}, None, None, 2),
    ],
)
def test_the_pool_is_no_larger_than_the_gpus_hold(
    resources: dict[str, float], actors: int | None, share: float | None, size: int
) -> None:
    assert _pool_size(resources, actors, share) == size


@pytest.mark.parametrize(
    ("resources", "actors", "share", "message"),
    [
        ({"CPU": 2.0}, None, 0.5, "actors of 0.5 GPU each: the Ray cluster has 0 GPUs"),
        ({"CPU": 8.0, "GPU": 1.0}, 3, 0.5, "3 actors of 0.5 GPU each need more than the cluster's 1 GPUs"),
        ({"CPU": 8.0, "GPU": 1.0}, None, 2.0, "actors of 2 GPU each: the Ray cluster has 1 GPUs"),
    ],
)
def test_gpu_shares_the_cluster_cannot_hold_are_refused_in_one_line(
    resources: dict[str, float], actors: int | None, share: float, message: str
) -> None:
    # refused before any actor is asked for: Ray would otherwise wait for resources that never come
    with pytest.raises(ValueError, match=f"^{message}$"):
        _pool_size(resources, actors, share)


_RECORDING = """
import os as _os


class RecordingPlan(BreastCancerLogistic):
    def training_routine(self, *, report, gpu):
        # what each training saw: the GPU policy its node gave it, and the GPUs Ray left visible
        with open(_os.environ["FEDPIPE_TEST_RECORD"], "a", encoding="utf-8") as out:
            out.write(f"{gpu.gpu} {_os.environ.get('CUDA_VISIBLE_DEVICES')}\\n")
        return super().training_routine(report=report, gpu=gpu)
"""


@pytest.mark.parametrize(
    ("gpus", "share", "address", "message"),
    [
        (
            1,
            None,
            "10.0.0.1:6379",
            "the GPUs are those of a local Ray: a cluster joined at an address has its own",
        ),
        (-1, None, None, "a Ray's GPUs are a whole number >= 0, not -1"),
        (None, 0.0, None, "an actor's share of a GPU is a number > 0, not 0.0"),
        (None, 1.5, None, "an actor's share of a GPU is a fraction up to 1 or a whole number, not 1.5"),
    ],
)
def test_gpu_settings_ray_would_not_apply_are_refused_before_it_starts(
    gpus: int | None, share: float | None, address: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        _check_gpus(gpus, share, address)


def test_gpu_settings_ray_applies_pass() -> None:
    _check_gpus(2, 0.25, None)
    _check_gpus(None, 2.0, "10.0.0.1:6379")
    _check_gpus(0, None, None)


@pytest.mark.slow
def test_actors_of_half_a_gpu_share_one_and_their_nodes_may_use_it(
    tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if ray.is_initialized():
        ray.shutdown()
    plan = tmp_path / "recording_plan.py"
    plan.write_text(
        (EXAMPLES / "logistic_plan.py").read_text(encoding="utf-8") + _RECORDING, encoding="utf-8"
    )
    record = tmp_path / "trainings.txt"
    monkeypatch.setenv("FEDPIPE_TEST_RECORD", str(record))  # the local Ray's workers inherit it
    table = tomllib.loads((EXAMPLES / "simulation.toml").read_text(encoding="utf-8"))
    table["training_args"]["use_gpu"] = True
    config = parse_config({**table, "rounds": 2, "plan_class": "RecordingPlan"}, base_dir=EXAMPLES)
    seen: list[list[tuple[tuple[str, ...], bool]]] = []

    def look(actors: Sequence[Any]) -> None:
        if not seen:
            seen.append(ray.get([a.gpus.remote() for a in actors]))

    on_ray = simulate(
        config,
        nodes=8,
        seed=3,
        workdir=tmp_path / "ray",
        engine="ray",
        plan_file=plan,
        engine_options=EngineOptions(num_cpus=2, gpus=1, gpus_per_actor=0.5, on_submit=look),
    )
    # two actors (two CPUs, and two halves of the one GPU), each given GPU 0, whose nodes may train there
    assert seen == [[(("0",), True), (("0",), True)]]
    assert record.read_text(encoding="utf-8").splitlines() == ["True 0"] * 16  # 8 nodes x 2 rounds
    assert not ray.is_initialized()  # the engine's own Ray was stopped
    assert [len(r.results) for r in on_ray.rounds] == [8, 8]
    assert all(r.success for record in on_ray.rounds for r in record.results)
    record.unlink()
    inline = simulate(config, nodes=8, seed=3, workdir=tmp_path / "inline", plan_file=plan)
    assert set(record.read_text(encoding="utf-8").splitlines()) == {"False None"}  # no GPU share inline
    if not torch.cuda.is_available():
        # no CUDA here: the nodes on GPU shares trained on the CPU, and gave the inline engine's model
        assert all(torch.equal(inline.params[k], on_ray.params[k]) for k in inline.params)


@pytest.mark.slow
def test_gpu_shares_on_a_ray_without_gpus_fail_to_start_in_one_line(tmp_path: Path) -> None:
    if ray.is_initialized():
        ray.shutdown()
    with pytest.raises(SimulationError) as caught:
        simulate(
            _config(rounds=1),
            nodes=2,
            workdir=tmp_path / "ray",
            engine="ray",
            engine_options=EngineOptions(num_cpus=1, gpus=0, gpus_per_actor=0.5),
        )
    assert (
        str(caught.value) == "cannot start the ray engine: actors of 0.5 GPU each: the Ray cluster has 0 GPUs"
    )
    assert caught.value.exit_code == 2
    assert not ray.is_initialized()
