"""FedbiomedPlanLoader: Fed-BioMed plan sources load on the surface, scoped to the plan, or fail as a RoundError."""

import importlib.machinery
import sys
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from returns.result import Success

from fedpipe.adapters.plan_loader import PLAN_METHODS
from fedpipe.errors import ErrorCode, RoundError, is_public_safe
from fedpipe.fedbiomed.compat import FedbiomedPlanLoader, TorchTrainingPlan
from fedpipe.fedbiomed.compat.surface import torchvision_installed
from fedpipe.plan import DatasetRecord
from tests.fedbiomed.plans.support import SENT, fedpipe_args, model_args, shard

HEAD = SENT.read_text(encoding="utf-8").split("class BreastCancerPlan", 1)[0]
"""The import lines every sent plan starts with (6.4.1's TorchTrainingPlan defaults + TabularDataset)."""

MINIMAL = """
class Plan(TorchTrainingPlan):
    def init_model(self):
        return nn.Linear(30, 1)

    def training_data(self):
        return DataManager(TabularDataset(input_columns=list(range(30)), target_columns=30))

    def training_step(self, data, target):
        return F.mse_loss(self.model()(data), target.float())
"""


def _write(tmp_path: Path, source: str, name: str = "plan.py") -> Path:
    path = tmp_path / name
    path.write_text(source, encoding="utf-8")
    return path


def _fbm_modules() -> list[str]:
    return [n for n in sys.modules if n == "fedbiomed" or n.startswith("fedbiomed.") or "fbm_plan" in n]


def _failure(tmp_path: Path, source: str | bytes, class_name: str = "Plan") -> RoundError:
    path = tmp_path / "plan.py"
    if isinstance(source, bytes):
        path.write_bytes(source)
    else:
        path.write_text(source, encoding="utf-8")
    before = set(sys.modules)
    result = FedbiomedPlanLoader().load(path, class_name)
    assert set(sys.modules) == before
    error = result.failure()
    assert (error.code, error.step) == (ErrorCode.PLAN_LOAD_FAILED, "")  # the PlanLoader contract
    assert is_public_safe(error.public), error.public
    return error


def test_the_sent_plan_loads_as_a_training_plan_and_leaves_no_trace():
    before = set(sys.modules)
    plan = FedbiomedPlanLoader().load(SENT, "BreastCancerPlan").unwrap()
    assert set(sys.modules) == before
    assert _fbm_modules() == []
    assert isinstance(plan, TorchTrainingPlan)
    assert all(callable(getattr(plan, m)) for m in PLAN_METHODS)
    assert type(plan).__name__ == "BreastCancerPlan"
    assert not list(SENT.parent.glob("__pycache__/*.sent*"))


def test_helpers_the_plan_imports_from_its_directory_leave_no_trace(tmp_path):
    (tmp_path / "helper_of_the_plan.py").write_text("WIDTH = 30\n", encoding="utf-8")
    source = (
        HEAD
        + f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nimport helper_of_the_plan\n"
        + MINIMAL.replace("nn.Linear(30, 1)", "nn.Linear(helper_of_the_plan.WIDTH, 1)")
    )
    path_before, modules_before = list(sys.path), set(sys.modules)
    plan = FedbiomedPlanLoader().load(_write(tmp_path, source), "Plan").unwrap()
    assert isinstance(plan, TorchTrainingPlan)
    assert sys.path == path_before and set(sys.modules) == modules_before
    assert not (tmp_path / "__pycache__").exists()


def _fake_fedbiomed(monkeypatch: pytest.MonkeyPatch) -> dict[str, types.ModuleType]:
    """A "real" fedbiomed installation: modules in sys.modules whose TorchTrainingPlan must never be used."""

    class Trap:
        def __init__(self) -> None:
            raise AssertionError("the installed fedbiomed was used")

    modules = {
        name: types.ModuleType(name)
        for name in ("fedbiomed", "fedbiomed.common", "fedbiomed.common.training_plans")
    }
    modules["fedbiomed"].common = modules["fedbiomed.common"]  # type: ignore[attr-defined]
    modules["fedbiomed.common"].training_plans = modules["fedbiomed.common.training_plans"]  # type: ignore[attr-defined]
    modules["fedbiomed.common.training_plans"].TorchTrainingPlan = Trap  # type: ignore[attr-defined]
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return modules


LATE_IMPORT = (
    HEAD
    + """
class Plan(TorchTrainingPlan):
    def init_model(self):
        return nn.Linear(30, 1)

    def training_data(self):
        from fedbiomed.common.dataset import TabularDataset as Late  # resolved when the round calls it
        import fedbiomed.common.constants as constants
        assert constants.ProcessTypes.DATA_LOADER.value == 0
        return DataManager(Late(input_columns=list(range(30)), target_columns=30))

    def training_step(self, data, target):
        return F.mse_loss(self.model()(data), target.float())
"""
)


def test_an_installed_fedbiomed_is_neither_shadowed_nor_used(tmp_path, monkeypatch):
    installed = _fake_fedbiomed(monkeypatch)
    plan = FedbiomedPlanLoader().load(_write(tmp_path, LATE_IMPORT), "Plan").unwrap()
    assert isinstance(plan, TorchTrainingPlan)
    # imports inside the plan's methods, long after loading, still get the surface
    plan.post_init(model_args={}, training_args=fedpipe_args({"epochs": 1}), aggregator_args={})
    assert plan.load_data(DatasetRecord(dataset_id="bc", path=str(shard(tmp_path, 20)))) == 20
    for name, module in installed.items():
        assert sys.modules[name] is module
    assert not hasattr(installed["fedbiomed.common"], "dataset")


def test_the_plan_module_gets_the_surface_and_other_imports_are_real(tmp_path):
    source = (
        HEAD
        + "import numpy as np\nimport fedbiomed\nimport fedbiomed.common.training_plans as tp\n"
        + MINIMAL
    )
    plan = FedbiomedPlanLoader().load(_write(tmp_path, source), "Plan").unwrap()
    namespace = plan.training_step.__globals__  # type: ignore[attr-defined]
    assert namespace["np"] is sys.modules["numpy"]
    assert namespace["tp"].TorchTrainingPlan is TorchTrainingPlan
    assert namespace["fedbiomed"].__name__ == "fedbiomed"
    assert "fedbiomed" not in sys.modules


def test_an_installed_torchvision_is_the_one_plans_get(tmp_path, monkeypatch):
    fake = types.ModuleType("torchvision")
    fake.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    fake.datasets, fake.transforms = (
        types.ModuleType("torchvision.datasets"),
        types.ModuleType("torchvision.transforms"),
    )  # type: ignore[attr-defined]
    fake.transforms.ToTensor = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    source = HEAD + MINIMAL.replace(
        "return nn.Linear(30, 1)", "transforms.ToTensor\n        return nn.Linear(30, 1)"
    )
    plan = FedbiomedPlanLoader().load(_write(tmp_path, source), "Plan").unwrap()
    assert plan.training_step.__globals__["transforms"] is fake.transforms  # type: ignore[attr-defined]
    assert sys.modules["torchvision"] is fake


@pytest.mark.skipif(torchvision_installed(), reason="torchvision is installed: plans get the real one")
@pytest.mark.parametrize(
    "use",
    [
        "transform = transforms.Compose([transforms.ToTensor()])",
        "from torchvision.transforms import ToTensor",
        "import torchvision.transforms.functional",
    ],
)
def test_torchvision_uses_are_refused_when_the_plan_loads(tmp_path, use):
    source = HEAD + MINIMAL.replace(
        "    def training_data(self):\n", f"    def training_data(self):\n        {use}\n"
    )
    error = _failure(tmp_path, source)
    assert error.public.startswith("This node does not support `torchvision.transforms")
    assert error.public.endswith("(torchvision is not installed on this node) in training plans.")


@pytest.mark.skipif(torchvision_installed(), reason="torchvision is installed: plans get the real one")
def test_a_local_name_that_shadows_a_stand_in_is_not_refused(tmp_path):
    source = HEAD + MINIMAL + "\n    def helper(self, transforms):\n        return transforms.anything\n"
    assert isinstance(
        FedbiomedPlanLoader().load(_write(tmp_path, source), "Plan").unwrap(), TorchTrainingPlan
    )


@pytest.mark.parametrize(
    ("line", "public"),
    [
        (
            "from fedbiomed.common.optimizers.optimizer import Optimizer",
            "This node does not support `fedbiomed.common.optimizers.Optimizer` (declearn optimizers) in training plans.",
        ),
        (
            "from fedbiomed.common.optimizers.declearn import AdamModule",
            "This node does not support `fedbiomed.common.optimizers.Optimizer` (declearn optimizers) in training plans.",
        ),
        (
            "from fedbiomed.common.training_plans import SKLearnTrainingPlan",
            "This node does not support scikit-learn training plans (`SKLearnTrainingPlan`) in training plans.",
        ),
        (
            "from fedbiomed.common.dataset import MedicalFolderDataset",
            "This node does not support `MedicalFolderDataset` in training plans.",
        ),
        (
            "from fedbiomed.common.dataset import MnistDataset",
            "This node does not support image datasets (`MnistDataset`) in training plans.",
        ),
        (
            "import fedbiomed.researcher.federated_workflows",
            "This node does not support researcher-side modules (`fedbiomed.researcher`) in training plans.",
        ),
        (
            "from fedbiomed.common.frobnicate import thing",
            "This node does not support `fedbiomed.common.frobnicate` in training plans.",
        ),
        (
            "from fedbiomed.common.constants import Frobnicate",
            "This node does not support `fedbiomed.common.constants.Frobnicate` in training plans.",
        ),
    ],
)
def test_imports_outside_the_surface_are_refused_by_name(tmp_path, line, public):
    error = _failure(tmp_path, HEAD + line + "\n" + MINIMAL)
    assert error.public == public


def test_an_unsupported_name_used_through_a_module_is_refused_at_load(tmp_path):
    source = (
        HEAD
        + "import fedbiomed.common.dataset as ds\n"
        + MINIMAL.replace(
            "    def training_data(self):\n",
            "    def training_data(self):\n        ds.MedicalFolderDataset()\n",
        )
    )
    assert (
        _failure(tmp_path, source).public
        == "This node does not support `MedicalFolderDataset` in training plans."
    )


@pytest.mark.parametrize(
    ("source", "class_name", "public"),
    [
        (
            HEAD + "class Plan:\n    pass\n",
            "Plan",
            "is not a `fedbiomed.common.training_plans.TorchTrainingPlan` subclass",
        ),
        (
            HEAD
            + MINIMAL
            + "\n    def training_routine(self, history_monitor=None, node_args=None):\n        pass\n",
            "Plan",
            "overrides `training_routine`, which this node provides itself.",
        ),
        (
            HEAD + MINIMAL + "\n    def tag_parameters(self, name):\n        return {'local'}\n",
            "Plan",
            "This node does not support parameter tags (`tag_parameters`: local or persistent parameters) in training plans.",
        ),
        (HEAD + MINIMAL, "Other", "The training plan class `Other` is not found in the plan source."),
        (
            HEAD + MINIMAL + "\nOther = 3\n",
            "Other",
            "The training plan class `Other` is not a class in the plan source.",
        ),
        (
            HEAD + MINIMAL + "\n    def __init__(self, needed):\n        super().__init__()\n",
            "Plan",
            "could not be instantiated without arguments (TypeError).",
        ),
    ],
)
def test_classes_the_node_cannot_drive_are_refused(tmp_path, source, class_name, public):
    assert public in _failure(tmp_path, source, class_name).public


@pytest.mark.parametrize(
    ("source", "public"),
    [
        (
            HEAD + "class Plan(TorchTrainingPlan:\n    pass\n",
            "The training plan source is not valid Python (syntax error at line",
        ),
        (
            HEAD + "class Plan(TorchTrainingPlan):\n    sizes = UNDEFINED\n",
            "The training plan source raised NameError when imported.",
        ),
        (
            HEAD + "import monai\n" + MINIMAL,
            "The training plan source imports `monai`, which is not installed on this node.",
        ),
        (HEAD + "raise SystemExit(3)\n", "The training plan source raised SystemExit when imported."),
        (
            HEAD + "class Bad(CustomDataset):\n    def __getitem__(self, i):\n        return i\n",
            "FedbiomedError when imported: a CustomDataset subclass may not override `__getitem__`",
        ),
        (b"\xff\xfe not utf-8", "The training plan source could not be read as UTF-8 text."),
    ],
)
def test_a_plan_that_does_not_import_is_a_round_error(tmp_path, source, public):
    if isinstance(source, str):
        source = source.replace(
            "from fedbiomed.common.dataset import TabularDataset",
            "from fedbiomed.common.dataset import TabularDataset, CustomDataset",
        )
    assert public in _failure(tmp_path, source).public


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(min_value=0, max_value=len(SENT.read_text(encoding="utf-8"))), noise=st.text(max_size=12)
)
def test_any_damaged_plan_source_gives_a_result_never_an_exception(tmp_path, cut, noise):
    text = SENT.read_text(encoding="utf-8")
    path = _write(tmp_path, text[:cut] + noise + text[cut:][: len(noise)])
    before = set(sys.modules)
    result = FedbiomedPlanLoader().load(path, "BreastCancerPlan")
    assert set(sys.modules) == before
    if isinstance(result, Success):
        assert isinstance(result.unwrap(), TorchTrainingPlan)
    else:
        assert result.failure().code is ErrorCode.PLAN_LOAD_FAILED
        assert is_public_safe(result.failure().public)


def test_a_loaded_plan_initialises_with_the_researchers_arguments(tmp_path):
    plan = FedbiomedPlanLoader().load(SENT, "BreastCancerPlan").unwrap()
    args = fedpipe_args({"epochs": 1, "optimizer_args": {"lr": 0.5}, "loader_args": {"batch_size": 8}})
    plan.post_init(model_args=model_args(), training_args=args, aggregator_args={})
    assert plan.model_args()["in_features"] == 30
    assert plan.optimizer_args() == {"lr": 0.5}
    assert plan.loader_args() == {"batch_size": 8}
    assert plan.training_args()["epochs"] == 1 and plan.training_args()["log_interval"] == 10
    assert type(plan.optimizer()).__name__ == "Adam" and plan.optimizer().param_groups[0]["lr"] == 0.5
    assert sorted(plan.model().state_dict()) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
