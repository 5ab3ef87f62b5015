"""Unit tests of the training layer's parts: device choice, schedule, loaders, state, SCAFFOLD, aggregation."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpipe.args import DpArgs, Metric, TrainingArgs
from fedpipe.codec import dumps, loads
from fedpipe.researcher.aggregation import fedavg, scaffold_update, unflatten
from fedpipe.settings import GpuPolicy
from fedpipe.training import (
    DataError,
    DataManager,
    PlanContractError,
    PlanError,
    Scaffold,
    TabularDataset,
    TorchTrainingPlan,
    evaluate,
    load_breast_cancer,
    metric_values,
    non_iid_shards,
    select_device,
)
from fedpipe.training.plan import _schedule
from fedpipe.training.privacy import clip_update, opacus_available
from tests.training.support import DATA, MlpPlan


@pytest.mark.parametrize(
    ("policy", "use_gpu", "available", "expected"),
    [
        (GpuPolicy(), False, True, "cpu"),
        (GpuPolicy(), True, True, "cpu"),
        (GpuPolicy(gpu=True), False, True, "cpu"),
        (GpuPolicy(gpu=True), True, True, "cuda"),
        (GpuPolicy(gpu=True), True, False, "cpu"),
        (GpuPolicy(gpu_only=True), False, True, "cuda"),
        (GpuPolicy(gpu_only=True), True, False, "cpu"),
        (GpuPolicy(gpu=True, gpu_num=1), True, True, "cuda:1"),
        (GpuPolicy(gpu=True, gpu_num=5), True, True, "cuda"),
    ],
)
def test_device_follows_the_reference_rule(policy, use_gpu, available, expected):
    choice = select_device(policy, use_gpu, cuda_available=available, device_count=2)
    assert str(choice.device) == expected


def test_device_messages_explain_the_choice():
    assert "gpu_only" in select_device(GpuPolicy(gpu_only=True), True, cuda_available=False).messages[0]
    assert "no CUDA" in select_device(GpuPolicy(gpu=True), True, cuda_available=False).messages[0]
    assert (
        "does not exist"
        in select_device(GpuPolicy(gpu=True, gpu_num=5), True, cuda_available=True, device_count=1).messages[
            -1
        ]
    )


@settings(max_examples=50, deadline=None)
@given(
    n_batches=st.integers(1, 20),
    epochs=st.integers(0, 5),
    maxnum=st.none() | st.integers(0, 30),
    updates=st.none() | st.integers(0, 60),
)
def test_schedule_runs_exactly_what_was_asked(n_batches, epochs, maxnum, updates):
    args = TrainingArgs(epochs=epochs, batch_maxnum=maxnum, num_updates=updates)
    plan = _schedule(args, n_batches)
    assert all(0 < b <= n_batches for b in plan)
    if updates is not None:
        assert sum(plan) == updates
    else:
        per_epoch = min(maxnum, n_batches) if maxnum else n_batches
        assert plan == [per_epoch] * epochs


def test_plan_loader_args_win_over_researcher_args():
    data = load_breast_cancer()
    manager = DataManager(TabularDataset(data.features, data.labels), batch_size=10, shuffle=False)
    train, test = manager.loaders(
        list(range(100)), list(range(100, 125)), {"batch_size": 64, "shuffle": True}
    )
    assert train.batch_size == 10
    assert len(train) == 10
    assert test.batch_size == 10
    assert len(test) == 3
    assert isinstance(test.sampler, torch.utils.data.SequentialSampler)


def test_loader_errors_are_data_errors():
    manager = DataManager(TabularDataset(np.zeros((4, 2)), np.zeros(4)), not_an_arg=1)
    with pytest.raises(DataError, match="loader arguments"):
        manager.loaders([0, 1], [], {})
    with pytest.raises(DataError, match="outside the dataset"):
        DataManager(TabularDataset(np.zeros((4, 2)), np.zeros(4))).loaders([0, 9], [], {})
    with pytest.raises(DataError, match="torch Dataset"):
        DataManager([1, 2, 3])


def test_seeded_shuffling_repeats():
    manager = DataManager(
        TabularDataset(np.arange(20.0).reshape(10, 2), np.arange(10.0)), batch_size=3, shuffle=True
    )
    order = [[b[1].tolist() for b in manager.loaders(list(range(10)), [], {}, seed=4)[0]] for _ in range(2)]
    assert order[0] == order[1]


def test_dataset_parameters_standardize_and_refuse_unknown():
    ds = TabularDataset(np.array([[1.0], [3.0]]), np.zeros(2))
    ds.set_dataset_parameters({"standardize": True})
    assert ds.features.flatten().tolist() == [-1.0, 1.0]
    with pytest.raises(DataError, match="unknown dataset parameter"):
        ds.set_dataset_parameters({"whiten": True})


@settings(max_examples=30, deadline=None)
@given(n_nodes=st.integers(1, 6), seed=st.integers(0, 1000), skew=st.floats(0, 1))
def test_shards_partition_the_samples_deterministically(n_nodes, seed, skew):
    labels = load_breast_cancer().labels
    shards = non_iid_shards(labels, n_nodes, seed=seed, skew=skew)
    assert sorted(i for s in shards for i in s) == list(range(len(labels)))
    assert shards == non_iid_shards(labels, n_nodes, seed=seed, skew=skew)


def _plan(**args):
    plan = MlpPlan()
    plan.post_init(model_args={}, training_args=TrainingArgs(**args), aggregator_args={})
    return plan


def test_state_round_trips_through_the_codec():
    plan = _plan()
    opt = plan.optimizer()
    for p in plan.model().parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    encoded = loads(dumps(dict(plan.save_state()))).unwrap()
    fresh = _plan()
    assert list(fresh.load_state(encoded)) == []
    a, b = opt.state_dict()["state"], fresh.optimizer().state_dict()["state"]
    assert all(torch.equal(a[i]["exp_avg"], b[i]["exp_avg"]) for i in a)


def test_state_of_another_optimizer_or_version_is_a_warning():
    state = dict(_plan().save_state())
    state["optimizer"] = {**state["optimizer"], "type": "torch.optim.sgd.SGD"}
    warnings = _plan().load_state(state)
    assert len(warnings) == 1
    assert "ignored" in warnings[0]
    assert "version" in _plan().load_state({"version": 99})[0]


def test_scaffold_matches_the_paper_for_plain_sgd():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(3))
    opt = Scaffold([p], lr=0.1)
    c_local, c_server = torch.randn(3), torch.randn(3)
    opt.state[p]["c_local"] = c_local.clone()
    opt.set_server_control({p: c_server})
    start = p.detach().clone()
    opt.start_round()
    grads = [torch.randn(3) for _ in range(4)]
    for g in grads:
        p.grad = g
        opt.step()
    # y = x - lr * sum(g_k - c_i + c); c_i+ (option II) = c_i - c + (x - y) / (K lr) = mean(g_k)
    option_two = c_local - c_server + (start - p.detach()) / (4 * 0.1)
    deltas = opt.finish_round()
    assert torch.allclose(opt.state[p]["c_local"], option_two, atol=1e-6)
    assert torch.allclose(deltas[p], option_two - c_local, atol=1e-6)


def test_scaffold_plan_validates_aux_vars():
    plan = MlpPlan()
    plan.post_init(
        model_args={},
        training_args=TrainingArgs(optimizer_args={"lr": 0.1}),
        aggregator_args={"aggregator_name": "SCAFFOLD"},
    )
    assert isinstance(plan.optimizer(), Scaffold)
    assert plan.optimizer_args()["lr"] == 0.1
    with pytest.raises(PlanError, match="global_state"):
        plan.set_aux_vars({"scaffold": {"delta": 1.0}})
    with pytest.raises(PlanError, match="lacks parameter"):
        plan.set_aux_vars({"scaffold": {"global_state": {}}})
    with pytest.raises(PlanError, match="unknown auxiliary"):
        plan.set_aux_vars({"fedopt": {}})


def test_scaffold_aggregator_with_another_optimizer_is_a_contract_error():
    class AdamPlan(MlpPlan):
        def init_optimizer(self):
            return torch.optim.Adam(self.model().parameters())

    with pytest.raises(PlanContractError, match="Scaffold optimizer"):
        AdamPlan().post_init(
            model_args={}, training_args=TrainingArgs(), aggregator_args={"aggregator_name": "scaffold"}
        )


def test_init_dependencies_contract():
    class Deps(MlpPlan):
        def init_dependencies(self):
            return ["import torch"]

    class BadDeps(MlpPlan):
        def init_dependencies(self):
            return "import torch"

    plan = Deps()
    plan.post_init(model_args={}, training_args=TrainingArgs(), aggregator_args={})
    assert plan.dependencies == ("import torch",)
    with pytest.raises(PlanContractError, match="list of import lines"):
        BadDeps().post_init(model_args={}, training_args=TrainingArgs(), aggregator_args={})


def test_error_messages_name_no_path():
    with pytest.raises(PlanContractError) as info:
        TorchTrainingPlan().post_init(model_args={}, training_args=TrainingArgs(), aggregator_args={})
    assert "/" not in str(info.value)
    assert ".py" not in str(info.value)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(st.floats(-10, 10), min_size=3, max_size=3), st.integers(1, 50)),
        min_size=1,
        max_size=5,
    )
)
def test_fedavg_is_the_sample_weighted_mean(rows):
    updates = [({"w": torch.tensor(w, dtype=torch.float64)}, n) for w, n in rows]
    total = sum(n for _, n in rows)
    expected = [sum(w[i] * n for w, n in rows) / total for i in range(3)]
    assert np.allclose(fedavg(updates)["w"].tolist(), expected)


def test_scaffold_update_moves_the_server_control_by_the_mean_delta():
    x = {"w": torch.zeros(2)}
    c = {"w": torch.ones(2)}
    new_x, new_c = scaffold_update(
        x, [({"w": torch.ones(2)}, 3)], c, [{"w": torch.full((2,), 3.0)}], n_nodes=3, server_lr=0.5
    )
    assert new_x["w"].tolist() == [0.5, 0.5]
    assert new_c["w"].tolist() == [2.0, 2.0]


def test_unflatten_inverts_flatten():
    plan = _plan()
    template = plan.after_training_params(flatten=False)
    flat = plan.after_training_params(flatten=True)
    back = unflatten(flat, template)
    assert all(torch.equal(back[k], template[k]) for k in template)


def test_clip_update_bounds_the_norm():
    clipped, norm = clip_update({"a": torch.full((4,), 3.0), "b": torch.full((2,), 4.0)}, 2.0)
    new = math.sqrt(sum(float((t**2).sum()) for t in clipped.values()))
    assert math.isclose(norm, math.sqrt(36 + 32))
    assert math.isclose(new, 2.0, rel_tol=1e-6)


@pytest.mark.skipif(not opacus_available(), reason="Opacus (the optional dp extra) is not installed")
def test_local_dp_trains_through_opacus():
    from fedpipe.plan import DatasetRecord, DataSplit
    from fedpipe.settings import GpuPolicy as Policy

    plan = MlpPlan()
    dp = DpArgs(type="local", sigma=1.0, clip=1.0)
    args = TrainingArgs(epochs=1, loader_args={"batch_size": 32}, dp=dp)
    plan.post_init(model_args={}, training_args=args, aggregator_args={})
    n = plan.load_data(DatasetRecord(dataset_id="bc"))
    plan.set_split(DataSplit(train_indices=tuple(range(n)), test_indices=()))
    before = {k: v.clone() for k, v in plan.model().state_dict().items()}
    seen = plan.training_routine(report=lambda s: None, gpu=Policy())
    assert 0.8 * n < seen < 1.2 * n  # Poisson sampling: batch sizes vary around 32
    after = plan.after_training_params(flatten=False)
    assert set(after) == set(before)  # no "_module." prefixes leak out
    assert not torch.equal(after["0.weight"], before["0.weight"])


@settings(max_examples=20, deadline=None)
@given(batch_size=st.integers(1, 200), n_test=st.integers(1, 300), metric=st.sampled_from(list(Metric)))
def test_validation_does_not_depend_on_the_test_batch_size(batch_size, n_test, metric):
    from fedpipe.plan import DatasetRecord, DataSplit

    plan = MlpPlan()
    args = TrainingArgs(loader_args={"batch_size": batch_size}, random_seed=0)
    plan.post_init(model_args={}, training_args=args, aggregator_args={})
    n = plan.load_data(DatasetRecord(dataset_id="bc", dataset_parameters={"standardize": True}))
    test = tuple(range(n - n_test, n))
    plan.set_split(DataSplit(train_indices=tuple(range(n - n_test)), test_indices=test))
    reports = []
    values = plan.testing_routine(metric=metric, metric_args={}, report=reports.append, before_train=True)
    x = plan.test_loader.dataset.dataset.features[list(test)]
    with torch.no_grad():
        expected = metric_values(
            metric.value, evaluate(metric, DATA.labels[list(test)], plan.predict(x).numpy())
        )
    assert values.keys() == expected.keys()
    assert all(math.isclose(values[k], expected[k], rel_tol=1e-5, abs_tol=1e-6) for k in values)
    assert len(reports) == 1
    assert reports[0].num_batches == math.ceil(n_test / batch_size)


def _stop_after(checks: int):
    """A ``stop`` check that turns true at its ``checks + 1``-th call, counting the calls."""
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > checks

    return stop, calls


def _split_plan(plan_class=MlpPlan, **args):
    from fedpipe.plan import DatasetRecord, DataSplit

    plan = plan_class()
    plan.post_init(model_args={}, training_args=TrainingArgs(random_seed=0, **args), aggregator_args={})
    n = plan.load_data(DatasetRecord(dataset_id="bc", dataset_parameters={"standardize": True}))
    plan.set_split(DataSplit(train_indices=tuple(range(n - 100)), test_indices=tuple(range(n - 100, n))))
    return plan


@given(st.integers(0, 12), st.sampled_from([{"epochs": 2}, {"num_updates": 9}]))
@settings(max_examples=15, deadline=None)
def test_training_stops_before_the_batch_at_which_stop_turns_true(checks, schedule):
    """stop is polled before each batch: true at check k+1 means exactly k batches were trained."""
    plan = _split_plan(loader_args={"batch_size": 100}, **schedule)
    stop, _calls = _stop_after(checks)
    reports = []
    seen = plan.training_routine(report=reports.append, gpu=GpuPolicy(), stop=stop)
    planned = 2 * len(plan.train_loader) if "epochs" in schedule else 9
    batches = min(checks, planned)
    n_train = len(plan.train_loader.dataset)
    full = sum(min(100, n_train - 100 * (i % len(plan.train_loader))) for i in range(batches))
    assert seen == full
    assert (seen == 0) == (checks == 0)


def test_testing_stops_when_stop_is_true():
    """A stopped validation returns at once: nothing reported, no metric from part of the data."""
    plan = _split_plan(loader_args={"batch_size": 10})
    reports = []
    stop, calls = _stop_after(2)
    values = plan.testing_routine(
        metric=Metric.ACCURACY, metric_args={}, report=reports.append, before_train=True, stop=stop
    )
    assert values == {} and reports == [] and calls

    class Custom(MlpPlan):
        def testing_step(self, data, target):
            return {"Loss": 1.0}

    custom = _split_plan(Custom, loader_args={"batch_size": 10})
    stop, _calls = _stop_after(4)
    values = custom.testing_routine(
        metric=None, metric_args={}, report=reports.append, before_train=True, stop=stop
    )
    assert len(reports) == 4  # one per batch, stopped before the fifth of ten
    assert list(values.values()) == [1.0]
