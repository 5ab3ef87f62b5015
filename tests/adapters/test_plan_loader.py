"""ModulePlanLoader hygiene: sys.path and sys.modules restored and no file left, on success and on every failure."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from returns.result import Failure, Success

from fedpipe.adapters.plan_loader import PLAN_METHODS, ModulePlanLoader
from fedpipe.errors import ErrorCode, is_public_safe
from fedpipe.plan import TrainingPlan
from fedpipe.testing import ScriptedPlan

METHODS = "".join(f"    def {name}(self, *args, **kwargs):\n        return None\n\n" for name in PLAN_METHODS)

STANDALONE = f'''
"""A plan with every protocol method and no imports."""


class StandalonePlan:
    def __init__(self):
        self.created = True

{METHODS}'''

SUBCLASS = """
from fedpipe.testing import ScriptedPlan


class MyPlan(ScriptedPlan):
    pass
"""

DATACLASS = f"""
from __future__ import annotations
import dataclasses


@dataclasses.dataclass
class DataPlan:
    lr: float = 0.1

{METHODS}"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "round_x"
    d.mkdir()
    return d


@pytest.fixture(autouse=True)
def interpreter_untouched() -> Iterator[None]:
    """Every test here must leave sys.path and sys.modules as it found them."""
    path_before = list(sys.path)
    path_object = sys.path
    modules_before = dict(sys.modules)
    yield
    assert sys.path is path_object
    assert sys.path == path_before
    assert not [n for n in sys.modules if n.startswith("fedpipe_plan_")]
    assert not [n for n in sys.modules if n.startswith("plan_helper")]
    for name, module in modules_before.items():
        assert sys.modules.get(name) is module, f"sys.modules[{name!r}] was replaced"


def _write(workdir: Path, source: str | bytes) -> Path:
    path = workdir / "training_plan.py"
    if isinstance(source, str):
        path.write_text(source)
    else:
        path.write_bytes(source)
    return path


def _listing(workdir: Path) -> list[str]:
    return sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))


def test_plan_methods_are_the_protocol_methods() -> None:
    protocol = {n for n, v in vars(TrainingPlan).items() if not n.startswith("_") and callable(v)}
    assert set(PLAN_METHODS) == protocol


def test_standalone_plan_loads_and_leaves_no_trace(workdir: Path) -> None:
    path = _write(workdir, STANDALONE)
    before = _listing(workdir)
    result = ModulePlanLoader().load(path, "StandalonePlan")
    assert isinstance(result, Success)
    plan = result.unwrap()
    assert type(plan).__name__ == "StandalonePlan"
    assert plan.created  # type: ignore[attr-defined]
    assert plan.save_state() is None
    assert _listing(workdir) == before == ["training_plan.py"]


def test_plan_may_build_on_installed_libraries(workdir: Path) -> None:
    plan = ModulePlanLoader().load(_write(workdir, SUBCLASS), "MyPlan").unwrap()
    assert isinstance(plan, ScriptedPlan)
    assert plan.optimizer_args() == {"lr": 0.01}


def test_dataclass_plan_loads(workdir: Path) -> None:
    """Decorators that look the module up by name (dataclasses) work while the module runs."""
    plan = ModulePlanLoader().load(_write(workdir, DATACLASS), "DataPlan").unwrap()
    assert plan.lr == 0.1  # type: ignore[attr-defined]


def test_each_load_is_a_fresh_module(workdir: Path) -> None:
    loader = ModulePlanLoader()
    path = _write(workdir, STANDALONE + "\nCOUNTER = []\n")
    a = loader.load(path, "StandalonePlan").unwrap()
    b = loader.load(path, "StandalonePlan").unwrap()
    assert type(a) is not type(b)
    assert type(a).__module__ != type(b).__module__


def test_plan_that_tampers_with_the_interpreter_is_undone(workdir: Path) -> None:
    source = (
        "import sys, json\n"
        "sys.path.insert(0, '/somewhere/else')\n"
        "sys.path.append('/and/here')\n"
        "sys.modules['json'] = None\n" + STANDALONE
    )
    assert isinstance(ModulePlanLoader().load(_write(workdir, source), "StandalonePlan"), Success)


def test_helper_modules_from_the_plan_directory_are_unloaded_without_bytecode(workdir: Path) -> None:
    (workdir / "plan_helper_mod.py").write_text("VALUE = 41\n")
    source = (
        "import os, sys\n"
        "sys.path.insert(0, os.path.dirname(__file__))\n"
        "import plan_helper_mod\n"
        + STANDALONE.replace("self.created = True", "self.created = plan_helper_mod.VALUE + 1")
    )
    plan = ModulePlanLoader().load(_write(workdir, source), "StandalonePlan").unwrap()
    assert plan.created == 42  # type: ignore[attr-defined]
    assert _listing(workdir) == ["plan_helper_mod.py", "training_plan.py"]  # no __pycache__


BROKEN = {
    "syntax error": ("class P:\n    def f(self)\n        pass\n", "syntax error at line 2"),
    "import error": ("import fedpipe_no_such_module_xyz\n" + STANDALONE, "ModuleNotFoundError when imported"),
    "name error": ("undefined_name + 1\n" + STANDALONE, "NameError when imported"),
    "system exit": ("raise SystemExit(3)\n" + STANDALONE, "SystemExit when imported"),
    "missing class": (STANDALONE, "`MissingPlan` is not found"),
    "not a class": ("MissingPlan = 3\n" + STANDALONE, "`MissingPlan` is not a class"),
    "raising constructor": (
        STANDALONE.replace("self.created = True", "raise RuntimeError('/secret/path')"),
        "could not be instantiated without arguments (RuntimeError)",
    ),
    "constructor needs arguments": (
        STANDALONE.replace("def __init__(self):", "def __init__(self, x):"),
        "could not be instantiated without arguments (TypeError)",
    ),
    "missing methods": (
        STANDALONE.replace("def save_state(", "def save_state_typo(").replace(
            "def set_split(", "def set_split_typo("
        ),
        "lacks required methods: set_split, save_state",
    ),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_broken_plans_fail_cleanly(workdir: Path, case: str) -> None:
    source, public = BROKEN[case]
    class_name = "MissingPlan" if "MissingPlan" in public else "StandalonePlan"
    path = _write(workdir, source)
    result = ModulePlanLoader().load(path, class_name)
    assert isinstance(result, Failure)
    error = result.failure()
    assert (error.code, error.step) == (ErrorCode.PLAN_LOAD_FAILED, "")
    assert public in error.public
    assert is_public_safe(error.public)
    assert str(workdir) not in error.public
    assert "/secret/path" not in error.public
    assert _listing(workdir) == ["training_plan.py"]


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", None], ids=["not utf-8", "missing file"])
def test_unreadable_source_fails_cleanly(workdir: Path, content: bytes | None) -> None:
    path = _write(workdir, content) if content is not None else workdir / "absent.py"
    result = ModulePlanLoader().load(path, "P")
    assert isinstance(result, Failure)
    assert result.failure().code is ErrorCode.PLAN_LOAD_FAILED
    assert is_public_safe(result.failure().public)
