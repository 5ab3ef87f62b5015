"""The surface's TorchTrainingPlan through the TrainingPlan interface: 6.4.1's semantics where they differ from fedpipe's."""

from pathlib import Path
from typing import Any

import pytest
import torch

from fedpipe.fedbiomed.compat import FedbiomedPlanLoader, UnsupportedFeature
from fedpipe.fedbiomed.compat.errors import FedbiomedTrainingPlanError
from fedpipe.plan import DatasetRecord, Scalars
from fedpipe.settings import GpuPolicy
from tests.fedbiomed.plans.support import SENT, fedpipe_args, model_args, shard

HEAD = SENT.read_text(encoding="utf-8").split("class BreastCancerPlan", 1)[0]

PLAN = """
class Plan(TorchTrainingPlan):
    def init_model(self):
        return nn.Sequential(nn.Linear(30, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))

    def init_optimizer(self, optimizer_args):
        return torch.optim.SGD(self.model().parameters(), lr=optimizer_args["lr"])

    def training_data(self):
        return DataManager(TabularDataset(input_columns=list(range(30)), target_columns=30,
                                          transform=lambda x: x.float() / 1000.0,
                                          target_transform=lambda y: y.float()))

    def training_step(self, data, target):
        return F.binary_cross_entropy_with_logits(self.model()(data), target)
"""


def _plan(tmp_path: Path, body: str = PLAN, **training_args: Any) -> Any:
    path = tmp_path / "plan.py"
    path.write_text(HEAD + body, encoding="utf-8")
    plan = FedbiomedPlanLoader().load(path, "Plan").unwrap()
    aggregator_args = training_args.pop("aggregator_args", {})
    defaults = {
        "epochs": 1,
        "loader_args": {"batch_size": 10},
        "optimizer_args": {"lr": 0.1},
        "random_seed": 3,
    }
    args = fedpipe_args({**defaults, **training_args})
    plan.post_init(model_args=model_args(), training_args=args, aggregator_args=aggregator_args)
    return plan, args


def _ready(plan: Any, args: Any, tmp_path: Path, rows: int = 60) -> None:
    n = plan.load_data(DatasetRecord(dataset_id="bc", path=str(shard(tmp_path, rows))))
    plan.set_split(plan.fedbiomed_split(n, args.test_ratio))


def _train(plan: Any) -> tuple[int, list[Scalars]]:
    events: list[Scalars] = []
    return plan.training_routine(report=events.append, gpu=GpuPolicy()), events


def test_log_interval_zero_reports_nothing_as_in_6_4_1(tmp_path):
    plan, args = _plan(tmp_path, log_interval=0, test_ratio=0.5)
    _ready(plan, args, tmp_path)
    seen, events = _train(plan)
    assert seen == 30 and events == []
    assert plan.testing_routine(metric=None, metric_args={}, report=events.append, before_train=False)
    assert events == []


def test_dry_run_trains_one_batch(tmp_path):
    plan, args = _plan(tmp_path, dry_run=True, epochs=3)
    _ready(plan, args, tmp_path)
    seen, events = _train(plan)
    assert seen == 10 and len(events) == 1 and events[0].iteration == 1


def test_a_data_loader_preprocess_replaces_the_training_loader(tmp_path):
    body = PLAN.replace(
        "    def training_data(self):\n",
        "    def bigger(self, loader):\n"
        "        return PytorchDataLoader(loader.dataset, batch_size=20)\n\n"
        "    def training_data(self):\n"
        "        self.add_preprocess(self.bigger, ProcessTypes.DATA_LOADER)\n",
    )
    plan, args = _plan(tmp_path, body, log_interval=1)
    _ready(plan, args, tmp_path)
    seen, events = _train(plan)
    assert seen == 60 and [e.batch_samples for e in events] == [20, 20, 20]
    assert plan.training_data_loader.batch_size == 20


def test_a_preprocess_returning_something_else_fails(tmp_path):
    body = PLAN.replace(
        "    def training_data(self):\n",
        "    def broken(self, loader):\n        return list(loader)\n\n"
        "    def training_data(self):\n        self.add_preprocess(self.broken, ProcessTypes.DATA_LOADER)\n",
    )
    plan, args = _plan(tmp_path, body)
    _ready(plan, args, tmp_path)
    with pytest.raises(FedbiomedTrainingPlanError, match="must return a PytorchDataLoader, got list"):
        _train(plan)


def test_the_legacy_scaffold_correction_is_subtracted_from_the_gradients(tmp_path):
    plain, args = _plan(tmp_path, dry_run=True)
    start = {k: v.clone() for k, v in plain.model().state_dict().items()}
    _ready(plain, args, tmp_path)
    _train(plain)
    correction = {name: torch.full_like(p, 0.5) for name, p in plain.model().named_parameters()}
    corrected, args = _plan(
        tmp_path,
        dry_run=True,
        aggregator_args={"aggregator_name": "Scaffold", "aggregator_correction": correction},
    )
    corrected.set_model_params(start)
    _ready(corrected, args, tmp_path)
    _train(corrected)
    for name, param in corrected.model().named_parameters():
        expected = dict(plain.model().named_parameters())[name] + 0.1 * 0.5  # p - lr * (g - c)
        torch.testing.assert_close(param.detach(), expected.detach())
    assert corrected.optimizer_args()["lr"] == {name: 0.1 for name, _ in corrected.model().named_parameters()}


def test_fedprox_pulls_the_update_towards_the_global_model(tmp_path):
    distances = {}
    for mu in (None, 0.0, 5.0):
        plan, args = _plan(tmp_path, fedprox_mu=mu, epochs=3)
        start = {k: v.clone() for k, v in plan.model().state_dict().items()}
        _ready(plan, args, tmp_path)
        _train(plan)
        end = plan.model().state_dict()
        distances[mu] = sum(
            float((end[k] - start[k]).norm()) for k, v in start.items() if v.is_floating_point()
        )
    assert distances[None] == pytest.approx(distances[0.0])
    assert distances[5.0] < 0.8 * distances[None]


def test_buffers_are_shared_unless_share_persistent_buffers_is_off(tmp_path):
    for share, names in (
        (True, {"1.running_mean", "1.running_var", "1.num_batches_tracked"}),
        (False, set()),
    ):
        plan, args = _plan(tmp_path, share_persistent_buffers=share)
        _ready(plan, args, tmp_path)
        _train(plan)
        params = plan.after_training_params(flatten=False)
        buffers = {n for n in params if "running" in n or "num_batches" in n}
        assert buffers == names
        assert len(plan.after_training_params(flatten=True)) == sum(v.numel() for v in params.values())


def test_the_plan_keeps_only_its_test_split_between_rounds(tmp_path):
    plan, args = _plan(tmp_path, test_ratio=0.25)
    _ready(plan, args, tmp_path)
    _train(plan)
    state = plan.save_state()
    assert set(state) == {"kind", "split"}  # no optimizer state: 6.4.1 restarts a native optimizer each round
    again, args = _plan(tmp_path, test_ratio=0.25)
    assert again.load_state({"version": 1, "optimizer": {}}) == [
        "saved plan state is not a Fed-BioMed plan's: ignored"
    ]
    assert again.load_state(state) == []
    n = again.load_data(DatasetRecord(dataset_id="bc", path=str(shard(tmp_path, 60))))
    kept = again.fedbiomed_split(n, 0.25, sorted(state["split"]["testing_index"]))
    assert list(kept.train_indices) == state["split"]["training_index"]
    assert list(kept.test_indices) == state["split"]["testing_index"]


def test_auxiliary_variables_and_default_optimizer_errors_are_clear(tmp_path):
    plan, _ = _plan(tmp_path)
    plan.set_aux_vars({})
    with pytest.raises(UnsupportedFeature, match="optimizer auxiliary variables"):
        plan.set_aux_vars({"scaffold": {}})
    assert plan.collect_aux_vars() == {}
    default = PLAN.replace(
        "    def init_optimizer(self, optimizer_args):", "    def unused(self, optimizer_args):"
    )
    with pytest.raises(FedbiomedTrainingPlanError, match="invalid argument for the default optimizer Adam"):
        _plan(tmp_path, default, optimizer_args={"learning_rate": 0.1})


def test_validation_values_follow_the_testing_step_or_the_metric(tmp_path):
    listing = (
        PLAN + "\n    def testing_step(self, data, target):\n        return [0.25, torch.tensor(0.75)]\n"
    )
    plan, args = _plan(tmp_path, listing, test_ratio=0.5, test_batch_size=7)
    _ready(plan, args, tmp_path)
    events: list[Scalars] = []
    values = plan.testing_routine(metric=None, metric_args={}, report=events.append, before_train=True)
    assert values == {"Custom_1": 0.25, "Custom_2": 0.75}
    assert [(e.iteration, e.batch_samples, e.num_batches) for e in events] == [(1, 7, 5), (5, 30, 5)]
    assert plan.model().training  # a testing_step runs in train mode, and the model stays in it
    metric, args = _plan(tmp_path, test_ratio=0.5)
    _ready(metric, args, tmp_path)
    assert set(
        metric.testing_routine(metric=None, metric_args={}, report=events.append, before_train=False)
    ) == {"ACCURACY"}
    assert metric.model().training


CUSTOM = """
class Plan(TorchTrainingPlan):
    class Rows(CustomDataset):
        def read(self):
            import numpy as np

            table = np.loadtxt(self.path, delimiter=",", skiprows=1, dtype=np.float32)
            self.x, self.y = torch.from_numpy(table[:, :30] / 1000.0), torch.from_numpy(table[:, 30:])

        def get_item(self, index):
            return self.x[index], self.y[index]

        def __len__(self):
            return len(self.y)

    def init_model(self):
        return nn.Linear(30, 1)

    def training_data(self):
        return DataManager(self.Rows(), shuffle=True)

    def training_step(self, data, target):
        return F.binary_cross_entropy_with_logits(self.model()(data), target)
"""


def test_a_custom_dataset_defined_in_the_plan_reads_the_node_file(tmp_path):
    path = tmp_path / "plan.py"
    path.write_text(
        HEAD.replace("import TabularDataset", "import TabularDataset, CustomDataset") + CUSTOM,
        encoding="utf-8",
    )
    plan = FedbiomedPlanLoader().load(path, "Plan").unwrap()
    args = fedpipe_args({"epochs": 2, "loader_args": {"batch_size": 8}, "random_seed": 1, "test_ratio": 0.25})
    plan.post_init(model_args={}, training_args=args, aggregator_args={})
    _ready(plan, args, tmp_path, rows=40)
    seen, events = _train(plan)
    assert seen == 2 * 30 and all(e.train for e in events)
    values = plan.testing_routine(metric=None, metric_args={}, report=events.append, before_train=False)
    assert 0.0 <= values["ACCURACY"] <= 1.0
