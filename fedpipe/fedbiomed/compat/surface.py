"""The ``fedbiomed`` (and, when it is not installed, ``torchvision``) modules a Fed-BioMed plan imports.

They are plain module objects built afresh for each plan and handed to the plan's code by the
``__import__`` of its own ``__builtins__`` (``scoped_import``): nothing is registered in
``sys.modules``, so a real ``fedbiomed`` installed beside fedpipe is never shadowed, and every
other import of the plan goes to the real import system. Names outside the surface raise
``UnsupportedFeature`` (an ``ImportError`` naming the feature) when imported or looked up.
"""

import ast
import builtins
import importlib.util
import logging
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from fedpipe.fedbiomed.compat import constants, data, datasets, errors, plan
from fedpipe.fedbiomed.compat.errors import UnsupportedFeature

__all__ = [
    "SUPPORTED",
    "UNSUPPORTED",
    "PlanLogger",
    "ScopedImport",
    "check_surface_uses",
    "torchvision_installed",
]

log = logging.getLogger("fedpipe.fedbiomed.compat")


class PlanLogger:
    """``fedbiomed.common.logger.logger``: the node log (6.4.1's ``broadcast`` and ``researcher_id`` are accepted, not forwarded)."""

    def __init__(self) -> None:
        self._log = logging.getLogger("fedpipe.fedbiomed.plan")

    def _emit(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("broadcast", None)
        kwargs.pop("researcher_id", None)
        self._log.log(level, msg, *args, **kwargs)

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Log at DEBUG level."""
        self._emit(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Log at INFO level."""
        self._emit(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Log at WARNING level."""
        self._emit(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Log at ERROR level."""
        self._emit(logging.ERROR, msg, *args, **kwargs)

    def critical(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Log at CRITICAL level."""
        self._emit(logging.CRITICAL, msg, *args, **kwargs)


def _exceptions() -> dict[str, object]:
    names = (
        "FedbiomedError",
        "FedbiomedTrainingPlanError",
        "FedbiomedDatasetError",
        "FedbiomedDataManagerError",
        "FedbiomedValueError",
        "FedbiomedUserInputError",
    )
    return {name: getattr(errors, name) for name in names}


SUPPORTED: Mapping[str, Mapping[str, object]] = {
    "fedbiomed": {},
    "fedbiomed.common": {},
    "fedbiomed.common.training_plans": {"TorchTrainingPlan": plan.TorchTrainingPlan},
    "fedbiomed.common.datamanager": {"DataManager": data.DataManager},
    "fedbiomed.common.dataset": {
        "Dataset": datasets.Dataset,
        "TabularDataset": datasets.TabularDataset,
        "CustomDataset": datasets.CustomDataset,
    },
    "fedbiomed.common.dataset_types": {"DataReturnFormat": datasets.DataReturnFormat},
    "fedbiomed.common.dataloader": {
        "PytorchDataLoader": data.PytorchDataLoader,
        "DataLoader": data.PytorchDataLoader,
    },
    "fedbiomed.common.constants": {
        "ProcessTypes": constants.ProcessTypes,
        "TrainingPlans": constants.TrainingPlans,
        "DatasetTypes": constants.DatasetTypes,
        "ErrorNumbers": constants.ErrorNumbers,
    },
    "fedbiomed.common.metrics": {"MetricTypes": constants.MetricTypes},
    "fedbiomed.common.exceptions": _exceptions(),
    "fedbiomed.common.logger": {"logger": None},  # a fresh PlanLogger per plan
}
"""Module -> the names it offers to plans (sub-modules are reachable as attributes too)."""

_SKLEARN = "scikit-learn training plans (`{name}`)"
_IMAGES = "image datasets (`{name}`)"

UNSUPPORTED: Mapping[str, str] = {
    "fedbiomed.common.optimizers": "`fedbiomed.common.optimizers.Optimizer` (declearn optimizers)",
    "fedbiomed.common.training_plans.SKLearnTrainingPlan": _SKLEARN,
    "fedbiomed.common.training_plans.FedPerceptron": _SKLEARN,
    "fedbiomed.common.training_plans.FedSGDRegressor": _SKLEARN,
    "fedbiomed.common.training_plans.FedSGDClassifier": _SKLEARN,
    "fedbiomed.common.training_plans.BaseTrainingPlan": "`BaseTrainingPlan` (subclass `TorchTrainingPlan`)",
    "fedbiomed.common.datamanager.SkLearnDataManager": "scikit-learn data managers (`SkLearnDataManager`)",
    "fedbiomed.common.datamanager.TorchDataManager": "`TorchDataManager` (use `DataManager`)",
    "fedbiomed.common.dataloader.SkLearnDataLoader": "scikit-learn data loaders (`SkLearnDataLoader`)",
    "fedbiomed.common.dataset.MedicalFolderDataset": "`MedicalFolderDataset`",
    "fedbiomed.common.dataset.ImageFolderDataset": _IMAGES,
    "fedbiomed.common.dataset.MnistDataset": _IMAGES,
    "fedbiomed.common.dataset.MedNistDataset": _IMAGES,
    "fedbiomed.common.dataloadingplan": "data loading plans (`fedbiomed.common.dataloadingplan`)",
    "fedbiomed.common.privacy": "`fedbiomed.common.privacy` (differential privacy is set by `dp_args`)",
    "fedbiomed.common.models": "`fedbiomed.common.models` model wrappers",
    "fedbiomed.common.secagg": "`fedbiomed.common.secagg`",
    "fedbiomed.researcher": "researcher-side modules (`fedbiomed.researcher`)",
    "fedbiomed.node": "node-side modules (`fedbiomed.node`)",
}
"""What a plan may name but this node does not provide, with the words the refusal uses."""

_TORCHVISION_PARTS = ("datasets", "transforms", "models", "io", "ops", "utils")


def _unsupported(qualified: str, *, torchvision: bool = False) -> UnsupportedFeature:
    if torchvision:
        return UnsupportedFeature(f"`{qualified}` (torchvision is not installed on this node)")
    for prefix, words in sorted(UNSUPPORTED.items(), key=lambda kv: -len(kv[0])):
        if qualified == prefix or qualified.startswith(prefix + "."):
            return UnsupportedFeature(words.format(name=prefix.rsplit(".", 1)[-1]))
    return UnsupportedFeature(f"`{qualified}`")


def _module(name: str, attributes: Mapping[str, object], *, torchvision: bool = False) -> types.ModuleType:
    module = types.ModuleType(
        name, f"Fed-BioMed 6.4.1's `{name}`, as this node provides it to training plans."
    )
    module.__dict__.update(attributes)
    module.__all__ = sorted(attributes)  # type: ignore[attr-defined]

    def __getattr__(attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        raise _unsupported(f"{name}.{attr}", torchvision=torchvision)

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


def _tree(
    modules: Mapping[str, Mapping[str, object]], *, torchvision: bool = False
) -> dict[str, types.ModuleType]:
    tree = {name: _module(name, attrs, torchvision=torchvision) for name, attrs in modules.items()}
    for name, module in tree.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(tree[parent], child, module)
    return tree


def fedbiomed_tree() -> dict[str, types.ModuleType]:
    """Fresh ``fedbiomed`` modules for one plan (so that one plan's changes to them never reach another)."""
    modules = {name: dict(attrs) for name, attrs in SUPPORTED.items()}
    modules["fedbiomed.common.logger"]["logger"] = PlanLogger()
    return _tree(modules)


def torchvision_tree() -> dict[str, types.ModuleType]:
    """Stand-ins for ``torchvision`` and its usual sub-modules: importable, any use refused."""
    modules: dict[str, dict[str, object]] = {"torchvision": {}}
    modules.update({f"torchvision.{part}": {} for part in _TORCHVISION_PARTS})
    return _tree(modules, torchvision=True)


def torchvision_installed() -> bool:
    """Whether a real ``torchvision`` can be imported here (found without importing it)."""
    if "torchvision" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("torchvision") is not None
    except (ImportError, ValueError):
        return False


def _under(name: str, root: str) -> bool:
    return name == root or name.startswith(root + ".")


class ScopedImport:
    """The ``__import__`` of one plan's builtins: ``fedbiomed`` (and a missing ``torchvision``) from the surface.

    A real ``torchvision`` that fails to import (a broken install) is replaced by the stand-ins,
    with a warning in the node log, so that the line every plan starts with still imports.
    """

    def __init__(self, *, real: Callable[..., Any] = builtins.__import__) -> None:
        self._real = real
        self.fedbiomed = fedbiomed_tree()
        self.torchvision: dict[str, types.ModuleType] | None = (
            None if torchvision_installed() else torchvision_tree()
        )

    def __call__(
        self,
        name: str,
        globals: Mapping[str, Any] | None = None,  # builtins.__import__'s parameter names
        locals: Mapping[str, Any] | None = None,
        fromlist: Any = (),
        level: int = 0,
    ) -> types.ModuleType:
        if level == 0 and _under(name, "fedbiomed"):
            return self._resolve(self.fedbiomed, "fedbiomed", name, fromlist)
        if level == 0 and _under(name, "torchvision"):
            if self.torchvision is None:
                try:
                    module: types.ModuleType = self._real(name, globals, locals, fromlist, level)
                    return module
                except Exception as err:  # a broken third-party install: any error it raises
                    log.warning(
                        "torchvision is installed but cannot be imported (%s): plans get stand-ins", err
                    )
                    self.torchvision = torchvision_tree()
            return self._resolve(self.torchvision, "torchvision", name, fromlist)
        found: types.ModuleType = self._real(name, globals, locals, fromlist, level)
        return found

    @staticmethod
    def _resolve(
        tree: Mapping[str, types.ModuleType], root: str, name: str, fromlist: Any
    ) -> types.ModuleType:
        module = tree.get(name)
        if module is None:
            raise _unsupported(name, torchvision=root == "torchvision")
        return module if fromlist else tree[root]

    def serves(self, name: str) -> bool:
        """Whether this import answers for ``name`` from the surface (not the real import system)."""
        return _under(name, "fedbiomed") or (self.torchvision is not None and _under(name, "torchvision"))

    def surface_modules(self) -> Iterator[types.ModuleType]:
        """Every module object this import hands out (to recognise them among a plan's globals)."""
        yield from self.fedbiomed.values()
        if self.torchvision is not None:
            yield from self.torchvision.values()


def _locally_bound(tree: ast.AST) -> set[str]:
    """Names bound anywhere inside functions, lambdas and comprehensions (they may shadow a module)."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            for inner in ast.walk(node):
                if isinstance(inner, ast.arg):
                    bound.add(inner.arg)
                elif isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store | ast.Del):
                    bound.add(inner.id)
                elif isinstance(inner, ast.alias):
                    bound.add((inner.asname or inner.name).split(".")[0])
        elif isinstance(node, ast.comprehension):
            for inner in ast.walk(node.target):
                if isinstance(inner, ast.Name):
                    bound.add(inner.id)
    return bound


def _chain(node: ast.Attribute) -> tuple[str, list[str]] | None:
    parts: list[str] = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute):
        parts.append(current.attr)
        current = current.value
    if not isinstance(current, ast.Name):
        return None
    return current.id, parts[::-1]


def _check_imports(tree: ast.AST, importer: ScopedImport) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if importer.serves(alias.name):
                    importer(alias.name)
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and importer.serves(node.module)
        ):
            module = importer(node.module, fromlist=tuple(a.name for a in node.names))
            for alias in node.names:
                if alias.name != "*":
                    getattr(module, alias.name)


def check_surface_uses(tree: ast.AST, namespace: Mapping[str, Any], importer: ScopedImport) -> None:
    """Raise ``UnsupportedFeature`` at load time for what the surface would refuse later, at run time.

    Two kinds of uses are checked: import statements anywhere in the source (also inside
    methods, which run only during the round) of names the surface serves, and ``module.Name``
    uses of module-level names bound to surface modules (``transforms.ToTensor`` after ``from
    torchvision import transforms``) when the name is never rebound inside a function, so that a
    parameter or local sharing the name is left alone.
    """
    _check_imports(tree, importer)
    surface = {id(m) for m in importer.surface_modules()}
    roots = {name for name, value in namespace.items() if id(value) in surface}
    if not roots:
        return
    shadowed = _locally_bound(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        found = _chain(node)
        if found is None or found[0] not in roots or found[0] in shadowed:
            continue
        value: Any = namespace[found[0]]
        for attr in found[1]:
            if not isinstance(value, types.ModuleType) or id(value) not in surface:
                break
            value = getattr(value, attr)  # raises UnsupportedFeature for what the surface lacks
