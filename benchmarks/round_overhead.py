"""Overhead of a full standard round over fakes with a no-op plan, against calling the plan directly.

Run: ``python benchmarks/round_overhead.py [--rounds N]``. Prints the per-round time of
``run_round`` (parse, 22 steps, workspace, codec, fakes, reply), of a hand-written baseline that
calls the same plan methods in the same order with no framework, their difference (the framework's
overhead; target < 1 ms) and their ratio. Runs are interleaved so that both see the same machine.
"""

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedpipe import NodeSettings, run_round
from fedpipe.args import TrainingArgs
from fedpipe.plan import DatasetRecord, DataSplit, MetricSink
from fedpipe.settings import GpuPolicy
from fedpipe.testing import FakeNode


class NoOpPlan:
    """A plan whose every method returns at once."""

    def post_init(
        self,
        *,
        model_args: Mapping[str, Any],
        training_args: TrainingArgs,
        aggregator_args: Mapping[str, Any],
    ) -> None:
        return None

    def load_state(self, state: Mapping[str, Any]) -> list[str]:
        return []

    def set_model_params(self, params: Mapping[str, Any]) -> None:
        return None

    def set_aux_vars(self, aux_vars: Mapping[str, Any]) -> None:
        return None

    def load_data(self, dataset: DatasetRecord) -> int:
        return 8

    def set_split(self, split: DataSplit) -> None:
        return None

    def testing_routine(self, **kwargs: Any) -> Mapping[str, float]:
        return {"ACCURACY": 1.0}

    def training_routine(self, *, report: MetricSink, gpu: GpuPolicy) -> int:
        return 8

    def collect_aux_vars(self) -> Mapping[str, Any]:
        return {}

    def after_training_params(self, *, flatten: bool) -> Any:
        return [0.0] if flatten else {"w": [0.0]}

    def save_state(self) -> Mapping[str, Any]:
        return {}

    def optimizer_args(self) -> Mapping[str, Any]:
        return {}


def baseline(plan: NoOpPlan) -> None:
    """The same plan calls as a round makes, written by hand."""
    plan.post_init(model_args={}, training_args=TrainingArgs(), aggregator_args={})
    plan.set_model_params({"w": [0.0]})
    n = plan.load_data(DatasetRecord(dataset_id="ds"))
    plan.set_split(DataSplit(train_indices=tuple(range(n)), test_indices=()))
    plan.training_routine(report=lambda s: None, gpu=GpuPolicy())
    plan.collect_aux_vars()
    plan.after_training_params(flatten=False)
    plan.optimizer_args()
    plan.save_state()


def workspace_io(root: Path, params: bytes, source: bytes) -> None:
    """The file-system work a round over the fakes cannot avoid: its workspace and three files."""
    workdir = Path(tempfile.mkdtemp(prefix="round_", dir=root))
    (workdir / "training_plan.py").write_bytes(source)
    (workdir / "global_params.mpk").write_bytes(params)
    (workdir / "training_plan.py").read_bytes()
    (workdir / "global_params.mpk").read_bytes()
    (workdir / "node_params.mpk").write_bytes(params)
    (workdir / "node_params.mpk").read_bytes()
    shutil.rmtree(workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument(
        "--root", type=Path, default=None, help="node root (e.g. /dev/shm to leave the disk out)"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fedpipe-bench-", dir=args.root))
    node = FakeNode(settings=NodeSettings(node_id="bench", root=root))
    request = node.request(plan=NoOpPlan)
    ports, settings = node.ports, node.settings
    for _ in range(50):  # warm-up
        assert run_round(request, ports, settings).success
    round_times: list[float] = []
    base_times: list[float] = []
    io_times: list[float] = []
    params = node.exchange.files[request["params_url"]]
    source = node.exchange.files[request["training_plan_url"]]
    plan = NoOpPlan()
    batch = 20
    for _ in range(max(1, args.rounds // batch)):
        t0 = time.perf_counter()
        for _ in range(batch):
            run_round(request, ports, settings)
        t1 = time.perf_counter()
        for _ in range(batch):
            baseline(plan)
        t2 = time.perf_counter()
        for _ in range(batch):
            workspace_io(settings.tmp_dir, params, source)
        t3 = time.perf_counter()
        round_times.append((t1 - t0) / batch)
        base_times.append((t2 - t1) / batch)
        io_times.append((t3 - t2) / batch)
    r, b, io = statistics.median(round_times), statistics.median(base_times), statistics.median(io_times)
    print(
        f"standard round over fakes : {r * 1e3:8.3f} ms/round (median of {len(round_times)} batches of {batch})"
    )
    print(f"hand-written plan calls   : {b * 1e3:8.3f} ms/round")
    print(f"framework overhead        : {(r - b) * 1e3:8.3f} ms/round (target < 1 ms)")
    print(f"ratio round / baseline    : {r / b:8.1f}x")
    print(f"of which workspace I/O    : {io * 1e3:8.3f} ms/round (mkdtemp, 3 files written and read, rmtree)")
    print(f"overhead without that I/O : {(r - b - io) * 1e3:8.3f} ms/round")


if __name__ == "__main__":
    main()
