"""A second Fed-BioMed 6.4.1 plan: columns by index, its own SGD optimizer, the node's default metric.

It has no ``testing_step``, so validation uses ``test_metric`` on the model's outputs; its
DataManager turns shuffling off, so Fed-BioMed splits the test subset off the end of the data.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from fedbiomed.common.datamanager import DataManager
from fedbiomed.common.dataset import TabularDataset
from fedbiomed.common.training_plans import TorchTrainingPlan


class SgdPlan(TorchTrainingPlan):
    """Logistic regression on standardised features, trained with SGD and momentum."""

    def init_model(self):
        return nn.Sequential(nn.Linear(self.model_args()["in_features"], 1), nn.Flatten(0))

    def init_optimizer(self, optimizer_args):
        return torch.optim.SGD(self.model().parameters(), lr=optimizer_args["lr"], momentum=0.9)

    def init_dependencies(self):
        return ["from fedbiomed.common.dataset import TabularDataset"]

    def training_data(self):
        mean = torch.tensor(self.model_args()["feature_mean"])
        std = torch.tensor(self.model_args()["feature_std"])
        dataset = TabularDataset(
            input_columns=list(range(30)),
            target_columns=30,
            transform=lambda x: ((x - mean) / std).float(),
            target_transform=lambda y: y.float().squeeze(),
        )
        return DataManager(dataset, shuffle=False)

    def training_step(self, data, target):
        return F.binary_cross_entropy_with_logits(self.model()(data), target)
