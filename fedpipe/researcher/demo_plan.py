"""fedpipe demo plan: a small MLP on one node's shard of the Wisconsin breast-cancer data.

This file is sent to the nodes as source text; each node owner approves it before it may run.
"""

import numpy as np
import torch

from fedpipe.training import DataManager, TabularDataset, TorchTrainingPlan


def build_model(hidden: int = 16) -> torch.nn.Module:
    """30 features -> ``hidden`` -> 1 logit (the researcher builds the initial model with it too)."""
    return torch.nn.Sequential(torch.nn.Linear(30, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))


class BreastCancerMlp(TorchTrainingPlan):
    """30 features -> hidden -> 1 logit, trained with binary cross-entropy.

    Features go through ``log1p`` and are then scaled with the study's reference statistics
    (``model_args["feature_mean"]`` and ``["feature_std"]``, fixed by the researcher's protocol),
    so that every node preprocesses alike without sharing statistics of its own data.
    """

    def init_model(self) -> torch.nn.Module:
        args = self.model_args
        self._mean = torch.tensor(args.get("feature_mean", [0.0] * 30), dtype=torch.float32)
        self._std = torch.tensor(args.get("feature_std", [1.0] * 30), dtype=torch.float32).clamp_min(1e-6)
        return build_model(int(args.get("hidden", 16)))

    def _scaled(self, data: torch.Tensor) -> torch.Tensor:
        return (torch.log1p(data) - self._mean.to(data.device)) / self._std.to(data.device)

    def training_data(self) -> DataManager:
        table = np.loadtxt(self.dataset_path, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2)
        return DataManager(TabularDataset(table[:, :-1], table[:, -1]), shuffle=True)

    def training_step(self, data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = self.model()(self._scaled(data)).squeeze(-1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)

    def predict(self, data: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model()(self._scaled(data)))
