"""Same plan, seed and data: fedpipe's compatibility layer gives the stock 6.4.1 node's parameters and reports.

``plans/stock_runs.json`` was recorded once by driving the sent plans with the real Fed-BioMed
6.4.1 package as its node does (``plans/make_fixtures.py``). Each run is replayed here through
the ``TrainingPlan`` interface in the order the round calls it, with the split of
``fedbiomed_split`` and the state the plan saves; on the machine that recorded them the results
are bit-identical, elsewhere float reductions may differ in the last bits, hence the tolerance.
"""

import math
from typing import Any

import pytest
import torch

from fedpipe.fedbiomed.compat import FedbiomedPlanLoader
from fedpipe.plan import DatasetRecord, Scalars
from fedpipe.settings import GpuPolicy
from tests.fedbiomed.plans.support import PLANS, STOCK_RUNS, fedpipe_args, shard, tensors


def _replay(run: dict[str, Any], csv_path: Any) -> list[dict[str, Any]]:
    args = fedpipe_args(run["training_args"])
    params = tensors(run["initial"])
    state: Any = None
    previous_test: list[int] | None = None
    out = []
    for _ in run["rounds"]:
        plan: Any = FedbiomedPlanLoader().load(PLANS / run["plan"], run["class_name"]).unwrap()
        plan.post_init(model_args=run["model_args"], training_args=args, aggregator_args={})
        if state is not None:
            assert plan.load_state(state) == []
        plan.set_model_params(params)
        plan.set_aux_vars({})
        n = plan.load_data(DatasetRecord(dataset_id="bc", path=str(csv_path)))
        kept = None if args.shuffle_testing_dataset else previous_test
        split = plan.fedbiomed_split(n, args.test_ratio, kept)
        plan.set_split(split)
        events: list[Scalars] = []
        kwargs = {
            "metric": args.test_metric,
            "metric_args": dict(args.test_metric_args),
            "report": events.append,
        }
        plan.testing_routine(**kwargs, before_train=True)
        seen = plan.training_routine(report=events.append, gpu=GpuPolicy())
        plan.testing_routine(**kwargs, before_train=False)
        params = plan.after_training_params(flatten=False)
        state = plan.save_state()
        previous_test = list(split.test_indices)
        out.append(
            {
                "params": params,
                "seen": seen,
                "sample_size": len(split.train_indices),
                "split": split,
                "events": events,
                "optimizer_args": plan.optimizer_args(),
            }
        )
    return out


_SCALAR_FIELDS = ("iteration", "epoch", "total_samples", "batch_samples", "num_batches")


def _same_scalars(got: Scalars, expected: dict[str, Any]) -> None:
    for name in _SCALAR_FIELDS:
        assert getattr(got, name) == expected[name], name
    assert got.train == expected.get("train", False)
    assert got.test == expected.get("test", False)
    assert got.test_on_global_updates == expected.get("test_on_global_updates", False)
    if got.train:
        assert got.num_samples_trained == expected["num_samples_trained"]
    assert set(got.metric) == set(expected["metric"])
    for key, value in expected["metric"].items():
        assert math.isclose(got.metric[key], value, rel_tol=1e-4, abs_tol=1e-6), key


@pytest.mark.parametrize("name", sorted(STOCK_RUNS))
def test_seeded_rounds_match_the_stock_node(name, tmp_path):
    run = STOCK_RUNS[name]
    replayed = _replay(run, shard(tmp_path, run["shard_rows"]))
    assert len(replayed) == len(run["rounds"])
    for got, expected in zip(replayed, run["rounds"], strict=True):
        assert list(got["split"].test_indices) == expected["testing_index"]
        assert list(got["split"].train_indices) == expected["training_index"]  # also the data order
        assert got["sample_size"] == expected["sample_size"]
        assert got["seen"] == expected["samples_seen"]
        want = tensors(expected["params"])
        assert set(got["params"]) == set(want)
        for key, value in want.items():
            torch.testing.assert_close(got["params"][key], value, rtol=1e-4, atol=1e-5)
        assert len(got["events"]) == len(expected["scalars"])
        for event, scalar in zip(got["events"], expected["scalars"], strict=True):
            _same_scalars(event, scalar)
        assert got["optimizer_args"] == expected["optimizer_args"]


def test_the_protocol_experiment_learns_the_shard(tmp_path):
    replayed = _replay(STOCK_RUNS["defaults"], shard(tmp_path))
    final = [e for e in replayed[-1]["events"] if e.test and e.test_on_local_updates]
    first = [e for e in replayed[0]["events"] if e.test and e.test_on_global_updates]
    assert first[0].metric["accuracy"] < 0.5 < 0.9 < final[0].metric["accuracy"]
    losses = [e.metric["Loss"] for r in replayed for e in r["events"] if e.train]
    assert losses[-1] < losses[0] / 10
