"""The same training on CUDA: the researcher's use_gpu with a GPU-enabled node, and the gpu_only policy."""

import pytest
import torch

from fedpipe.settings import GpuPolicy
from tests.training.support import initial_params, make_node, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ARGS = {
    "epochs": 2,
    "loader_args": {"batch_size": 32},
    "optimizer_args": {"lr": 0.01},
    "test_ratio": 0.25,
    "test_on_global_updates": True,
    "test_on_local_updates": True,
    "random_seed": 7,
}


@pytest.mark.parametrize(
    ("policy", "use_gpu"),
    [(GpuPolicy(gpu=True), True), (GpuPolicy(gpu_only=True), False)],
    ids=["use_gpu", "gpu_only"],
)
def test_training_runs_on_cuda(tmp_path, policy, use_gpu):
    node = make_node(tmp_path, gpu=policy)
    reply, payload = train(node, initial_params(), {**ARGS, "use_gpu": use_gpu})
    assert reply.success, reply.msg
    plan = node.plans.instances[-1]
    assert plan.device.type == "cuda"
    assert all(v.device.type == "cpu" for v in payload["model_weights"].values())
    assert payload["metadata"]["validation_after"]["ACCURACY"] > 0.9
    # the Adam state went back to the CPU with the model, ready to be saved
    assert all(
        t.device.type == "cpu"
        for s in plan.optimizer().state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
