import torch
import torch.nn as nn
import torch.nn.functional as F
from fedbiomed.common.training_plans import TorchTrainingPlan
from fedbiomed.common.datamanager import DataManager
from fedbiomed.common.constants import ProcessTypes
from fedbiomed.common.dataloader import PytorchDataLoader
from torchvision import datasets, transforms
from fedbiomed.common.dataset import TabularDataset
class BreastCancerPlan(TorchTrainingPlan):
    """A one-hidden-layer classifier of the 30 WDBC features, standardised with the researcher's statistics."""

    FEATURES = (
        "mean_radius", "mean_texture", "mean_perimeter", "mean_area", "mean_smoothness",
        "mean_compactness", "mean_concavity", "mean_concave_points", "mean_symmetry",
        "mean_fractal_dimension", "radius_error", "texture_error", "perimeter_error", "area_error",
        "smoothness_error", "compactness_error", "concavity_error", "concave_points_error",
        "symmetry_error", "fractal_dimension_error", "worst_radius", "worst_texture",
        "worst_perimeter", "worst_area", "worst_smoothness", "worst_compactness", "worst_concavity",
        "worst_concave_points", "worst_symmetry", "worst_fractal_dimension",
    )  # fmt: skip

    class Net(nn.Module):
        def __init__(self, in_features, hidden):
            super().__init__()
            self.fc1 = nn.Linear(in_features, hidden)
            self.fc2 = nn.Linear(hidden, 1)

        def forward(self, x):
            return self.fc2(F.relu(self.fc1(x)))

    def init_model(self, model_args):
        return self.Net(model_args["in_features"], model_args["hidden"])

    def init_dependencies(self):
        return ["from fedbiomed.common.dataset import TabularDataset"]

    def training_data(self):
        mean = torch.tensor(self.model_args()["feature_mean"], dtype=torch.float32)
        std = torch.tensor(self.model_args()["feature_std"], dtype=torch.float32)
        dataset = TabularDataset(
            input_columns=self.FEATURES,
            target_columns=["diagnosis"],
            transform=lambda x: (x.float() - mean) / std,
            target_transform=lambda y: y.float(),
        )
        return DataManager(dataset=dataset, shuffle=True)

    def training_step(self, data, target):
        logits = self.model().forward(data)
        return F.binary_cross_entropy_with_logits(logits, target)

    def testing_step(self, data, target):
        logits = self.model().forward(data)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        accuracy = ((logits > 0).float() == target).float().mean()
        return {"accuracy": accuracy.item(), "loss": loss.item()}
