"""The torch plan trained through the standard round over fakes: learning, validation, state, errors."""

import math
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpipe.codec import loads
from fedpipe.errors import ErrorCode, is_public_safe
from fedpipe.plan import DatasetRecord, DataSplit
from fedpipe.training import DataManager, TabularDataset, TorchTrainingPlan
from tests.training.support import DATA, MlpPlan, initial_params, make_node, record, train

ARGS: dict[str, Any] = {
    "epochs": 3,
    "loader_args": {"batch_size": 32},
    "optimizer_args": {"lr": 0.01},
    "test_ratio": 0.25,
    "test_on_global_updates": True,
    "test_on_local_updates": True,
    "random_seed": 7,
}


@pytest.mark.slow
def test_mlp_learns_breast_cancer_through_the_round(tmp_path):
    node = make_node(tmp_path)
    reply, payload = train(node, initial_params(), ARGS)
    assert reply.success, reply.msg
    assert reply.sample_size == len(DATA) - math.floor(len(DATA) * 0.25)
    before = payload["metadata"]["validation_before"]["ACCURACY"]
    after = payload["metadata"]["validation_after"]["ACCURACY"]
    assert after > before
    assert after > 0.9
    losses = [e.metric["Loss"] for e in node.monitor.events if e.train]
    assert losses[-1] < losses[0]
    weights = payload["model_weights"]
    assert set(weights) == set(initial_params())
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    tests = [e for e in node.monitor.events if e.test]
    assert [e.test_on_global_updates for e in tests] == [True, False]
    assert tests[0].total_samples == math.floor(len(DATA) * 0.25)


def test_second_round_restores_adam_state_and_continues(tmp_path):
    node = make_node(tmp_path)
    reply, payload = train(node, initial_params(), {**ARGS, "epochs": 1})
    state = node.states.states[("job-1", reply.state_id)]
    saved = loads(state.plan_state).unwrap()
    assert saved["optimizer"]["type"] == "torch.optim.adam.Adam"
    assert saved["optimizer"]["state"]["state"]  # Adam moments were kept
    reply2, _payload2 = train(
        node, payload["model_weights"], {**ARGS, "epochs": 1}, state_id=reply.state_id, round=1
    )
    assert reply2.success, reply2.msg
    plan = node.plans.instances[-1]
    step = plan.optimizer().state_dict()["state"][0]["step"]
    n_batches = math.ceil(reply.sample_size / 32)
    assert int(step) == 2 * n_batches  # the restored step count went on, not restarted


class SgdPlan(MlpPlan):
    def init_optimizer(self, optimizer_args):
        return torch.optim.SGD(self.model().parameters(), **optimizer_args)


def test_state_of_another_optimizer_is_ignored_with_a_note(tmp_path, caplog):
    node = make_node(tmp_path)
    reply, payload = train(node, initial_params(), {**ARGS, "epochs": 1})
    reply2, _ = train(
        node, payload["model_weights"], {**ARGS, "epochs": 1}, plan=SgdPlan, state_id=reply.state_id, round=1
    )
    assert reply2.success, reply2.msg
    assert any(
        "torch.optim.adam.Adam" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records
    )


class BatchNormPlan(MlpPlan):
    def init_model(self, model_args):
        return torch.nn.Sequential(
            torch.nn.Linear(30, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 1)
        )


def test_batchnorm_buffers_survive_rounds_when_not_shared(tmp_path):
    node = make_node(tmp_path)
    args = {**ARGS, "epochs": 1, "share_persistent_buffers": False}
    params = initial_params(plan=BatchNormPlan)
    trainable = {k: v for k, v in params.items() if "running" not in k and "num_batches" not in k}
    reply, payload = train(node, trainable, args, plan=BatchNormPlan)
    assert reply.success, reply.msg
    assert set(payload["model_weights"]) == set(trainable)  # buffers stay on the node
    first = node.plans.instances[-1].model().state_dict()
    reply2, _ = train(
        node, payload["model_weights"], args, plan=BatchNormPlan, state_id=reply.state_id, round=1
    )
    assert reply2.success, reply2.msg
    n_batches = math.ceil(reply.sample_size / 32)
    second = node.plans.instances[-1].model().state_dict()
    assert int(first["1.num_batches_tracked"]) == n_batches
    assert int(second["1.num_batches_tracked"]) == 2 * n_batches


class TinyPlan(TorchTrainingPlan):
    """A linear model over ``n`` synthetic rows; records every split it is given."""

    n_rows = 10
    splits: ClassVar[list[DataSplit]] = []

    def init_model(self):
        return torch.nn.Linear(2, 1)

    def init_optimizer(self):
        return torch.optim.SGD(self.model().parameters(), lr=0.1)

    def training_data(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.n_rows, 2, generator=g)
        return DataManager(TabularDataset(x, (x[:, 0] > 0).float()), batch_size=4)

    def training_step(self, data, target):
        return torch.nn.functional.binary_cross_entropy_with_logits(self.model()(data).squeeze(-1), target)

    def set_split(self, split):
        super().set_split(split)
        type(self).splits.append(split)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    ratio=st.one_of(st.sampled_from([0, 1, 0.0, 1.0]), st.floats(0, 1)),
    rounds=st.integers(2, 3),
)
def test_test_indices_are_stable_across_rounds(n, ratio, rounds):
    TinyPlan.n_rows, TinyPlan.splits = n, []
    params = {k: v.detach() for k, v in torch.nn.Linear(2, 1).state_dict().items()}
    args = {"epochs": 1, "test_ratio": ratio, "test_on_global_updates": True, "random_seed": 3}
    n_test = math.floor(n * ratio + 1e-9)
    training = n_test < n
    with tempfile.TemporaryDirectory() as root:
        node = make_node(Path(root))
        state_id = None
        for r in range(rounds):
            reply, payload = train(
                node,
                params,
                args,
                plan=TinyPlan,
                dataset=record(standardize=False),
                state_id=state_id,
                round=r,
                training=training,
            )
            assert reply.success, reply.msg
            if training:
                state_id, params = reply.state_id, payload["model_weights"]
    assert len(TinyPlan.splits) == rounds
    first = TinyPlan.splits[0]
    assert len(first.test_indices) == n_test
    assert sorted(first.test_indices + first.train_indices) == list(range(n))
    assert all(s.test_indices == first.test_indices for s in TinyPlan.splits)


def test_shuffle_testing_dataset_redraws(tmp_path):
    TinyPlan.n_rows, TinyPlan.splits = 40, []
    node = make_node(tmp_path)
    params = {k: v.detach() for k, v in torch.nn.Linear(2, 1).state_dict().items()}
    args = {"epochs": 1, "test_ratio": 0.5, "shuffle_testing_dataset": True}
    reply, payload = train(node, params, args, plan=TinyPlan, dataset=record(standardize=False))
    train(
        node,
        payload["model_weights"],
        args,
        plan=TinyPlan,
        dataset=record(standardize=False),
        state_id=reply.state_id,
        round=1,
    )
    assert TinyPlan.splits[0].test_indices != TinyPlan.splits[1].test_indices


class FixedBatchPlan(TinyPlan):
    n_rows = 23

    def training_data(self):
        manager = super().training_data()
        manager.loader_kwargs = {"batch_size": 5}
        return manager


@pytest.mark.parametrize(
    ("args", "expected_batches"),
    [
        ({"epochs": 2, "log_interval": 0}, [5, 5]),
        ({"epochs": 1, "log_interval": 1000}, [5]),
        ({"epochs": 2, "batch_maxnum": 50}, [5, 5]),
        ({"epochs": 2, "batch_maxnum": 2}, [2, 2]),
        ({"num_updates": 7}, [7]),
        ({"num_updates": 0}, []),
        ({"dry_run": True}, [1]),
        ({"epochs": 0}, []),
    ],
)
def test_iteration_edge_cases_do_not_crash(tmp_path, args, expected_batches):
    node = make_node(tmp_path)
    params = {k: v.detach() for k, v in torch.nn.Linear(2, 1).state_dict().items()}
    # the plan's batch size (5) wins over the researcher's (32) and drives reporting (D12)
    reply, _ = train(
        node,
        params,
        {**args, "loader_args": {"batch_size": 32}},
        plan=FixedBatchPlan,
        dataset=record(standardize=False),
    )
    assert reply.success, reply.msg
    losses = [e for e in node.monitor.events if e.train]
    if not expected_batches:
        assert losses == []
        return
    assert losses[0].iteration == 1
    assert losses[0].batch_samples == 5
    if "num_updates" in args:
        assert losses[-1].iteration == args["num_updates"]
        assert losses[-1].epoch is None
        assert losses[-1].num_samples_trained == 23 + 2 * 5  # one full pass, then two more batches
    else:
        last = losses[-1]
        assert last.num_batches == expected_batches[-1]
        assert last.iteration == expected_batches[-1]
    if args.get("log_interval") == 0:
        assert [e.iteration for e in losses] == [1, 5, 1, 5]


def test_reporting_uses_the_effective_batch_size(tmp_path):
    node = make_node(tmp_path)
    params = {k: v.detach() for k, v in torch.nn.Linear(2, 1).state_dict().items()}
    reply, _ = train(
        node, params, {"epochs": 1, "loader_args": {}}, plan=FixedBatchPlan, dataset=record(standardize=False)
    )
    assert reply.success, reply.msg
    events = [e for e in node.monitor.events if e.train]
    assert [(e.iteration, e.num_samples_trained, e.total_samples, e.batch_samples) for e in events] == [
        (1, 5, 23, 5),
        (5, 23, 23, 3),
    ]


class NoParamsDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.zeros(2), torch.zeros(())


class PlainDatasetPlan(TinyPlan):
    def training_data(self):
        return DataManager(NoParamsDataset(), batch_size=2)


def test_dataset_parameters_are_refused_when_unsupported(tmp_path):
    node = make_node(tmp_path)
    params = {k: v.detach() for k, v in torch.nn.Linear(2, 1).state_dict().items()}
    reply, _ = train(node, params, {"epochs": 1}, plan=PlainDatasetPlan, dataset=record(standardize=True))
    assert not reply.success
    assert reply.error_code is ErrorCode.DATA_FAILED
    assert "set_dataset_parameters" in reply.error.detail
    dlp = DatasetRecord(dataset_id="d", data_loading_plan={"map": {"a": "b"}})
    reply, _ = train(node, params, {"epochs": 1}, plan=PlainDatasetPlan, dataset=dlp)
    assert reply.error_code is ErrorCode.DATA_FAILED
    assert "set_dlp" in reply.error.detail


class EmptyLoaderPlan(TinyPlan):
    def training_data(self):
        manager = super().training_data()
        manager.loader_kwargs = {"batch_size": 100, "drop_last": True}
        return manager


class BrokenStepPlan(TinyPlan):
    def training_step(self, data, target):
        raise ZeroDivisionError("user bug in /home/researcher/plan.py")


class WrongModelPlan(TinyPlan):
    def init_model(self):
        return "not a module"


class TwoArgModelPlan(TinyPlan):
    def init_model(self, a, b):
        return torch.nn.Linear(2, 1)


@pytest.mark.parametrize(
    ("plan", "code", "detail"),
    [
        (EmptyLoaderPlan, ErrorCode.TRAINING_FAILED, "yields no batch"),
        (BrokenStepPlan, ErrorCode.TRAINING_FAILED, "ZeroDivisionError"),
        (WrongModelPlan, ErrorCode.PLAN_INIT_FAILED, "must return a torch.nn.Module"),
        (TwoArgModelPlan, ErrorCode.PLAN_INIT_FAILED, "at most one argument"),
    ],
)
def test_plan_failures_become_round_errors(tmp_path, plan, code, detail):
    node = make_node(tmp_path)
    params = {k: v.detach() for k, v in torch.nn.Linear(2, 1).state_dict().items()}
    reply, _ = train(node, params, {"epochs": 1}, plan=plan, dataset=record(standardize=False))
    assert not reply.success
    assert reply.error_code is code
    assert detail in reply.error.detail
    assert is_public_safe(reply.msg)


def test_mismatched_params_are_refused(tmp_path):
    node = make_node(tmp_path)
    reply, _ = train(
        node, {"weight": torch.zeros(3, 3)}, {"epochs": 1}, plan=TinyPlan, dataset=record(standardize=False)
    )
    assert reply.error_code is ErrorCode.PARAMS_LOAD_FAILED
    reply, _ = train(
        node, {"nope": torch.zeros(1)}, {"epochs": 1}, plan=TinyPlan, dataset=record(standardize=False)
    )
    assert reply.error_code is ErrorCode.PARAMS_LOAD_FAILED


class PostprocessPlan(MlpPlan):
    def postprocess(self, params):
        return {k: v * 0.5 for k, v in params.items()}


@pytest.mark.parametrize("dp", [None, {"type": "central", "sigma": 0.5, "clip": 1.0}])
def test_flattened_update_carries_the_same_post_processing(tmp_path, dp):
    node = make_node(tmp_path)
    args = {**ARGS, "epochs": 1, "test_on_local_updates": False, "test_on_global_updates": False, "dp": dp}
    reply, payload = train(node, initial_params(), args, plan=PostprocessPlan)
    assert reply.success, reply.msg
    plan = node.plans.instances[-1]
    as_dict = plan.after_training_params(flatten=False)
    flat = plan.after_training_params(flatten=True)
    assert flat == [float(x) for t in as_dict.values() for x in t.reshape(-1).tolist()]
    for name, value in payload["model_weights"].items():
        assert torch.equal(value, as_dict[name])
    live = plan.model().state_dict()
    assert all(torch.allclose(as_dict[k], live[k] * 0.5) for k in live)


def test_central_dp_clips_and_noises_the_update(tmp_path):
    node = make_node(tmp_path)
    start = initial_params()
    clip = 0.01
    args = {
        **ARGS,
        "epochs": 1,
        "test_on_local_updates": False,
        "dp": {"type": "central", "sigma": 0.0, "clip": clip},
    }
    reply, payload = train(node, start, args)
    assert reply.success, reply.msg
    norm = math.sqrt(sum(float(((payload["model_weights"][k] - start[k]) ** 2).sum()) for k in start))
    assert norm <= clip * (1 + 1e-4)
    noisy = {**args, "dp": {"type": "central", "sigma": 1.0, "clip": clip}}
    _, p1 = train(node, start, noisy)
    _, p2 = train(node, start, noisy)
    assert not torch.equal(
        p1["model_weights"]["0.weight"], p2["model_weights"]["0.weight"]
    )  # noise is not seeded


def test_local_dp_without_opacus_is_a_clear_init_error(tmp_path):
    from fedpipe.training.privacy import opacus_available

    if opacus_available():
        pytest.skip("Opacus is installed: the local-DP path is exercised in test_training_units")
    node = make_node(tmp_path)
    reply, _ = train(node, initial_params(), {**ARGS, "dp": {"type": "local", "sigma": 1.0, "clip": 1.0}})
    assert reply.error_code is ErrorCode.PLAN_INIT_FAILED
    assert "Opacus" in reply.error.detail


@pytest.mark.slow
def test_fedprox_keeps_the_update_closer_to_the_global_model(tmp_path):
    start = initial_params()

    def distance(mu):
        node = make_node(tmp_path / str(mu))
        args = {
            **ARGS,
            "epochs": 2,
            "fedprox_mu": mu,
            "test_on_local_updates": False,
            "test_on_global_updates": False,
            "optimizer_args": {"lr": 0.05},
        }
        reply, payload = train(node, start, args)
        assert reply.success, reply.msg
        return math.sqrt(sum(float(((payload["model_weights"][k] - start[k]) ** 2).sum()) for k in start))

    assert distance(5.0) < distance(0)


class CustomTestPlan(MlpPlan):
    def testing_step(self, data, target):
        pred = (torch.sigmoid(self.model()(data).squeeze(-1)) >= 0.5).float()
        return {"hits": float((pred == target).float().mean())}


def test_testing_step_is_reported_per_batch(tmp_path):
    node = make_node(tmp_path)
    args = {**ARGS, "epochs": 1, "loader_args": {"batch_size": 50}}
    reply, payload = train(node, initial_params(), args, plan=CustomTestPlan)
    assert reply.success, reply.msg
    tests = [e for e in node.monitor.events if e.test and e.test_on_global_updates]
    assert [e.iteration for e in tests] == [1, 2, 3]  # 142 testing samples in batches of 50
    assert [e.batch_samples for e in tests] == [50, 100, 142]
    assert set(payload["metadata"]["validation_after"]) == {"hits"}
