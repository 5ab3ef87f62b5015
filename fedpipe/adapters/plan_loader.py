"""ModulePlanLoader: imports a downloaded plan source under a unique name and leaves the interpreter as it was.

The reference inserted its temporary directory into ``sys.path``, imported the plan by file
name, never removed the module and never restored the path when the import failed (D9). Here:

* the source is read and compiled in memory and run in a fresh module named
  ``fedpipe_plan_<uuid>``: no import machinery, no ``sys.path`` entry, and no ``__pycache__``
  written next to the source, nor next to helper modules the plan itself imports (bytecode
  writing is off during the load); the source itself lives in the round workspace, which the
  runner removes;
* ``sys.path`` is restored in place afterwards, and ``sys.modules`` too: the plan's module and
  every module loaded from the plan's directory are removed, and any entry the plan replaced is
  put back. Third-party libraries the plan imported for the first time (torch, numpy ...) stay
  loaded: they are process-wide caches, and C extensions cannot be imported twice;
* the class named in the request is instantiated with no arguments and checked to have every
  method of the ``TrainingPlan`` protocol.

Everything the plan's code raises while importing or constructing becomes ``plan_load_failed``,
with the exception's type and message in the node log and a public text with neither paths nor
traceback. Loads are serialised by a lock, since ``sys.modules`` is process-wide.
"""

import ast
import contextlib
import sys
import threading
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from returns.result import Failure, Result, Success

from fedpipe.errors import ErrorCode, RoundError
from fedpipe.plan import TrainingPlan

__all__ = ["PLAN_METHODS", "ModulePlanLoader"]

PLAN_METHODS: tuple[str, ...] = (
    "post_init",
    "load_state",
    "set_model_params",
    "set_aux_vars",
    "load_data",
    "set_split",
    "testing_routine",
    "training_routine",
    "collect_aux_vars",
    "after_training_params",
    "save_state",
    "optimizer_args",
)
"""The methods of the ``TrainingPlan`` protocol (a test keeps this list equal to the protocol's)."""

_LOCK = threading.Lock()


def _failed(detail: str, public: str, cause: BaseException | None = None) -> RoundError:
    return RoundError(code=ErrorCode.PLAN_LOAD_FAILED, step="", detail=detail, public=public, cause=cause)


def _within(module: types.ModuleType, directory: Path) -> bool:
    file = getattr(module, "__file__", None)
    if not isinstance(file, str):
        return False
    try:
        return Path(file).resolve().is_relative_to(directory)
    except (OSError, ValueError):
        return False


def compile_plan(source_path: Path) -> Result[tuple[types.CodeType, ast.Module], RoundError]:
    """Read and compile a plan source file: its code object and syntax tree, or why it cannot be.

    Unreadable or non-UTF-8 files, syntax errors (with the line) and sources the compiler refuses
    (null bytes, absurd nesting) are ``plan_load_failed`` failures; nothing of the plan runs here.
    """
    try:
        source = source_path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return Failure(
            _failed(
                f"cannot read plan source {source_path}: {type(err).__name__}: {err}",
                "The training plan source could not be read as UTF-8 text.",
                err,
            )
        )
    try:
        tree = ast.parse(source, str(source_path))
        code = compile(tree, str(source_path), "exec", dont_inherit=True)
    except SyntaxError as err:
        line = f" at line {err.lineno}" if err.lineno else ""
        return Failure(
            _failed(
                f"plan source {source_path} has a syntax error{line}: {err.msg}",
                f"The training plan source is not valid Python (syntax error{line}).",
                err,
            )
        )
    except (ValueError, RecursionError, MemoryError) as err:
        return Failure(
            _failed(
                f"plan source {source_path} cannot be compiled: {type(err).__name__}: {err}",
                "The training plan source could not be compiled.",
                err,
            )
        )
    return Success((code, tree))


@contextlib.contextmanager
def isolated_module(module: types.ModuleType, directory: Path) -> Iterator[None]:
    """Run a plan module's code leaving no trace: ``sys.path``, ``sys.modules`` and the bytecode
    switch are as they were afterwards.

    Inside, ``module`` is registered under its name (dataclasses, typing and pickle look a module
    up by name) and no ``__pycache__`` is written; afterwards every module it added that is the
    plan's own (its name or below) or lives in ``directory`` is removed, and any module it
    replaced is put back.
    """
    saved_path = list(sys.path)
    saved_modules = dict(sys.modules)
    saved_bytecode = sys.dont_write_bytecode
    try:
        sys.dont_write_bytecode = True  # helpers the plan imports from its directory leave no __pycache__
        sys.modules[module.__name__] = module
        yield
    finally:
        sys.dont_write_bytecode = saved_bytecode
        sys.path[:] = saved_path
        directory = directory.resolve()
        name_of = module.__name__
        for name in [n for n in sys.modules if n not in saved_modules]:
            added = sys.modules[name]
            if name == name_of or name.startswith(name_of + ".") or _within(added, directory):
                del sys.modules[name]
        for name, previous in saved_modules.items():
            if sys.modules.get(name) is not previous:
                sys.modules[name] = previous


class ModulePlanLoader:
    """The real PlanLoader: compile, run in a throw-away module, instantiate, check, clean up."""

    def load(self, source_path: Path, class_name: str) -> Result[TrainingPlan, RoundError]:
        """Instantiate ``class_name`` from the plan source at ``source_path``.

        Failures (all ``plan_load_failed``): unreadable or non-UTF-8 file, syntax error, an
        exception while the module runs, no such class, a constructor that needs arguments or
        raises, or a plan missing protocol methods.
        """
        compiled = compile_plan(Path(source_path))
        if isinstance(compiled, Failure):
            return compiled
        code, _ = compiled.unwrap()
        with _LOCK:
            return self._run(code, Path(source_path), class_name)

    def _run(
        self, code: types.CodeType, source_path: Path, class_name: str
    ) -> Result[TrainingPlan, RoundError]:
        module_name = f"fedpipe_plan_{uuid.uuid4().hex}"
        module = types.ModuleType(module_name)
        module.__file__ = str(source_path)
        with isolated_module(module, Path(source_path).parent):
            try:
                exec(code, module.__dict__)  # noqa: S102 the researcher's plan: approved (or approval off) before this step
            except (Exception, SystemExit) as err:  # foreign code: every exception is expected here
                return Failure(
                    _failed(
                        f"plan source raised while imported: {type(err).__name__}: {err}",
                        f"The training plan source raised {type(err).__name__} when imported.",
                        err,
                    )
                )
            return self._instantiate(module, class_name)

    @staticmethod
    def _instantiate(module: types.ModuleType, class_name: str) -> Result[TrainingPlan, RoundError]:
        cls: Any = module.__dict__.get(class_name)
        if not isinstance(cls, type):
            what = "not found" if cls is None else "not a class"
            return Failure(
                _failed(
                    f"training_plan_class {class_name!r} is {what} in the plan source",
                    f"The training plan class `{class_name}` is {what} in the plan source.",
                )
            )
        try:
            plan = cls()
        except (Exception, SystemExit) as err:
            return Failure(
                _failed(
                    f"{class_name}() raised {type(err).__name__}: {err}",
                    f"The training plan class `{class_name}` could not be instantiated without arguments "
                    f"({type(err).__name__}).",
                    err,
                )
            )
        try:
            missing = [m for m in PLAN_METHODS if not callable(getattr(plan, m, None))]
        except Exception as err:  # a plan's own __getattr__ or property raised
            return Failure(
                _failed(
                    f"{class_name}: inspecting the plan raised {type(err).__name__}: {err}",
                    f"The training plan class `{class_name}` could not be inspected.",
                    err,
                )
            )
        if missing:
            names = ", ".join(missing)
            return Failure(
                _failed(
                    f"{class_name} lacks training-plan methods: {names}",
                    f"The training plan class `{class_name}` lacks required methods: {names}.",
                )
            )
        typed: TrainingPlan = plan
        return Success(typed)
