"""``fedbiomed.common.dataset``: TabularDataset over the node's CSV files, and CustomDataset.

Samples come out as Fed-BioMed 6.4.1 gives them to a torch plan: the selected columns of one row
as a 1-D tensor, float64 columns (or a mix with integer ones) as ``torch.get_default_dtype()``,
integer-only selections as int64; ``transform``/``target_transform`` receive that tensor and
their result is cast to the same default types again. As in 6.4.1, ``load`` applies the transforms
once to the first row (before the default cast) to check that they return tensors.

The CSV is read with the standard library (no polars): the delimiter and the header are detected
with ``csv.Sniffer`` on the first 32 KiB as 6.4.1 does, unnamed columns are called ``column_1``,
``column_2`` ... (polars' names), and each column is integer, float or text by its values.
Unlike polars, the type is inferred from the whole column instead of its first 100 rows.
"""

import abc
import csv
import enum
import io
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch

from fedpipe.fedbiomed.compat.errors import (
    FedbiomedDatasetError,
    FedbiomedError,
    FedbiomedUserInputError,
    FedbiomedValueError,
)

__all__ = ["CustomDataset", "DataReturnFormat", "Dataset", "TabularDataset", "csv_shape", "default_types"]

_SNIFF_CHARS = 32768  # what 6.4.1 reads to detect the delimiter and the header

Transform = Callable[[Any], Any]


class DataReturnFormat(enum.Enum):
    """The framework format samples are returned in (``fedbiomed.common.dataset_types``); torch here."""

    SKLEARN = np.ndarray
    TORCH = torch.Tensor


def default_types(value: torch.Tensor) -> torch.Tensor:
    """Fed-BioMed's default training types: floats to the default dtype, integers to int64.

    >>> default_types(torch.tensor([1.5], dtype=torch.float64)).dtype, default_types(torch.tensor([1], dtype=torch.int8)).dtype
    (torch.float32, torch.int64)
    """
    if not isinstance(value, torch.Tensor):
        raise FedbiomedDatasetError(f"expected a torch.Tensor, got {type(value).__name__}")
    if value.is_floating_point():
        return value.to(torch.get_default_dtype())
    if value.dtype in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64):
        return value.long()
    return value


def _checked_transform(transform: Transform | None, what: str) -> Transform:
    if transform is None:
        return lambda value: value
    if not callable(transform):
        raise FedbiomedValueError(f"`{what}` must be callable or None, got {type(transform).__name__}")
    return transform


class Dataset(abc.ABC):
    """Base of Fed-BioMed datasets: ``load`` binds the node's data, then samples can be indexed."""

    _to_format: DataReturnFormat | None = None

    @property
    def to_format(self) -> DataReturnFormat | None:
        """The format samples are returned in (set by ``load``)."""
        return self._to_format

    @to_format.setter
    def to_format(self, value: DataReturnFormat) -> None:
        if not isinstance(value, DataReturnFormat):
            raise FedbiomedValueError("`to_format` must be a DataReturnFormat")
        self._to_format = value

    @abc.abstractmethod
    def load(self, root: str | Path, to_format: DataReturnFormat) -> None:
        """Bind the dataset to the node's data at ``root`` (the registered dataset's path)."""

    @abc.abstractmethod
    def __getitem__(self, index: int) -> tuple[Any, Any]:
        """The (data, target) sample at ``index`` (target None when the dataset has none)."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of samples."""


Column = npt.NDArray[np.int64] | npt.NDArray[np.float64] | None  # None: not numeric


_TABLES_KEPT = 4
_TABLES: dict[tuple[str, int, int], "_Table"] = {}
_TABLES_LOCK = threading.Lock()


class _Table:
    """The columns of a CSV file: names and, per column, int64 or float64 values (None when not numeric)."""

    def __init__(self, names: list[str], columns: list[Column], n_rows: int) -> None:
        self.names = names
        self.columns = columns
        self.n_rows = n_rows

    @classmethod
    def read(cls, path: Path) -> "_Table":
        """The parsed file, from the cache while the file keeps its size and modification time.

        A node reads the same dataset every round; parsing it again is most of the cost of
        loading it. The arrays are never written to (rows are copied out), so sharing is safe.
        """
        try:
            stat = path.stat()
        except OSError:
            stat = None
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns) if stat is not None else None
        with _TABLES_LOCK:
            cached = _TABLES.get(key) if key is not None else None
        if cached is not None:
            return cached
        table = cls._parse(path)
        if key is not None:
            with _TABLES_LOCK:
                _TABLES[key] = table
                while len(_TABLES) > _TABLES_KEPT:
                    _TABLES.pop(next(iter(_TABLES)))
        return table

    @classmethod
    def _parse(cls, path: Path) -> "_Table":
        if not path.is_file():
            raise FedbiomedDatasetError("the dataset's CSV file does not exist or is not a file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise FedbiomedDatasetError(
                f"the dataset's CSV file cannot be read ({type(err).__name__})"
            ) from err
        sample = text[:_SNIFF_CHARS]
        if not sample:
            raise FedbiomedDatasetError("the dataset's CSV file is empty")
        sniffer = csv.Sniffer()
        try:
            delimiter = sniffer.sniff(sample).delimiter
            has_header = sniffer.has_header(sample)
        except csv.Error as err:
            raise FedbiomedDatasetError(
                "cannot detect the delimiter or header of the dataset's CSV file"
            ) from err
        try:
            rows = [row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if row]
        except csv.Error as err:
            raise FedbiomedDatasetError(f"the dataset's CSV file is malformed: {err}") from err
        if not rows:
            raise FedbiomedDatasetError("the dataset's CSV file has no rows")
        width = len(rows[0])
        names = rows[0] if has_header else [f"column_{i + 1}" for i in range(width)]
        body = rows[1:] if has_header else rows
        for number, row in enumerate(body, start=2 if has_header else 1):
            if len(row) != width:
                raise FedbiomedDatasetError(
                    f"cannot read the dataset's CSV file: line {number} has {len(row)} fields, not {width}"
                )
        if len(set(names)) != len(names):
            raise FedbiomedDatasetError("the dataset's CSV file has duplicate column names")
        columns = [_numeric([row[j] for row in body]) for j in range(width)]
        return cls(names, columns, len(body))

    def normalize(self, columns: Any) -> list[str]:
        """Column names for a selection by name(s) or index(es), checked as 6.4.1 checks them."""
        if isinstance(columns, str | int) and not isinstance(columns, bool):
            columns = [columns]
        if not isinstance(columns, Iterable) or isinstance(columns, Mapping):
            raise FedbiomedUserInputError(
                f"invalid type for columns: expected str, int, or iterable of int/str, got {type(columns).__name__}"
            )
        chosen = list(columns)
        if not all(isinstance(c, str | int) and not isinstance(c, bool) for c in chosen):
            raise FedbiomedUserInputError("invalid type for columns: expected all items to be str or int")
        bad = [c for c in chosen if isinstance(c, int) and not 0 <= c < len(self.names)]
        if bad:
            raise FedbiomedUserInputError(f"column index(es) {bad} out of range (0 to {len(self.names) - 1})")
        names = [self.names[c] if isinstance(c, int) else c for c in chosen]
        missing = [n for n in names if n not in self.names]
        if missing:
            raise FedbiomedUserInputError(
                f"cannot read columns {missing[:5]}: the file does not contain those columns"
            )
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise FedbiomedUserInputError(f"duplicate columns {duplicates} found in the requested columns")
        return names

    def matrix(self, names: Sequence[str]) -> npt.NDArray[Any]:
        """The selected columns as one (rows, columns) array: int64 if all are integers, else float64."""
        picked = [self.columns[self.names.index(n)] for n in names]
        text = [n for n, c in zip(names, picked, strict=True) if c is None]
        if text:
            raise FedbiomedDatasetError(
                f"column(s) {text[:5]} have non-numeric values and cannot be converted for training; "
                "encode or drop them before creating the dataset"
            )
        arrays = cast(list[npt.NDArray[Any]], picked)
        if all(a.dtype == np.int64 for a in arrays):
            return np.stack(arrays, axis=1) if arrays else np.zeros((self.n_rows, 0), dtype=np.int64)
        return np.stack([a.astype(np.float64) for a in arrays], axis=1)


def csv_shape(path: Path) -> tuple[int, int]:
    """Data rows and columns of a CSV dataset, read as a round will read it (delimiter and header
    sniffed, rows checked); ``FedbiomedDatasetError`` with a one-line reason otherwise."""
    table = _Table.read(Path(path))
    return table.n_rows, len(table.names)


def _numeric(values: list[str]) -> Column:
    """int64 values if every one is an integer, float64 if every one is a number, else None."""
    if any(v == "" or v != v.strip() for v in values):
        return None
    try:
        return np.array(values, dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    try:
        return np.array(values, dtype=np.float64)
    except ValueError:
        return None


class TabularDataset(Dataset):
    """Rows of the node's CSV file: ``input_columns`` as data, ``target_columns`` (optional) as target.

    Columns are given by name or by index (an int, a str, or an iterable of them), as in 6.4.1.
    """

    def __init__(
        self,
        input_columns: Iterable[Any] | int | str,
        target_columns: Iterable[Any] | int | str | None = None,
        transform: Transform | None = None,
        target_transform: Transform | None = None,
    ) -> None:
        self._transform = _checked_transform(transform, "transform")
        self._target_transform = _checked_transform(target_transform, "target_transform")
        self._input_columns: Any = input_columns
        self._target_columns: Any = target_columns
        self._inputs: npt.NDArray[Any] | None = None
        self._targets: npt.NDArray[Any] | None = None
        # the matrices converted to the training types once; each item is a copy of one row
        self._input_rows = torch.empty(0)
        self._target_rows = torch.empty(0)

    def load(self, root: str | Path, to_format: DataReturnFormat = DataReturnFormat.TORCH) -> None:
        """Read the CSV file at ``root``, resolve the columns, and check the transforms on the first row."""
        if to_format is not DataReturnFormat.TORCH:
            raise FedbiomedDatasetError("this node loads datasets for torch training plans only")
        self.to_format = to_format
        table = _Table.read(Path(root))
        if table.n_rows == 0:
            raise FedbiomedDatasetError("the dataset's CSV file has a header but no data rows")
        inputs = table.normalize(self._input_columns)
        self._inputs = table.matrix(inputs)
        self._input_columns = inputs
        self._input_rows = default_types(torch.from_numpy(self._inputs))
        if self._target_columns is not None:
            targets = table.normalize(self._target_columns)
            self._targets = table.matrix(targets)
            self._target_columns = targets
            self._target_rows = default_types(torch.from_numpy(self._targets))
        self._check_transform(self._transform, self._inputs, "transform")
        if self._targets is not None:
            self._check_transform(self._target_transform, self._targets, "target_transform")

    @staticmethod
    def _check_transform(transform: Transform, matrix: npt.NDArray[Any], what: str) -> None:
        # 6.4.1 applies the transform to the first row's converted tensor, before the default types
        try:
            out = transform(torch.from_numpy(matrix[0].copy()))
        except Exception as err:
            raise FedbiomedDatasetError(
                f"unable to apply `{what}` to the first row: {type(err).__name__}: {err}"
            ) from err
        if not isinstance(out, torch.Tensor):
            raise FedbiomedDatasetError(f"`{what}` must return a torch.Tensor, got {type(out).__name__}")

    @staticmethod
    def _row(rows: torch.Tensor, index: int, transform: Transform, what: str) -> torch.Tensor:
        # default_types(row) of the file's values, as a fresh tensor the transform may change
        value = transform(rows[index].clone())
        if not isinstance(value, torch.Tensor):
            raise FedbiomedDatasetError(f"`{what}` must return a torch.Tensor, got {type(value).__name__}")
        return default_types(value)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The row at ``index``: (data, target), the target None without target columns."""
        if self._inputs is None:
            raise FedbiomedError("this dataset object has not completed initialization (load it first)")
        if (
            isinstance(index, bool)
            or not isinstance(index, int | np.integer)
            or not 0 <= index < len(self._inputs)
        ):
            raise FedbiomedDatasetError(f"failed to retrieve the item at index {index!r}")
        data = self._row(self._input_rows, int(index), self._transform, "transform")
        if self._targets is None:
            return data, None
        return data, self._row(self._target_rows, int(index), self._target_transform, "target_transform")

    def __len__(self) -> int:
        if self._inputs is None:
            raise FedbiomedError("this dataset object has not completed initialization (load it first)")
        return len(self._inputs)


_RESERVED_CUSTOM = ("load", "path")


class CustomDataset(Dataset):
    """A plan's own dataset: subclasses implement ``read()``, ``get_item(index)`` and ``__len__``.

    ``self.path`` is the registered dataset's path. ``get_item`` returns ``data`` or a
    ``(data, target)`` pair, each a tensor or a dict of tensors. As in 6.4.1, subclasses may not
    define ``__init__``, ``__getitem__``, ``load`` or ``path``.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("__getitem__", "__init__", *_RESERVED_CUSTOM):
            if name in cls.__dict__:
                raise FedbiomedError(
                    f"a CustomDataset subclass may not override `{name}` (implement `read`, `get_item` and `__len__`)"
                )
        for name in ("read", "get_item", "__len__"):
            if not any(name in base.__dict__ for base in cls.__mro__ if base not in CustomDataset.__mro__):
                raise FedbiomedError(
                    f"CustomDataset subclass '{cls.__name__}' must implement a '{name}' method"
                )

    @abc.abstractmethod
    def read(self) -> None:
        """Read the data at ``self.path`` (called once by ``load``)."""

    @abc.abstractmethod
    def get_item(self, index: int) -> Any:
        """The sample at ``index``: ``data`` or ``(data, target)``."""

    @property
    def path(self) -> str | Path:
        """Where the dataset is on the node (set by ``load``)."""
        path: str | Path | None = getattr(self, "_node_path", None)
        if path is None:
            raise FedbiomedError("the custom dataset's path is set by `load`, which has not run yet")
        return path

    def load(self, root: str | Path, to_format: DataReturnFormat = DataReturnFormat.TORCH) -> None:
        """Set ``path``, call ``read``, and check the first sample's types."""
        if to_format is not DataReturnFormat.TORCH:
            raise FedbiomedDatasetError("this node loads datasets for torch training plans only")
        self._node_path = root
        self.to_format = to_format
        try:
            self.read()
        except Exception as err:
            raise FedbiomedDatasetError(
                f"failed to read the dataset with `read`: {type(err).__name__}: {err}"
            ) from err
        if len(self) == 0:
            raise FedbiomedDatasetError("the custom dataset is empty (len == 0)")
        self._composed: dict[str, bool | None] = {"data": None, "target": None}
        try:
            sample = self.get_item(0)
        except Exception as err:
            raise FedbiomedDatasetError(
                f"failed to retrieve an item with `get_item`: {type(err).__name__}: {err}"
            ) from err
        data, target = _split(sample)
        self._check(data, "data")
        if target is not None:
            self._check(target, "target")

    def _check(self, value: Any, role: str) -> None:
        composed = self._composed[role]
        if composed is None:
            composed = self._composed[role] = not isinstance(value, torch.Tensor)
        if not composed and not isinstance(value, torch.Tensor):
            raise FedbiomedDatasetError(
                f"expected the {role} to be a torch.Tensor, got {type(value).__name__}"
            )
        if composed and not (
            isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values())
        ):
            raise FedbiomedDatasetError(
                f"expected the {role} to be a dict of torch.Tensor, got {type(value).__name__}"
            )

    def _typed(self, value: Any, role: str) -> Any:
        if self._composed[role]:
            return {key: default_types(v) for key, v in value.items()}
        return default_types(value)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        """The sample at ``index`` with Fed-BioMed's default types applied."""
        data, target = _split(self.get_item(index))
        self._check(data, "data")
        data = self._typed(data, "data")
        if target is not None:
            self._check(target, "target")
            target = self._typed(target, "target")
        return data, target


def _split(sample: Any) -> tuple[Any, Any]:
    if isinstance(sample, tuple) and len(sample) == 2:
        return sample[0], sample[1]
    return sample, None
