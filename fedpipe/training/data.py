"""DataManager: the user's dataset plus loader arguments, turned into train and test loaders."""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from fedpipe.plan import request_loader_arg_problem
from fedpipe.training.errors import DataError

__all__ = ["DataManager", "merge_loader_args"]

# arguments that choose which samples a loader yields: never carried over to the test loader
_TRAIN_ONLY = frozenset({"shuffle", "sampler", "batch_sampler", "drop_last", "generator"})


def merge_loader_args(plan_args: Mapping[str, Any], researcher_args: Mapping[str, Any]) -> dict[str, Any]:
    """The plan's loader arguments, with the researcher's filling only the keys the plan left out.

    The plan's arguments are approved code and pass as they are (its choice wins). The
    researcher's must pass ``fedpipe.plan.request_loader_arg_problem`` (only
    ``REQUEST_LOADER_ARGS``, with plain values); anything else raises ``DataError`` even where the
    plan sets the key, so nothing from a request reaches the DataLoader unchecked. The round's
    ``parse_training_args`` step refuses by the same rule earlier, with a message for the
    researcher, and caps ``num_workers`` and ``batch_size`` at the owner's limits; this check
    keeps a plan driven outside the standard round just as safe.

    >>> merge_loader_args({"batch_size": 8}, {"batch_size": 32, "shuffle": True})
    {'batch_size': 8, 'shuffle': True}
    >>> merge_loader_args({}, {"worker_init_fn": "os.system"})
    Traceback (most recent call last):
    ...
    fedpipe.training.errors.DataError: the loader argument 'worker_init_fn' is not a data-loader argument a request may set (allowed: batch_size, drop_last, num_workers, shuffle)
    """
    merged = dict(plan_args)
    for key, value in researcher_args.items():
        problem = request_loader_arg_problem(str(key), value)
        if problem is not None:
            raise DataError(f"the loader argument {str(key)[:64]!r} {problem}")
        merged.setdefault(key, value)
    return merged


class DataManager:
    """What ``training_data()`` returns: a torch Dataset and the plan's own DataLoader arguments.

    Array-like ``dataset`` plus ``target`` are wrapped in a ``TabularDataset``. The researcher's
    ``loader_args`` only fill in the keys given here (the plan's choice wins), and only the keys
    a request may set (see ``merge_loader_args``). The keywords given here are the plan's own,
    approved with its code: a ``num_workers`` set here is the node owner's choice and is not
    capped by ``NodeSettings.max_loader_workers``, which bounds what a request may ask.
    """

    def __init__(self, dataset: Any, target: Any = None, **loader_kwargs: Any) -> None:
        if target is not None:
            from fedpipe.training.datasets import TabularDataset

            dataset = TabularDataset(dataset, target)
        if not isinstance(dataset, Dataset):
            raise DataError(
                f"DataManager needs a torch Dataset (or arrays with a target), got {type(dataset).__name__}"
            )
        if not hasattr(dataset, "__len__"):
            raise DataError(f"the dataset {type(dataset).__name__} has no length")
        self.dataset: Dataset[Any] = dataset
        self.loader_kwargs = dict(loader_kwargs)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def loaders(
        self,
        train_indices: Sequence[int],
        test_indices: Sequence[int],
        researcher_args: Mapping[str, Any],
        seed: int | None = None,
        test_batch_size: int | None = None,
    ) -> tuple[DataLoader[Any] | None, DataLoader[Any] | None]:
        """Loaders over the two subsets (None for an empty one); the test loader batches too, in order.

        ``test_batch_size`` (the researcher's) sets the testing batch size: 0 puts the whole
        testing subset in one batch; None keeps the loader's batch size.

        ``seed`` drives the training loader's shuffling through its own generator, so a seeded
        run repeats without touching torch's global random state.
        """
        n = len(self)
        for part in (train_indices, test_indices):
            if part and not (min(part) >= 0 and max(part) < n):
                index = min(part) if min(part) < 0 else max(part)
                raise DataError(f"sample index {index} is outside the dataset of {n} samples")
        kwargs = merge_loader_args(self.loader_kwargs, researcher_args)
        train_kwargs = dict(kwargs)
        if seed is not None and "generator" not in train_kwargs:
            train_kwargs["generator"] = torch.Generator().manual_seed(seed)
        test_kwargs = {k: v for k, v in kwargs.items() if k not in _TRAIN_ONLY}
        if test_batch_size is not None and test_indices:
            test_kwargs["batch_size"] = test_batch_size or len(test_indices)
        return (
            self._loader(train_indices, train_kwargs, "training"),
            self._loader(test_indices, test_kwargs, "testing"),
        )

    def _loader(self, indices: Sequence[int], kwargs: dict[str, Any], what: str) -> DataLoader[Any] | None:
        if not indices:
            return None
        try:
            return DataLoader(Subset(self.dataset, list(indices)), **kwargs)
        except (TypeError, ValueError) as err:
            raise DataError(f"cannot build the {what} data loader from the loader arguments: {err}") from err
