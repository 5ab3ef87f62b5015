"""Regenerate the Fed-BioMed fixtures of this folder from the real package (run it once, by hand).

    .fbm-env/bin/python tests/fedbiomed/plans/make_fixtures.py

It writes, for each plan module here, ``<plan>.sent.py``: the exact training-plan text a 6.4.1
researcher puts in its TrainRequest (``TorchTrainingPlan.source()``: the import lines, then the
class source). Then it drives the sent plans as the stock 6.4.1 node does (``node/round.py``:
exec the source, ``post_init``, parameters, ``training_data()`` -> ``DataManager.load`` ->
``load_dataset`` -> ``split``, validation, ``training_routine``, validation, parameters after
training, test indices kept between rounds) on a shard of the shipped CSV, and writes what it
saw into ``stock_runs.json``: the initial parameters, each round's parameters after training, the
test indices and every scalar the plan reported. ``tests/fedbiomed/test_compat_parity.py``
replays the same runs through fedpipe's compatibility layer and compares.
"""

import csv
import importlib.util
import json
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fedbiomed.common.training_args import TrainingArgs
from fedbiomed.common.utils import import_class_object_from_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
CSV = ROOT / "fedpipe" / "data" / "breast_cancer.csv"
SHARD_ROWS = 284  # the first half of the shipped data: 228 training and 56 test samples at 0.2

DEFAULTS: dict[str, Any] = {
    "loader_args": {"batch_size": 16},
    "optimizer_args": {"lr": 0.01},
    "epochs": 2,
    "test_ratio": 0.2,
    "test_on_global_updates": True,
    "test_on_local_updates": True,
    "random_seed": 0,
    "log_interval": 5,
    "num_updates": None,
    "dry_run": False,
    "batch_maxnum": None,
    "test_batch_size": 0,
    "shuffle_testing_dataset": False,
    "test_metric": None,
    "test_metric_args": {},
    "fedprox_mu": None,
    "use_gpu": False,
    "dp_args": None,
    "share_persistent_buffers": True,
}

RUNS: dict[str, dict[str, Any]] = {
    # the protocol document's experiment: Adam over optimizer_args, 2 epochs, test split kept
    "defaults": {"plan": "breast_cancer_plan", "rounds": 3, "args": {}},
    # num_updates (batch_maxnum ignored), FedProx, a fresh test split every round, test batches of 10
    "updates_fedprox": {
        "plan": "breast_cancer_plan",
        "rounds": 2,
        "args": {
            "loader_args": {"batch_size": 12},
            "epochs": None,
            "num_updates": 23,
            "batch_maxnum": 4,
            "fedprox_mu": 0.1,
            "test_ratio": 0.25,
            "test_batch_size": 10,
            "log_interval": 3,
            "shuffle_testing_dataset": True,
            "random_seed": 5,
        },
    },
    # columns by index, the plan's SGD, no shuffling (ordered split), the default metric per test batch
    "sgd_metric": {
        "plan": "sgd_plan",
        "rounds": 2,
        "args": {
            "loader_args": {"batch_size": 20},
            "optimizer_args": {"lr": 0.05},
            "epochs": 1,
            "batch_maxnum": 5,
            "test_ratio": 0.3,
            "test_batch_size": 20,
            "log_interval": 2,
            "test_metric": "F1_SCORE",
            "random_seed": 11,
        },
    },
}


def _plan_class(module_name: str) -> type:
    spec = importlib.util.spec_from_file_location(module_name, HERE / f"{module_name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # inspect.getsource looks the module up by name
    spec.loader.exec_module(module)
    return next(v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module_name)


def sent_source(module_name: str) -> str:
    """The training-plan text the 6.4.1 researcher sends for the plan class of ``module_name``."""
    return _plan_class(module_name)().source()


class Monitor:
    """Records what the plan reports, as the node's HistoryMonitor receives it."""

    def __init__(self) -> None:
        self.scalars: list[dict[str, Any]] = []

    def add_scalar(self, **kwargs: Any) -> None:
        self.scalars.append(kwargs)


def _tensors(params: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {k: {"shape": list(v.shape), "values": v.detach().reshape(-1).tolist()} for k, v in params.items()}


def _model_args() -> dict[str, Any]:
    with CSV.open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    values = np.array(rows[1:], dtype=np.float64)[:, :30]
    return {
        "in_features": 30,
        "hidden": 16,
        "feature_mean": values.mean(axis=0).tolist(),
        "feature_std": values.std(axis=0).tolist(),
    }


def stock_run(source: str, class_name: str, shard: Path, args: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Train ``rounds`` rounds of one node as the stock node does; the global model is the node's own."""
    model_args = _model_args()
    ta = {**DEFAULTS, **args}
    work = Path(tempfile.mkdtemp())

    def load() -> Any:
        # the node writes the source to a fresh model_<uuid>.py and imports it from there
        path = work / f"model_{uuid.uuid4().hex}.py"
        path.write_text(source, encoding="utf-8")
        return import_class_object_from_file(str(path), class_name)[1]

    # the researcher's initial model: its own instance (post_init seeds torch with random_seed)
    researcher = load()
    researcher.post_init(
        model_args, TrainingArgs(dict(ta), only_required=False), {}, initialize_optimizer=False
    )
    params = researcher.get_model_params(exclude_buffers=False)
    out: dict[str, Any] = {
        "class_name": class_name,
        "model_args": model_args,
        "training_args": ta,
        "initial": _tensors(params),
        "rounds": [],
    }
    testing_indexes: dict[str, Any] = {"testing_index": [], "training_index": [], "test_ratio": None}
    for round_ in range(rounds):
        plan = load()
        training_args = TrainingArgs(dict(ta), only_required=False)
        plan.post_init(model_args, training_args, {}, node_id="NODE_stock", round=round_)
        initial = plan.get_model_params(only_trainable=False, exclude_buffers=False, local_params=None)
        plan.set_model_params({**initial, **params}, local_params=None)
        testing = training_args.testing_arguments()
        manager = plan.training_data()
        manager.extend_loader_args(training_args.loader_arguments())
        manager.load(tp_type=plan.type())
        manager.load_dataset(root=str(shard))
        manager.load_state(testing_indexes)
        train_loader, test_loader = manager.split(
            test_ratio=testing["test_ratio"],
            test_batch_size=testing["test_batch_size"],
            is_shuffled_testing_dataset=testing["shuffle_testing_dataset"],
        )
        plan.set_data_loaders(train_data_loader=train_loader, test_data_loader=test_loader)
        indexes = manager.save_state()
        monitor = Monitor()
        metric = testing["test_metric"]
        from fedbiomed.common.metrics import MetricTypes

        metric_type = (
            MetricTypes.get_metric_type_by_name(metric.upper()) if isinstance(metric, str) else metric
        )
        if testing["test_on_global_updates"] and test_loader is not None:
            plan.testing_routine(metric_type, testing["test_metric_args"], monitor, True)
        seen = plan.training_routine(
            history_monitor=monitor, node_args={"gpu": False, "gpu_num": None, "gpu_only": False}
        )
        if testing["test_on_local_updates"] and test_loader is not None:
            plan.testing_routine(metric_type, testing["test_metric_args"], monitor, False)
        params = plan.after_training_params(flatten=False)
        out["rounds"].append(
            {
                "params": _tensors(params),
                "sample_size": len(train_loader.dataset),
                "samples_seen": seen,
                "training_index": list(indexes["training_index"]),
                "testing_index": list(indexes["testing_index"]),
                "scalars": monitor.scalars,
                "optimizer_args": plan.optimizer_args(),
            }
        )
        if not testing["shuffle_testing_dataset"] and testing["test_ratio"]:
            testing_indexes = {**indexes, "test_ratio": testing["test_ratio"]}
    return out


def main() -> None:
    lines = CSV.read_text(encoding="utf-8").splitlines(keepends=True)
    shard = Path(tempfile.mkdtemp()) / "shard.csv"
    shard.write_text("".join(lines[: SHARD_ROWS + 1]), encoding="utf-8")
    sources = {}
    for name in ("breast_cancer_plan", "sgd_plan"):
        sources[name] = sent_source(name)
        (HERE / f"{name}.sent.py").write_text(sources[name], encoding="utf-8")
    runs = {}
    for key, run in RUNS.items():
        source = sources[run["plan"]]
        class_name = "BreastCancerPlan" if run["plan"] == "breast_cancer_plan" else "SgdPlan"
        runs[key] = {
            "plan": f"{run['plan']}.sent.py",
            "shard_rows": SHARD_ROWS,
            **stock_run(source, class_name, shard, run["args"], run["rounds"]),
        }
    (HERE / "stock_runs.json").write_text(json.dumps(runs, indent=1) + "\n", encoding="utf-8")
    print(f"torch {torch.__version__}; wrote {', '.join(sorted(sources))} and stock_runs.json")


if __name__ == "__main__":
    main()
