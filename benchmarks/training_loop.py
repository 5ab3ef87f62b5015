"""Throughput of TorchTrainingPlan.training_routine against a bare hand-written torch loop.

Same model, same data, same batches (one DataLoader recipe, same shuffling seed), same initial
weights; the two are run interleaved (alternating which goes first) and compared. Time is the
process's CPU time with one torch thread, which a shared, loaded machine disturbs far less than
wall time. Prints the ratio
plan-throughput / bare-throughput (target >= 0.95).

    python benchmarks/training_loop.py [--repeats 9] [--epochs 3] [--batch-size 32] [--tile 4]
"""

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fedpipe.args import TrainingArgs
from fedpipe.plan import DatasetRecord, DataSplit, Scalars
from fedpipe.settings import GpuPolicy
from fedpipe.training import DataManager, TabularDataset, TorchTrainingPlan, load_breast_cancer
from fedpipe.training.datasets import standardize


def make_data(tile: int) -> TabularDataset:
    data = load_breast_cancer()
    x = np.tile(standardize(data.features), (tile, 1))
    y = np.tile(data.labels, tile)
    return TabularDataset(x, y)


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(30, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 1),
    )


class BenchPlan(TorchTrainingPlan):
    dataset: TabularDataset
    start: dict[str, torch.Tensor]

    def init_model(self) -> torch.nn.Module:
        model = make_model()
        model.load_state_dict(self.start)
        return model

    def init_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model().parameters(), lr=0.01)

    def training_data(self) -> DataManager:
        return DataManager(self.dataset)

    def training_step(self, data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(self.model()(data).squeeze(-1), target)


def loader_for(dataset: TabularDataset, batch_size: int, seed: int) -> Any:
    manager = DataManager(dataset)
    train, _ = manager.loaders(
        list(range(len(dataset))), [], {"batch_size": batch_size, "shuffle": True}, seed=seed
    )
    return train


def bare(
    dataset: TabularDataset, start: dict[str, torch.Tensor], epochs: int, batch_size: int
) -> tuple[float, int]:
    model = make_model()
    model.load_state_dict(start)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = loader_for(dataset, batch_size, seed=1)
    begin = time.process_time()
    seen = 0
    model.train()
    for _ in range(epochs):
        for data, target in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(data).squeeze(-1), target)
            loss.backward()
            optimizer.step()
            seen += len(data)
    return time.process_time() - begin, seen


def with_plan(
    dataset: TabularDataset, start: dict[str, torch.Tensor], epochs: int, batch_size: int
) -> tuple[float, int]:
    BenchPlan.dataset, BenchPlan.start = dataset, copy.deepcopy(start)
    plan = BenchPlan()
    args = TrainingArgs(epochs=epochs, loader_args={"batch_size": batch_size, "shuffle": True}, random_seed=1)
    plan.post_init(model_args={}, training_args=args, aggregator_args={})
    n = plan.load_data(DatasetRecord(dataset_id="bench"))
    plan.set_split(DataSplit(train_indices=tuple(range(n)), test_indices=()))
    reports: list[Scalars] = []
    begin = time.process_time()
    seen = plan.training_routine(report=reports.append, gpu=GpuPolicy())
    return time.process_time() - begin, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tile", type=int, default=4, help="copies of the 569 rows (more rows per epoch)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: least noise)")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    dataset = make_data(opts.tile)
    start = {k: v.clone() for k, v in make_model().state_dict().items()}
    bare(dataset, start, 1, opts.batch_size)  # warm-up both paths
    with_plan(dataset, start, 1, opts.batch_size)
    bare_rates, plan_rates = [], []
    for i in range(opts.repeats):
        # alternate which path goes first, so that neither always runs on warmer caches
        for path in (bare, with_plan) if i % 2 == 0 else (with_plan, bare):
            t, n = path(dataset, start, opts.epochs, opts.batch_size)
            (bare_rates if path is bare else plan_rates).append(n / t)
    b, p = statistics.median(bare_rates), statistics.median(plan_rates)
    b_best, p_best = max(bare_rates), max(plan_rates)
    pair = statistics.median(q / r for q, r in zip(plan_rates, bare_rates, strict=True))
    print(
        f"rows per epoch {len(dataset)}, batch size {opts.batch_size}, epochs {opts.epochs}, repeats {opts.repeats}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"bare torch loop      : {b:10.0f} samples/s median, {b_best:10.0f} best")
    print(f"training_routine     : {p:10.0f} samples/s median, {p_best:10.0f} best")
    print(
        f"ratio plan / bare    : {p / b:.3f} (medians), {p_best / b_best:.3f} (best runs), "
        f"{pair:.3f} (median of paired runs); target >= 0.95"
    )


if __name__ == "__main__":
    main()
