"""FedbiomedPlanLoader: runs the training-plan source a Fed-BioMed 6.4.1 researcher sends, on fedpipe's training layer.

It keeps ``fedpipe.adapters.ModulePlanLoader``'s guarantees: the source is compiled in memory
and run in a fresh module named ``fedpipe_fbm_plan_<uuid>`` (no ``__pycache__``, nothing left
in ``sys.modules`` or ``sys.path`` afterwards: the plan's module and modules loaded from its
directory are removed, entries it replaced are put back), loads are serialised by a lock, and
every failure is a ``plan_load_failed`` RoundError whose public text has no path or traceback.

What differs is the import: the module's own ``__builtins__`` carry a ``ScopedImport``, so the
plan's ``fedbiomed...`` imports (at load time and inside its methods later) get the
compatibility surface and a missing ``torchvision`` gets stand-ins, while ``sys.modules`` never
holds a ``fedbiomed`` of ours. The class must subclass the surface's ``TorchTrainingPlan`` and
may not replace what the node drives itself (``post_init``, ``training_routine`` ... or
``tag_parameters``, whose local/persistent parameters this node does not support); uses of
surface modules the node lacks (``transforms.ToTensor`` without torchvision) are refused here,
when the source is loaded, rather than in the middle of the round.
"""

import ast
import builtins
import threading
import types
import uuid
from pathlib import Path
from typing import Any

from returns.result import Failure, Result, Success

from fedpipe.adapters.plan_loader import compile_plan, isolated_module
from fedpipe.errors import ErrorCode, RoundError, printable
from fedpipe.fedbiomed.compat.errors import FedbiomedError, UnsupportedFeature
from fedpipe.fedbiomed.compat.plan import TorchTrainingPlan
from fedpipe.fedbiomed.compat.surface import ScopedImport, check_surface_uses
from fedpipe.plan import TrainingPlan
from fedpipe.training import TorchTrainingPlan as FedpipeTorchPlan

__all__ = ["USER_HOOKS", "FedbiomedPlanLoader"]

USER_HOOKS: frozenset[str] = frozenset(
    {
        "__init__",
        "init_model",
        "init_optimizer",
        "init_dependencies",
        "training_data",
        "training_step",
        "testing_step",
        "postprocess",
        "predict",
    }
)
"""What a plan class may define among the names its base classes define (every other one is the node's)."""

_LOCK = threading.Lock()


def _failed(detail: str, public: str, cause: BaseException | None = None) -> RoundError:
    return RoundError(code=ErrorCode.PLAN_LOAD_FAILED, step="", detail=detail, public=public, cause=cause)


def _raised_public(err: BaseException) -> str:
    if isinstance(err, UnsupportedFeature):
        return str(err)
    if isinstance(err, ModuleNotFoundError) and isinstance(err.name, str):
        return f"The training plan source imports `{printable(err.name, 80)}`, which is not installed on this node."
    if isinstance(err, FedbiomedError):  # the surface's own messages name no path
        return (
            f"The training plan source raised {type(err).__name__} when imported: {printable(str(err), 200)}"
        )
    return f"The training plan source raised {type(err).__name__} when imported."


def _node_names() -> frozenset[str]:
    names: set[str] = set()
    for base in (TorchTrainingPlan, FedpipeTorchPlan):
        names.update(vars(base))
    return frozenset(n for n in names if not (n.startswith("__") and n.endswith("__")) or n == "__init__")


_NODE_NAMES = _node_names()


class FedbiomedPlanLoader:
    """The PlanLoader of a Fed-BioMed federation: 6.4.1 plan sources on the compatibility surface."""

    def load(self, source_path: Path, class_name: str) -> Result[TrainingPlan, RoundError]:
        """Instantiate ``class_name`` from the Fed-BioMed plan source at ``source_path``.

        Failures (all ``plan_load_failed``, with a public text naming what is wrong): unreadable
        or non-UTF-8 file, syntax error, an import outside the surface (``UnsupportedFeature``:
        "This node does not support ... in training plans."), any other exception while the
        module runs, no such class, a class that is not a surface ``TorchTrainingPlan`` or that
        overrides what the node drives, a constructor that needs arguments or raises.
        """
        compiled = compile_plan(Path(source_path))
        if isinstance(compiled, Failure):
            return compiled
        code, tree = compiled.unwrap()
        with _LOCK:
            return self._run(code, tree, Path(source_path), class_name)

    def _run(
        self, code: types.CodeType, tree: ast.AST, source_path: Path, class_name: str
    ) -> Result[TrainingPlan, RoundError]:
        module_name = f"fedpipe_fbm_plan_{uuid.uuid4().hex}"
        module = types.ModuleType(module_name)
        module.__file__ = str(source_path)
        importer = ScopedImport()
        scoped = dict(vars(builtins))
        scoped["__import__"] = importer
        module.__dict__["__builtins__"] = scoped  # the plan's functions keep these builtins when called later
        with isolated_module(module, Path(source_path).parent):
            try:
                exec(code, module.__dict__)  # noqa: S102 the researcher's plan: approved (or approval off) before this step
                check_surface_uses(tree, module.__dict__, importer)
            except (Exception, SystemExit) as err:  # foreign code: every exception is expected here
                return Failure(
                    _failed(
                        f"plan source raised while imported: {type(err).__name__}: {err}",
                        _raised_public(err),
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
                    f"The training plan class `{printable(class_name)}` is {what} in the plan source.",
                )
            )
        if not issubclass(cls, TorchTrainingPlan):
            return Failure(
                _failed(
                    f"{class_name} does not subclass fedbiomed.common.training_plans.TorchTrainingPlan",
                    f"The training plan class `{printable(class_name)}` is not a "
                    "`fedbiomed.common.training_plans.TorchTrainingPlan` subclass, the only kind this node runs.",
                )
            )
        problem = _override_problem(cls)
        if problem is not None:
            return Failure(_failed(f"{class_name}: {problem}", problem))
        try:
            plan = cls()
        except (Exception, SystemExit) as err:
            return Failure(
                _failed(
                    f"{class_name}() raised {type(err).__name__}: {err}",
                    f"The training plan class `{printable(class_name)}` could not be instantiated without "
                    f"arguments ({type(err).__name__}).",
                    err,
                )
            )
        typed: TrainingPlan = plan
        return Success(typed)


def _override_problem(cls: type) -> str | None:
    """Why the node cannot drive ``cls`` (a method it provides itself is replaced), or None."""
    for klass in cls.__mro__:
        if klass is TorchTrainingPlan:
            break
        for name in vars(klass):
            if name == "tag_parameters":
                return str(
                    UnsupportedFeature("parameter tags (`tag_parameters`: local or persistent parameters)")
                )
            if name in _NODE_NAMES and name not in USER_HOOKS:
                return (
                    f"The training plan class `{printable(cls.__name__)}` overrides `{printable(name)}`, "
                    "which this node provides itself."
                )
    return None
