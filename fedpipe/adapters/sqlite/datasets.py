"""SqliteDatasetRegistry: the node owner's datasets (DatasetRegistry port plus owner operations)."""

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from returns.result import Failure, Result, Success

from fedpipe.adapters.sqlite.db import STORE_ERRORS, Database, NodeAdminError, now_iso, store_error
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.plan import DatasetRecord
from fedpipe.request import freeze_mapping, thaw

__all__ = ["SqliteDatasetRegistry"]

_SELECT = (
    "SELECT dataset_id, name, path, data_type, shape, description, tags, dataset_parameters, "
    "data_loading_plan FROM datasets "
)
_BY_ID = _SELECT + "WHERE dataset_id = ?"
_ALL = _SELECT + "ORDER BY date_added, dataset_id"
_INSERT = (
    "INSERT INTO datasets (dataset_id, name, path, data_type, shape, description, tags, dataset_parameters, "
    "data_loading_plan, date_added) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(thaw(value), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise NodeAdminError(f"{what} is not JSON-serialisable: {err}") from err


def _record(row: sqlite3.Row | tuple[Any, ...]) -> DatasetRecord:
    dataset_id, name, path, data_type, shape, description, tags, params, dlp = row
    parameters = json.loads(params)
    loading_plan = json.loads(dlp) if dlp is not None else None
    if not isinstance(parameters, Mapping) or not (loading_plan is None or isinstance(loading_plan, Mapping)):
        raise ValueError(f"dataset {dataset_id!r}: parameters or loading plan is not a JSON object")
    return DatasetRecord(
        dataset_id=dataset_id,
        name=name,
        path=path,
        data_type=data_type,
        shape=tuple(int(n) for n in json.loads(shape)),
        description=description,
        tags=tuple(str(t) for t in json.loads(tags)),
        dataset_parameters=freeze_mapping(parameters),
        data_loading_plan=freeze_mapping(loading_plan) if loading_plan is not None else None,
    )


class SqliteDatasetRegistry:
    """Datasets in the node database; ``get`` is the round's port, the rest is for the node owner.

    Ids are unique, and so are non-empty names. ``path`` is stored as given (the plan's
    ``load_data`` opens it), so registering a dataset on a path that does not exist yet is allowed.
    """

    def __init__(self, db: Database) -> None:
        """Use the stores' shared database ``db``."""
        self._db = db

    def get(self, dataset_id: str) -> Result[DatasetRecord | None, RoundError]:
        """The record for ``dataset_id``, or None; an unreadable database or row is DATASET_NOT_FOUND."""
        try:
            with self._db.transaction(write=False) as conn:
                row = conn.execute(_BY_ID, (dataset_id,)).fetchone()
            return Success(_record(row) if row is not None else None)
        except STORE_ERRORS as err:
            return Failure(
                store_error(
                    ErrorCode.DATASET_NOT_FOUND,
                    f"dataset registry read failed for {dataset_id!r}: {type(err).__name__}: {err}",
                    "The dataset registry of this node could not be read.",
                    retryable=True,
                )
            )

    def add(self, record: DatasetRecord) -> DatasetRecord:
        """Register ``record``; raise ``NodeAdminError`` on a duplicate id or name or a bad field."""
        if not record.dataset_id:
            raise NodeAdminError("a dataset needs a non-empty id")
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in record.shape):
            raise NodeAdminError(f"dataset shape must be non-negative integers, got {record.shape!r}")
        values = (
            record.dataset_id,
            record.name,
            record.path,
            record.data_type,
            json.dumps(list(record.shape)),
            record.description,
            json.dumps([str(t) for t in record.tags]),
            _json(record.dataset_parameters, "dataset_parameters"),
            _json(record.data_loading_plan, "data_loading_plan")
            if record.data_loading_plan is not None
            else None,
            now_iso(),
        )
        try:
            with self._db.transaction() as conn:
                clash = conn.execute(
                    "SELECT dataset_id, name FROM datasets WHERE dataset_id = ? OR (name = ? AND name <> '')",
                    (record.dataset_id, record.name),
                ).fetchone()
                if clash is not None:
                    what = (
                        f"id {record.dataset_id!r}"
                        if clash[0] == record.dataset_id
                        else f"name {record.name!r} (dataset {clash[0]!r})"
                    )
                    raise NodeAdminError(f"a dataset with {what} is already registered")
                conn.execute(
                    _INSERT,
                    values,
                )
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot register dataset {record.dataset_id!r}: {err}") from err
        return record

    def list(self) -> tuple[DatasetRecord, ...]:
        """Every registered dataset, oldest first."""
        try:
            with self._db.transaction(write=False) as conn:
                rows = conn.execute(_ALL).fetchall()
            return tuple(_record(row) for row in rows)
        except STORE_ERRORS as err:
            raise NodeAdminError(f"cannot list datasets: {err}") from err

    def remove(self, dataset_id: str) -> None:
        """Unregister ``dataset_id`` (its files are left alone); raise ``NodeAdminError`` if unknown."""
        try:
            with self._db.transaction() as conn:
                deleted = conn.execute("DELETE FROM datasets WHERE dataset_id = ?", (dataset_id,)).rowcount
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot remove dataset {dataset_id!r}: {err}") from err
        if deleted == 0:
            raise NodeAdminError(f"no dataset with id {dataset_id!r}")
