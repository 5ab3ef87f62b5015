"""``fedbiomed.common.datamanager`` and ``fedbiomed.common.dataloader``, built as Fed-BioMed 6.4.1 builds them.

The node side of 6.4.1's ``TorchDataManager`` lives here as plain functions: ``draw_split`` (the
test split of a new round: ``floor(n * test_ratio)`` test samples, drawn by ``torch.randperm`` on
the global generator as ``random_split`` draws them, or the last samples in order when the
loader arguments turn ``shuffle`` off) and ``build_loaders`` (the training loader with every
loader argument, the testing loader with only ``batch_size = test_batch_size``, or the whole test
subset in one batch when that is 0). Shuffling uses torch's global generator, which the plan's
``post_init`` seeds with ``random_seed``: that is what makes a seeded round repeat the stock
node's data order.
"""

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset, default_collate
from torch.utils.data import Dataset as TorchDataset

from fedpipe.fedbiomed.compat.datasets import DataReturnFormat, Dataset
from fedpipe.fedbiomed.compat.errors import FedbiomedDataManagerError, FedbiomedDatasetError
from fedpipe.plan import DataSplit
from fedpipe.training.data import merge_loader_args

__all__ = [
    "DataManager",
    "PytorchDataLoader",
    "build_loaders",
    "collate_optional_target",
    "draw_split",
    "n_test_samples",
]


def collate_optional_target(batch: list[tuple[Any, Any]]) -> Any:
    """Collate (data, target) pairs; the target is None when every sample's target is None."""
    if all(target is None for _, target in batch):
        return default_collate([data for data, _ in batch]), None
    return default_collate(batch)


class PytorchDataLoader(DataLoader[Any]):
    """A torch DataLoader whose default collate accepts samples without a target (6.4.1's)."""

    def __init__(self, dataset: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("collate_fn", collate_optional_target)
        super().__init__(dataset, *args, **kwargs)


def _is_tensors(value: Any) -> bool:
    return isinstance(value, torch.Tensor) or (
        isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values())
    )


class _TorchView(TorchDataset[tuple[Any, Any]]):
    """A Fed-BioMed dataset seen as a torch Dataset, checking each sample's types as 6.4.1 does."""

    def __init__(self, dataset: Dataset) -> None:
        self._dataset = dataset
        self._has_target: bool | None = None

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        data, target = self._dataset[index]
        name = type(self._dataset).__name__
        if not _is_tensors(data):
            raise FedbiomedDatasetError(
                f"bad data sample type for dataset {name} (index={index}): "
                f"must be a torch.Tensor or a dict of them, not {type(data).__name__}"
            )
        if self._has_target is None:
            self._has_target = target is not None
        if not self._has_target and target is not None:
            raise FedbiomedDatasetError(
                f"inconsistent target for dataset {name} (index={index}): the first sample had none"
            )
        if self._has_target and not _is_tensors(target):
            raise FedbiomedDatasetError(
                f"bad target sample type for dataset {name} (index={index}): "
                f"must be a torch.Tensor or a dict of them, not {type(target).__name__}"
            )
        return data, target


class DataManager:
    """What ``training_data()`` returns: a Fed-BioMed dataset and the plan's DataLoader arguments.

    The researcher's ``loader_args`` fill only the keys the plan left out, as in 6.4.1; unlike
    6.4.1, they are limited to the keys a request may set (``fedpipe.plan.REQUEST_LOADER_ARGS``).
    """

    def __init__(self, dataset: Dataset, **kwargs: Any) -> None:
        if not isinstance(dataset, Dataset):
            raise FedbiomedDataManagerError(
                "`dataset` must be a Fed-BioMed Dataset (e.g. `TabularDataset` or a `CustomDataset`), "
                f"got {type(dataset).__name__}"
            )
        self._dataset = dataset
        self._loader_arguments: dict[str, Any] = dict(kwargs)

    @property
    def dataset(self) -> Dataset:
        """The Fed-BioMed dataset."""
        return self._dataset

    @property
    def loader_arguments(self) -> dict[str, Any]:
        """The DataLoader arguments (the plan's, extended by the researcher's)."""
        return dict(self._loader_arguments)

    def extend_loader_args(self, extension: Mapping[str, Any] | None) -> None:
        """Add the researcher's loader arguments for the keys the plan did not set."""
        if extension:
            self._loader_arguments = merge_loader_args(self._loader_arguments, extension)

    def load_dataset(self, root: str | Path) -> int:
        """Load the dataset from the node's path ``root``; return its number of samples."""
        self._dataset.load(root=root, to_format=DataReturnFormat.TORCH)
        return len(self._dataset)

    @property
    def shuffles(self) -> bool:
        """Whether a new test split is drawn at random (6.4.1: unless ``shuffle`` is set false)."""
        return bool(self._loader_arguments.get("shuffle", True))


def n_test_samples(n_samples: int, test_ratio: float) -> int:
    """How many samples 6.4.1 puts in the test subset: ``floor(n_samples * test_ratio)``.

    >>> n_test_samples(284, 0.2), n_test_samples(10, 0.3), n_test_samples(5, 0.0)
    (56, 3, 0)
    """
    return math.floor(n_samples * test_ratio)


def draw_split(n_samples: int, test_ratio: float, *, shuffle: bool) -> DataSplit:
    """A new train/test split as 6.4.1 draws it; indices keep the drawn order (it is the data order).

    With ``shuffle`` one ``torch.randperm(n_samples)`` on the global generator: the first
    ``n - floor(n * ratio)`` are the training subset, the rest the test subset (what
    ``torch.utils.data.random_split`` does); without, the test subset is the last samples.

    >>> draw_split(5, 0.4, shuffle=False)
    DataSplit(train_indices=<3 indices>, test_indices=<2 indices>)
    >>> draw_split(5, 0.4, shuffle=False).test_indices
    (3, 4)
    """
    if not 0.0 <= test_ratio <= 1.0:
        raise FedbiomedDataManagerError(f"`test_ratio` must lie in [0, 1], got {test_ratio}")
    n_test = n_test_samples(n_samples, test_ratio)
    n_train = n_samples - n_test
    order = (
        torch.randperm(n_samples, generator=torch.default_generator).tolist()
        if shuffle
        else list(range(n_samples))
    )
    return DataSplit(train_indices=tuple(order[:n_train]), test_indices=tuple(order[n_train:]))


def build_loaders(
    manager: DataManager,
    train_indices: Sequence[int],
    test_indices: Sequence[int],
    test_batch_size: int | None,
) -> tuple[PytorchDataLoader | None, PytorchDataLoader | None]:
    """The training loader (every loader argument) and the testing loader (``batch_size`` only).

    An empty subset has no loader (None). ``test_batch_size`` 0 or None puts the whole test
    subset in one batch.
    """
    view = _TorchView(manager.dataset)
    n = len(view)
    for part in (train_indices, test_indices):
        if part and not (min(part) >= 0 and max(part) < n):
            raise FedbiomedDataManagerError(f"a sample index is outside the dataset of {n} samples")
    try:
        train = (
            PytorchDataLoader(Subset(view, list(train_indices)), **manager.loader_arguments)
            if train_indices
            else None
        )
        test = (
            PytorchDataLoader(
                Subset(view, list(test_indices)), batch_size=test_batch_size or len(test_indices)
            )
            if test_indices
            else None
        )
    except (TypeError, ValueError) as err:
        raise FedbiomedDataManagerError(
            f"cannot build the data loaders from the loader arguments: {err}"
        ) from err
    return train, test
