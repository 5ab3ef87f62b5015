"""tabular_batches: a TabularDataset's batches gathered at once, equal to the DataLoader's, with the same random draws."""

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Subset

from fedpipe.training import DataManager, TabularDataset
from fedpipe.training.datasets import tabular_batches


def _table(rows: int, columns: int, seed: int) -> TabularDataset:
    rng = np.random.default_rng(seed)
    return TabularDataset(rng.normal(size=(rows, columns)), rng.integers(0, 2, rows).astype(float))


def _drain(batches: Any) -> list[list[torch.Tensor]]:
    return [list(b) for b in batches]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 60),
    columns=st.integers(1, 5),
    batch_size=st.integers(1, 20),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
    own_generator=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_batches_and_random_draws_equal_the_loader_s(
    rows: int,
    columns: int,
    batch_size: int,
    shuffle: bool,
    drop_last: bool,
    own_generator: bool,
    seed: int,
    data: st.DataObject,
) -> None:
    table = _table(rows, columns, seed)
    indices = data.draw(st.lists(st.integers(0, rows - 1), min_size=1, max_size=rows))

    def loader() -> DataLoader[Any]:
        generator = torch.Generator().manual_seed(seed + 1) if own_generator else None
        return DataLoader(
            Subset(table, indices),
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            generator=generator,
        )

    torch.manual_seed(seed)
    expected = _drain(loader())
    after_loader = torch.get_rng_state()
    torch.manual_seed(seed)
    fast = tabular_batches(loader())
    assert fast is not None
    got = _drain(fast)
    assert torch.equal(torch.get_rng_state(), after_loader)  # later draws (the next epoch's shuffle) alike
    assert len(got) == len(expected)
    for (x, y), (ex, ey) in zip(got, expected, strict=True):
        assert x.dtype == ex.dtype and y.dtype == ey.dtype
        assert torch.equal(x, ex) and torch.equal(y, ey)


def test_a_data_manager_s_loaders_take_the_gathered_path() -> None:
    manager = DataManager(_table(30, 3, 0), shuffle=True, batch_size=4)
    train, test = manager.loaders(list(range(20)), list(range(20, 30)), {}, seed=3, test_batch_size=0)
    assert train is not None and test is not None
    for loader in (train, test):
        fast = tabular_batches(loader)
        assert fast is not None
        assert sum(len(x) for x, _ in fast) == len(loader.dataset)  # type: ignore[arg-type]


class _Doubled(TabularDataset):
    def __getitems__(self, indices: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(2 * x, y) for x, y in super().__getitems__(indices)]


@pytest.mark.parametrize(
    "make",
    [
        lambda t: DataLoader(Subset(_Doubled(t.features.numpy(), t.labels.numpy()), [0, 1]), batch_size=2),
        lambda t: DataLoader(Subset(t, [0, 1]), batch_size=2, collate_fn=lambda b: b),
        lambda t: DataLoader(Subset(t, [0, 1]), batch_size=2, num_workers=1),
        lambda t: DataLoader(t, batch_size=2),  # not a Subset
        lambda t: DataLoader(Subset(t, [0, 1]), batch_size=None),  # no batching: per sample
    ],
)
def test_loaders_that_fetch_otherwise_keep_the_loader_s_own_path(make: Any) -> None:
    assert tabular_batches(make(_table(4, 2, 1))) is None
