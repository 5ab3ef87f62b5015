"""Logistic regression on one node's part of the breast-cancer data (30 features -> 1 logit).

The plan of examples/simulation.toml and of benchmarks/simulation.py. Like every plan it is sent to
the nodes as source text, and each node's owner approves it before it may run.
"""

import torch

from fedpipe.training import DataManager, TabularDataset, TorchTrainingPlan, read_table


class BreastCancerLogistic(TorchTrainingPlan):
    """``Linear(30, 1)`` on ``(log1p(x) - feature_mean) / feature_std``, trained with binary cross-entropy.

    The scaling statistics are the study's fixed ones (``model_args``), so every node
    preprocesses alike without sharing statistics of its own data.
    """

    def init_model(self) -> torch.nn.Module:
        args = self.model_args
        self._mean = torch.tensor(args.get("feature_mean", [0.0] * 30), dtype=torch.float32)
        self._std = torch.tensor(args.get("feature_std", [1.0] * 30), dtype=torch.float32).clamp_min(1e-6)
        return torch.nn.Linear(30, 1)

    def _scaled(self, data: torch.Tensor) -> torch.Tensor:
        return (torch.log1p(data) - self._mean) / self._std

    def training_data(self) -> DataManager:
        table = read_table(self.dataset_path)  # parsed once per process while the file is unchanged
        return DataManager(TabularDataset(table[:, :-1], table[:, -1]), shuffle=True)

    def training_step(self, data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = self.model()(self._scaled(data)).squeeze(-1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)

    def predict(self, data: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model()(self._scaled(data)))
