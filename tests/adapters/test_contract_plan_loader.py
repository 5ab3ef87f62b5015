"""PlanLoader contract, run against ModulePlanLoader and the RegistryPlanLoader fake."""

from pathlib import Path
from typing import Protocol

import pytest
from returns.result import Failure

from fedpipe.adapters.plan_loader import ModulePlanLoader
from fedpipe.errors import ErrorCode
from fedpipe.ports import PlanLoader
from fedpipe.testing import RegistryPlanLoader, ScriptedPlan


class LoaderHarness(Protocol):
    port: PlanLoader

    def provide(self, workdir: Path, class_name: str, *, raises: bool = False) -> Path: ...


class _Module:
    def __init__(self) -> None:
        self.port = ModulePlanLoader()

    def provide(self, workdir: Path, class_name: str, *, raises: bool = False) -> Path:
        body = "        raise RuntimeError('no')\n" if raises else "        super().__init__()\n"
        path = workdir / "training_plan.py"
        path.write_text(
            f"from fedpipe.testing import ScriptedPlan\n\n\nclass {class_name}(ScriptedPlan):\n"
            f"    def __init__(self):\n{body}"
        )
        return path


class _Registry:
    def __init__(self) -> None:
        self.port = self.fake = RegistryPlanLoader()

    def provide(self, workdir: Path, class_name: str, *, raises: bool = False) -> Path:
        def factory() -> ScriptedPlan:
            if raises:
                raise RuntimeError("no")
            return ScriptedPlan()

        self.fake.register(class_name, factory)
        path = workdir / "training_plan.py"
        path.write_text("# stands for the plan source\n")
        return path


@pytest.fixture(params=["module", "fake"])
def loader(request: pytest.FixtureRequest) -> LoaderHarness:
    return _Module() if request.param == "module" else _Registry()


def _assert_load_failed(result: object) -> None:
    assert isinstance(result, Failure)
    assert (result.failure().code, result.failure().step) == (ErrorCode.PLAN_LOAD_FAILED, "")


def test_named_class_is_instantiated(loader: LoaderHarness, tmp_path: Path) -> None:
    path = loader.provide(tmp_path, "MyPlan")
    first = loader.port.load(path, "MyPlan").unwrap()
    second = loader.port.load(path, "MyPlan").unwrap()
    assert isinstance(first, ScriptedPlan)
    assert first is not second
    assert first.optimizer_args() == {"lr": 0.01}


def test_unknown_class_fails(loader: LoaderHarness, tmp_path: Path) -> None:
    _assert_load_failed(loader.port.load(loader.provide(tmp_path, "MyPlan"), "OtherPlan"))


def test_raising_constructor_fails(loader: LoaderHarness, tmp_path: Path) -> None:
    _assert_load_failed(loader.port.load(loader.provide(tmp_path, "MyPlan", raises=True), "MyPlan"))


def test_missing_source_fails(loader: LoaderHarness, tmp_path: Path) -> None:
    loader.provide(tmp_path, "MyPlan")
    _assert_load_failed(loader.port.load(tmp_path / "absent.py", "MyPlan"))
