"""Shared pieces of the training-layer tests: an MLP plan on the shipped breast-cancer data, round helpers."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedpipe.codec import loads
from fedpipe.plan import DatasetRecord
from fedpipe.reply import TrainReply
from fedpipe.runner import run_round
from fedpipe.settings import GpuPolicy, NodeSettings
from fedpipe.testing import FakeNode, InMemoryStateStore
from fedpipe.training import DataManager, TabularDataset, TorchTrainingPlan, load_breast_cancer

DATA = load_breast_cancer()
# dataset_id -> sample indices of that node's shard (filled by tests that simulate several nodes)
SHARDS: dict[str, list[int]] = {}
PLAN_SOURCE = "class MlpPlan(TorchTrainingPlan):\n    '''The breast-cancer MLP of the training tests.'''\n"


class MlpPlan(TorchTrainingPlan):
    """A 30-16-1 MLP trained with BCE on (a shard of) the Wisconsin breast-cancer data."""

    def init_model(self, model_args: dict[str, Any]) -> torch.nn.Module:
        hidden = int(model_args.get("hidden", 16))
        return torch.nn.Sequential(torch.nn.Linear(30, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def training_data(self, record: DatasetRecord) -> DataManager:
        rows = SHARDS.get(record.dataset_id, list(range(len(DATA))))
        return DataManager(TabularDataset(DATA.features[rows], DATA.labels[rows]), shuffle=True)

    def training_step(self, data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = self.model()(data).squeeze(-1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)

    def predict(self, data: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model()(data))


def record(dataset_id: str = "bc", *, standardize: bool = True) -> DatasetRecord:
    """A dataset record for the shipped data (standardized by the node owner's dataset parameters)."""
    params = {"standardize": True} if standardize else {}
    return DatasetRecord(
        dataset_id=dataset_id,
        name="breast cancer",
        path="fedpipe:data/breast_cancer.csv",
        dataset_parameters=params,
    )


def initial_params(
    seed: int = 0, plan: type[TorchTrainingPlan] = MlpPlan, **model_args: Any
) -> dict[str, torch.Tensor]:
    """The researcher's initial global parameters: the plan's model built with ``seed``."""
    torch.manual_seed(seed)
    instance = plan()
    return {k: v.detach().clone() for k, v in instance.init_model(dict(model_args)).state_dict().items()}


def make_node(
    root: Path,
    *,
    node_id: str = "node-a",
    states: InMemoryStateStore | None = None,
    gpu: GpuPolicy | None = None,
) -> FakeNode:
    """A FakeNode without secure aggregation; ``states`` may be shared to simulate a restart."""
    settings = NodeSettings(node_id=node_id, root=root, secure_aggregation=False, gpu=gpu or GpuPolicy())
    node = FakeNode(settings=settings)
    if states is not None:
        node.states = states
    return node


def train(
    node: FakeNode,
    params: Mapping[str, torch.Tensor],
    training_args: Mapping[str, Any],
    *,
    plan: type[TorchTrainingPlan] = MlpPlan,
    dataset: DatasetRecord | None = None,
    aux: Mapping[str, Any] | None = None,
    **fields: Any,
) -> tuple[TrainReply, dict[str, Any]]:
    """Run one standard round on ``node``; return the reply and the decoded results payload."""
    if aux is not None:
        fields["aux_var_urls"] = [node.exchange.publish_object(f"aux-{len(node.exchange.files)}", dict(aux))]
    request = node.request(
        plan=plan,
        class_name=plan.__name__,
        source=PLAN_SOURCE,
        params=dict(params),
        dataset=dataset or record(),
        training_args=dict(training_args),
        **fields,
    )
    reply = run_round(request, node.ports, node.settings)
    if not reply.success or not reply.params_url:
        return reply, {}
    payload = loads(node.exchange.uploads[reply.params_url]).unwrap()
    return reply, payload


def accuracy(params: Mapping[str, torch.Tensor], rows: list[int] | None = None) -> float:
    """Accuracy of the MLP with ``params`` on (a subset of) the standardized data."""
    model = MlpPlan().init_model({})
    model.load_state_dict(dict(params))
    x = torch.as_tensor(STANDARDIZED)
    rows = rows if rows is not None else list(range(len(DATA)))
    with torch.no_grad():
        pred = (torch.sigmoid(model(x[rows]).squeeze(-1)) >= 0.5).numpy()
    return float(np.mean(pred == DATA.labels[rows]))


def _standardized() -> Any:
    from fedpipe.training.datasets import standardize

    return standardize(DATA.features)


STANDARDIZED = _standardized()


class ShardPlan(MlpPlan):
    """The MLP on a node's shard of the globally standardized data (FedAvg baseline: plain SGD)."""

    def training_data(self, record: DatasetRecord) -> DataManager:
        rows = SHARDS[record.dataset_id]
        return DataManager(TabularDataset(STANDARDIZED[rows], DATA.labels[rows]), shuffle=True)

    def init_optimizer(self, optimizer_args: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model().parameters(), **optimizer_args)


class ScaffoldShardPlan(ShardPlan):
    """The same plan with the default optimizer, which is Scaffold under a SCAFFOLD aggregator."""

    def init_optimizer(self, optimizer_args: dict[str, Any]) -> torch.optim.Optimizer:
        return TorchTrainingPlan.init_optimizer(self)
