"""The PyTorch training-plan layer: subclass TorchTrainingPlan, return a DataManager, write training_step.

A minimal plan::

    class Plan(TorchTrainingPlan):
        def init_model(self):
            return torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

        def training_data(self):
            data = load_breast_cancer()
            return DataManager(TabularDataset(data.features, data.labels), batch_size=32, shuffle=True)

        def training_step(self, data, target):
            logits = self.model()(data).squeeze(-1)
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
"""

from fedpipe.training.data import DataManager, merge_loader_args
from fedpipe.training.datasets import (
    TabularData,
    TabularDataset,
    enlarge,
    load_breast_cancer,
    non_iid_shards,
    read_table,
)
from fedpipe.training.device import DeviceChoice, select_device
from fedpipe.training.errors import DataError, MetricError, PlanContractError, PlanError
from fedpipe.training.metrics import evaluate, metric_values
from fedpipe.training.optim import Scaffold
from fedpipe.training.plan import TorchTrainingPlan, flatten_params
from fedpipe.training.warm import warm_up, warm_up_in_background

__all__ = [
    "DataError",
    "DataManager",
    "DeviceChoice",
    "MetricError",
    "PlanContractError",
    "PlanError",
    "Scaffold",
    "TabularData",
    "TabularDataset",
    "TorchTrainingPlan",
    "enlarge",
    "evaluate",
    "flatten_params",
    "load_breast_cancer",
    "merge_loader_args",
    "metric_values",
    "non_iid_shards",
    "read_table",
    "select_device",
    "warm_up",
    "warm_up_in_background",
]
