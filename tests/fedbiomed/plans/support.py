"""Shared pieces of the compat tests: the fixture plans, CSV shards, training args as fedpipe takes them."""

import json
from pathlib import Path
from typing import Any

import torch
from fedpipe.args import TrainingArgs, parse_training_args_mapping

PLANS = Path(__file__).resolve().parent
CSV = Path(__file__).resolve().parents[3] / "fedpipe" / "data" / "breast_cancer.csv"
SENT = PLANS / "breast_cancer_plan.sent.py"
SGD_SENT = PLANS / "sgd_plan.sent.py"
STOCK_RUNS: dict[str, Any] = json.loads((PLANS / "stock_runs.json").read_text(encoding="utf-8"))

# the 6.4.1 TrainRequest's training_args for the protocol document's experiment
FBM_ARGS: dict[str, Any] = {
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


def fedpipe_args(fbm_args: dict[str, Any]) -> TrainingArgs:
    """6.4.1 training args, parsed by fedpipe's schema (``test_batch_size`` 0 when absent, as 6.4.1)."""
    raw = dict(fbm_args)
    raw.setdefault("test_batch_size", 0)
    return parse_training_args_mapping(raw).unwrap()


def shard(directory: Path, rows: int = 284, *, start: int = 0) -> Path:
    """A CSV file with the header and ``rows`` lines of the shipped data from ``start`` (verbatim text)."""
    lines = CSV.read_text(encoding="utf-8").splitlines(keepends=True)
    path = directory / f"shard-{start}-{rows}.csv"
    path.write_text("".join([lines[0], *lines[1 + start : 1 + start + rows]]), encoding="utf-8")
    return path


def tensors(stored: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Parameters stored as ``{name: {shape, values}}`` in ``stock_runs.json``."""
    return {
        name: torch.tensor(v["values"], dtype=torch.float32).reshape(v["shape"]) for name, v in stored.items()
    }


def model_args() -> dict[str, Any]:
    """The researcher's model_args of the stock runs (30 features, 16 hidden, global mean and std)."""
    args: dict[str, Any] = STOCK_RUNS["defaults"]["model_args"]
    return dict(args)
