"""GPU check: the breast-cancer MLP trained through the standard round on CUDA, under two node policies.

Runs the same round (fake ports, shipped data) three times: on the CPU as a reference, with
the researcher's ``use_gpu`` on a node that allows the GPU, and with ``use_gpu`` off on a node
whose policy is ``gpu_only``. Prints device, accuracy before/after, loss and wall time of each,
and exits non-zero when CUDA is missing or any run fails, does not use CUDA, or does not learn.
Takes well under two minutes.

    python scripts/gpu_check.py
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch

from fedpipe.codec import loads
from fedpipe.plan import DatasetRecord
from fedpipe.runner import run_round
from fedpipe.settings import GpuPolicy, NodeSettings
from fedpipe.testing import FakeNode
from fedpipe.training import DataManager, TabularDataset, TorchTrainingPlan, load_breast_cancer

DATA = load_breast_cancer()


class GpuCheckPlan(TorchTrainingPlan):
    """A 30-64-64-1 MLP with BatchNorm (buffers must follow the model to the device and back)."""

    def init_model(self) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(30, 64),
            torch.nn.BatchNorm1d(64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 1),
        )

    def training_data(self) -> DataManager:
        return DataManager(TabularDataset(DATA.features, DATA.labels), shuffle=True)

    def training_step(self, data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if data.device.type != self.device.type:
            raise RuntimeError(f"batch on {data.device}, training device {self.device}")
        return torch.nn.functional.binary_cross_entropy_with_logits(self.model()(data).squeeze(-1), target)

    def predict(self, data: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model()(data))


def run(label: str, policy: GpuPolicy, use_gpu: bool, expect: str) -> bool:
    with tempfile.TemporaryDirectory() as root:
        node = FakeNode(
            settings=NodeSettings(node_id="gpu-check", root=Path(root), secure_aggregation=False, gpu=policy)
        )
        torch.manual_seed(0)
        params = {k: v.clone() for k, v in GpuCheckPlan().init_model().state_dict().items()}
        record = DatasetRecord(
            dataset_id="bc", name="breast cancer", dataset_parameters={"standardize": True}
        )
        args = {
            "epochs": 5,
            "loader_args": {"batch_size": 32},
            "optimizer_args": {"lr": 0.005},
            "test_ratio": 0.25,
            "test_on_global_updates": True,
            "test_on_local_updates": True,
            "use_gpu": use_gpu,
            "random_seed": 3,
        }
        request = node.request(
            plan=GpuCheckPlan, class_name="GpuCheckPlan", params=params, dataset=record, training_args=args
        )
        begin = time.perf_counter()
        reply = run_round(request, node.ports, node.settings)
        seconds = time.perf_counter() - begin
        if not reply.success:
            detail = reply.error.detail if reply.error else ""
            print(f"[FAIL] {label}: round failed: {reply.msg} ({detail})")
            return False
        plan = node.plans.instances[-1]
        payload = loads(node.exchange.uploads[reply.params_url]).unwrap()
        meta = payload["metadata"]
        before, after = meta["validation_before"]["ACCURACY"], meta["validation_after"]["ACCURACY"]
        losses = [e.metric["Loss"] for e in node.monitor.events if e.train]
        device = str(plan.device)
        on_cpu = all(v.device.type == "cpu" for v in payload["model_weights"].values())
        ok = (
            device.startswith(expect)
            and after > before
            and after >= 0.9
            and on_cpu
            and losses[-1] < losses[0]
        )
        print(
            f"[{'ok' if ok else 'FAIL'}] {label}: device={device} accuracy {before:.3f} -> {after:.3f} "
            f"loss {losses[0]:.3f} -> {losses[-1]:.3f} samples={reply.sample_size} {seconds:.2f}s "
            f"(update tensors on cpu: {on_cpu})"
        )
        return ok


def main() -> int:
    print(
        f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, "
        f"devices: {torch.cuda.device_count()}"
    )
    if torch.cuda.is_available():
        print(f"device 0: {torch.cuda.get_device_name(0)}")
    results = [run("cpu reference", GpuPolicy(), use_gpu=False, expect="cpu")]
    if not torch.cuda.is_available():
        print("[FAIL] no CUDA device: the GPU runs cannot be checked")
        return 1
    results.append(run("use_gpu on a GPU node", GpuPolicy(gpu=True, gpu_num=0), use_gpu=True, expect="cuda"))
    results.append(run("gpu_only policy", GpuPolicy(gpu_only=True), use_gpu=False, expect="cuda"))
    print("GPU check passed" if all(results) else "GPU check FAILED")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
