"""Shipped tabular data (Wisconsin breast cancer), a torch Dataset over arrays, and non-IID shards."""

import csv
import io
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from attrs import frozen
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from fedpipe.training.errors import DataError

__all__ = [
    "TabularData",
    "TabularDataset",
    "enlarge",
    "load_breast_cancer",
    "non_iid_shards",
    "read_table",
    "standardize",
    "tabular_batches",
]

FloatArray = npt.NDArray[np.float32]


@frozen(kw_only=True)
class TabularData:
    """Features (float32, one row per sample), labels (float32) and the feature names."""

    features: FloatArray
    labels: FloatArray
    feature_names: tuple[str, ...]
    label_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)


def load_breast_cancer() -> TabularData:
    """The 569 rows of the Wisconsin Diagnostic Breast Cancer data shipped in ``fedpipe/data``.

    Labels: 0 = malignant, 1 = benign (the source's encoding). Read from the installed package,
    never from the network.

    >>> data = load_breast_cancer()
    >>> data.features.shape, data.features.dtype, int(data.labels.sum())
    ((569, 30), dtype('float32'), 357)
    """
    text = resources.files("fedpipe").joinpath("data", "breast_cancer.csv").read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    values = np.array(body, dtype=np.float32)
    return TabularData(
        features=np.ascontiguousarray(values[:, :-1]),
        labels=np.ascontiguousarray(values[:, -1]),
        feature_names=tuple(header[:-1]),
        label_names=("malignant", "benign"),
    )


def enlarge(data: TabularData, rows: int, *, seed: int = 0, jitter: float = 0.05) -> TabularData:
    """``data`` grown to ``rows`` rows: its own rows first, then generated ones (seeded, no download).

    A generated row copies a randomly drawn row of ``data`` (so the class balance is kept in
    expectation) and multiplies each feature by ``exp(N(0, jitter))``: positive features stay
    positive and keep their scale, and the classes stay as separable as in ``data``. For
    simulations that need more rows than the 569 shipped ones; ``rows`` at or below ``len(data)``
    returns ``data`` unchanged. The same arguments always give the same rows.

    >>> big = enlarge(load_breast_cancer(), 2000, seed=1)
    >>> big.features.shape, bool((big.features[:569] == load_breast_cancer().features).all())
    ((2000, 30), True)
    >>> bool((big.features >= 0).all()), big.labels.dtype.name
    (True, 'float32')
    """
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise DataError(f"rows must be a positive integer, not {rows!r}")
    if not (jitter >= 0 and np.isfinite(jitter)):
        raise DataError(f"jitter must be a finite number of at least 0, not {jitter!r}")
    extra = rows - len(data)
    if extra <= 0:
        return data
    rng = np.random.default_rng(seed)
    source = rng.integers(0, len(data), size=extra)
    noise = np.exp(rng.normal(0.0, jitter, size=(extra, data.features.shape[1]))).astype(np.float32)
    return TabularData(
        features=np.concatenate([data.features, data.features[source] * noise]),
        labels=np.concatenate([data.labels, data.labels[source]]),
        feature_names=data.feature_names,
        label_names=data.label_names,
    )


_TABLES: "OrderedDict[tuple[str, int, int, int], FloatArray]" = OrderedDict()
_TABLES_LOCK = threading.Lock()
_TABLES_BYTES = 0
TABLE_CACHE_BYTES = 64 * 1024**2
"""What ``read_table`` keeps in memory per process, at most (least recently used tables go first)."""


def read_table(path: str | os.PathLike[str], *, skiprows: int = 1) -> FloatArray:
    """The numeric CSV file at ``path`` as a float32 matrix (one row per line), read-only.

    A plan's ``training_data`` reads its dataset at every round; this keeps the parsed table of
    a file, keyed by its path, size and modification time, so that a process running many
    rounds (a node, a simulation's worker hosting many virtual nodes) parses it once while it is
    unchanged. Tables over ``TABLE_CACHE_BYTES`` are not kept. Raises ``DataError`` for a file
    that cannot be read or parsed, with the reason in one line.

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = f.write_text("a,b\\n1,2\\n3,4\\n")
    >>> read_table(f).tolist(), read_table(f) is read_table(f)
    ([[1.0, 2.0], [3.0, 4.0]], True)
    """
    try:
        info = os.stat(path)
        key = (os.path.realpath(path), info.st_size, info.st_mtime_ns, skiprows)
        with _TABLES_LOCK:
            table = _TABLES.get(key)
            if table is not None:
                _TABLES.move_to_end(key)
                return table
        table = np.loadtxt(path, delimiter=",", skiprows=skiprows, dtype=np.float32, ndmin=2)
    except (OSError, ValueError) as err:
        raise DataError(
            f"cannot read the table {os.fspath(path)}: {getattr(err, 'strerror', None) or err}"
        ) from err
    table.setflags(write=False)
    if table.nbytes <= TABLE_CACHE_BYTES:
        global _TABLES_BYTES
        with _TABLES_LOCK:
            if key not in _TABLES:
                _TABLES[key] = table
                _TABLES_BYTES += table.nbytes
            while _TABLES_BYTES > TABLE_CACHE_BYTES:
                _TABLES_BYTES -= _TABLES.popitem(last=False)[1].nbytes
    return table


def standardize(features: FloatArray) -> FloatArray:
    """Scale each column to zero mean and unit variance (constant columns are only centred).

    >>> standardize(np.array([[1.0, 5.0], [3.0, 5.0]], dtype=np.float32)).tolist()
    [[-1.0, 0.0], [1.0, 0.0]]
    """
    mean = features.mean(axis=0)
    std = features.std(axis=0)
    scaled: FloatArray = ((features - mean) / np.where(std == 0, 1.0, std)).astype(np.float32)
    return scaled


def _writable(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    return array if array.flags.writeable else array.copy()


class TabularDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A torch Dataset over a feature matrix and a label vector, fetched a whole batch at a time.

    ``set_dataset_parameters`` accepts ``{"standardize": bool}`` (the node owner's dataset
    parameters); unknown parameters are refused.
    """

    def __init__(self, features: Any, labels: Any) -> None:
        # torch shares a writable array's memory; a read-only one (a ``read_table`` result) is copied
        x = torch.as_tensor(_writable(np.asarray(features, dtype=np.float32)))
        y = torch.as_tensor(_writable(np.asarray(labels, dtype=np.float32)))
        if x.ndim != 2 or len(x) != len(y):
            raise DataError(f"features must be 2-D with one row per label, got {tuple(x.shape)} and {len(y)}")
        self.features = x
        self.labels = y
        self.parameters: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # one gather per batch instead of one indexing per sample; DataLoader then collates
        idx = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(self.features[idx], self.labels[idx], strict=True))

    def set_dataset_parameters(self, parameters: Mapping[str, Any]) -> None:
        """Apply the node owner's dataset parameters (only ``standardize`` is known)."""
        unknown = sorted(set(parameters) - {"standardize"})
        if unknown:
            raise DataError(f"unknown dataset parameter {unknown[0]!r} (known: 'standardize')")
        if parameters.get("standardize", False):
            self.features = torch.as_tensor(standardize(self.features.numpy()))
        self.parameters = dict(parameters)


def tabular_batches(loader: DataLoader[Any]) -> Iterator[list[torch.Tensor]] | None:
    """The batches of ``loader`` gathered straight from its ``TabularDataset``; None where it has no such dataset.

    For a plain ``DataLoader`` in this process (no workers, no pinned memory, the default
    collation) over a ``Subset`` of a ``TabularDataset`` (exactly those types: a subclass may
    fetch otherwise), each batch is one gather of the features and one of the labels at the
    batch sampler's indices, instead of the loader's per-sample tuples stacked again (and its
    profiler scope per batch), which cost more than a small model's training step. The batches
    are the loader's, value for value, and the random numbers drawn are the same, in the same
    order: the one an iterator of the loader draws when it is made, then its sampler's.

    >>> data = TabularDataset(np.arange(8.0).reshape(4, 2), np.arange(4.0))
    >>> loader = DataLoader(Subset(data, [3, 1, 2]), batch_size=2)
    >>> [x.tolist() for x, _ in tabular_batches(loader)]
    [[[6.0, 7.0], [2.0, 3.0]], [[4.0, 5.0]]]
    """
    subset = loader.dataset
    if (
        type(loader) is not DataLoader
        or type(subset) is not Subset
        or type(subset.dataset) is not TabularDataset
        or loader.num_workers != 0
        or loader.pin_memory
        or loader.batch_sampler is None
        or loader.collate_fn is not default_collate
    ):
        return None
    table: TabularDataset = subset.dataset
    return _gathered(loader, table, torch.as_tensor(list(subset.indices), dtype=torch.long))


def _gathered(
    loader: DataLoader[Any], table: TabularDataset, rows: torch.Tensor
) -> Iterator[list[torch.Tensor]]:
    batches = iter(loader.batch_sampler)  # type: ignore[arg-type]
    # what a new iterator of the loader draws, before its sampler draws its own seed
    torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
    for indices in batches:
        picked = rows[torch.as_tensor(indices, dtype=torch.long)]
        yield [table.features[picked], table.labels[picked]]


def non_iid_shards(labels: Any, n_nodes: int, *, seed: int, skew: float = 0.8) -> list[list[int]]:
    """Split sample indices among ``n_nodes`` with skewed label mixes, deterministically by ``seed``.

    Samples are grouped by label; node ``k`` is given a ``skew`` share of its "own" label
    ``k % n_labels`` and the rest is dealt round-robin, so every node sees every label but in
    very different proportions. Each index is in exactly one shard.

    >>> shards = non_iid_shards([0, 0, 0, 0, 1, 1, 1, 1], 2, seed=0, skew=1.0)
    >>> sorted(sum(shards, [])) == list(range(8)), [len(s) for s in shards]
    (True, [4, 4])
    """
    if n_nodes < 1:
        raise DataError("n_nodes must be at least 1")
    if not 0.0 <= skew <= 1.0:
        raise DataError("skew must lie in [0, 1]")
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    shards: list[list[int]] = [[] for _ in range(n_nodes)]
    leftovers: list[int] = []
    classes = np.unique(y)
    owners = {c: [k for k in range(n_nodes) if k % len(classes) == i] for i, c in enumerate(classes)}
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c)).tolist()
        own = owners[c]
        n_own = round(skew * len(idx)) if own else 0
        for j, i in enumerate(idx[:n_own]):
            shards[own[j % len(own)]].append(int(i))
        leftovers.extend(int(i) for i in idx[n_own:])
    for j, i in enumerate(rng.permutation(leftovers).tolist()):
        shards[j % n_nodes].append(int(i))
    return [sorted(s) for s in shards]
