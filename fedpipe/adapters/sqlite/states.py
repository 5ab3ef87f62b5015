"""SqliteStateStore: node state chained per job, saved atomically, old states pruned (StateStore port).

A state is one ``node_states`` row (ids, round, the previous state's id, the format version) and
its named blobs in ``node_state_blobs`` (``plan_state``: the codec bytes of the plan's state;
``split``: the train/test split as JSON), each cut into ``CHUNK_BYTES`` rows because SQLite
caps a single value at about 1 GB. A save writes the row, every blob and the pruning of
the job's older states in one SQLite transaction: a crash at any moment leaves either the new
state complete or the database as it was (the reference wrote files next to a TinyDB entry and
never cleaned up: D18).

Formats: ``NodeState.version`` is ``"<major>[.<minor>]"``; a stored state whose major version is
not ``STATE_FORMAT_MAJOR`` is not used: ``load`` logs a warning and answers None, so the round
goes on from fresh state instead of failing.
"""

import json
import logging
import sqlite3
from collections.abc import Iterator, Mapping
from typing import Any

from attrs import frozen
from returns.result import Failure, Result, Success

from fedpipe.adapters.sqlite.db import STORE_ERRORS, Database, NodeAdminError, now_iso, store_error
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import NodeState, SplitRecord

__all__ = ["CHUNK_BYTES", "STATE_FORMAT_MAJOR", "SqliteStateStore", "StateSummary"]

log = logging.getLogger("fedpipe.node")

STATE_FORMAT_MAJOR = "1"

CHUNK_BYTES = 64 * 1024 * 1024
"""Blobs are stored in chunks of this size: SQLite caps one value at about 1 GB, optimizer states do not."""

_LIST = (
    "SELECT s.job_id, s.state_id, s.round, s.previous_state_id, s.version, s.saved_at, "
    "COALESCE(SUM(LENGTH(b.data)), 0) FROM node_states s LEFT JOIN node_state_blobs b ON b.state_seq = s.seq "
)
_LIST_ALL = _LIST + "GROUP BY s.seq ORDER BY s.seq"
_LIST_JOB = _LIST + "WHERE s.job_id = ? GROUP BY s.seq ORDER BY s.seq"
_INSERT_STATE = (
    "INSERT INTO node_states (job_id, state_id, round, previous_state_id, version, saved_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


@frozen(kw_only=True)
class StateSummary:
    """A saved state without its blobs (what the owner lists)."""

    job_id: str
    state_id: str
    round: int
    previous_state_id: str | None
    version: str
    saved_at: str
    size_bytes: int


def _split_blob(split: SplitRecord) -> bytes:
    return json.dumps(
        {
            "dataset_id": split.dataset_id,
            "n_samples": split.n_samples,
            "test_ratio": split.test_ratio,
            "test_indices": list(split.test_indices),
        },
        separators=(",", ":"),
        allow_nan=False,
    ).encode()


def _split_of(blob: bytes) -> SplitRecord:
    data = json.loads(blob)
    fields = ("dataset_id", "n_samples", "test_ratio", "test_indices")
    if not isinstance(data, Mapping) or any(f not in data for f in fields):
        raise ValueError("split record is not a JSON object with the split fields")
    indices, ratio = data["test_indices"], data["test_ratio"]
    if (
        not isinstance(data["dataset_id"], str)
        or type(data["n_samples"]) is not int
        or type(ratio) not in (int, float)
        or not isinstance(indices, list)
        or any(type(i) is not int for i in indices)
    ):
        raise ValueError("split record has fields of the wrong type")
    return SplitRecord(
        dataset_id=data["dataset_id"],
        n_samples=data["n_samples"],
        test_ratio=float(ratio),
        test_indices=tuple(indices),
    )


def _chunks(data: bytes, size: int) -> Iterator[memoryview]:
    """``data`` in slices of ``size`` bytes without copying (one empty slice for empty data).

    >>> [bytes(c) for c in _chunks(b"abcde", 2)], [bytes(c) for c in _chunks(b"", 2)]
    ([b'ab', b'cd', b'e'], [b''])
    """
    view = memoryview(data)
    for offset in range(0, max(len(data), 1), size):
        yield view[offset : offset + size]


def _major(version: str) -> str:
    return version.split(".", 1)[0]


class SqliteStateStore:
    """Node states in the node database; keeps the ``keep_per_job`` newest states of each job."""

    def __init__(self, db: Database, *, keep_per_job: int = 3, chunk_bytes: int = CHUNK_BYTES) -> None:
        """Use the shared database ``db``; prune each job down to ``keep_per_job`` states on save."""
        if keep_per_job < 1 or chunk_bytes < 1:
            raise ValueError("keep_per_job and chunk_bytes must be at least 1")
        self._db = db
        self.keep_per_job = keep_per_job
        self.chunk_bytes = chunk_bytes

    def load(self, job_id: str, state_id: str) -> Result[NodeState | None, RoundError]:
        """The state ``state_id`` of ``job_id``; None when absent, pruned, or of another format version."""
        try:
            with self._db.transaction(write=False) as conn:
                row = conn.execute(
                    "SELECT seq, round, previous_state_id, version FROM node_states "
                    "WHERE job_id = ? AND state_id = ?",
                    (job_id, state_id),
                ).fetchone()
                if row is None:
                    return Success(None)
                seq, round_number, previous, version = row
                chunks: dict[str, list[bytes]] = {}
                for name, data in conn.execute(
                    "SELECT name, data FROM node_state_blobs WHERE state_seq = ? ORDER BY name, chunk", (seq,)
                ):
                    chunks.setdefault(name, []).append(data)
            blobs = {name: b"".join(parts) for name, parts in chunks.items()}
            if _major(version) != STATE_FORMAT_MAJOR:
                log.warning(
                    "node state %r of job %r has format version %s, this node reads %s.x: not used",
                    state_id,
                    job_id,
                    version,
                    STATE_FORMAT_MAJOR,
                )
                return Success(None)
            split = _split_of(blobs["split"]) if "split" in blobs else None
            return Success(
                NodeState(
                    state_id=state_id,
                    job_id=job_id,
                    round=int(round_number),
                    previous_state_id=previous,
                    plan_state=blobs.get("plan_state", b""),
                    split=split,
                    version=version,
                )
            )
        except STORE_ERRORS as err:
            return Failure(
                store_error(
                    ErrorCode.STATE_LOAD_FAILED,
                    f"cannot read node state {state_id!r} of job {job_id!r}: {type(err).__name__}: {err}",
                    retryable=True,
                )
            )

    def save(self, state: NodeState) -> Result[None, RoundError]:
        """Store ``state`` (replacing a state of the same job and id) and prune the job, all in one transaction."""
        try:
            blobs: list[tuple[str, bytes]] = [("plan_state", bytes(state.plan_state))]
            if state.split is not None:
                blobs.append(("split", _split_blob(state.split)))
            row = (state.job_id, state.state_id, state.round, state.previous_state_id, state.version, now_iso())
            with self._db.transaction() as conn:
                try:
                    cursor = conn.execute(_INSERT_STATE, row)
                except sqlite3.IntegrityError:  # the id was saved before (rounds use new ids): replace it
                    conn.execute(
                        "DELETE FROM node_states WHERE job_id = ? AND state_id = ?",
                        (state.job_id, state.state_id),
                    )
                    cursor = conn.execute(_INSERT_STATE, row)
                conn.executemany(
                    "INSERT INTO node_state_blobs (state_seq, name, chunk, data) VALUES (?, ?, ?, ?)",
                    (
                        (cursor.lastrowid, name, i, chunk)
                        for name, data in blobs
                        for i, chunk in enumerate(_chunks(data, self.chunk_bytes))
                    ),
                )
                conn.execute(
                    "DELETE FROM node_states WHERE job_id = ? AND seq NOT IN "
                    "(SELECT seq FROM node_states WHERE job_id = ? ORDER BY seq DESC LIMIT ?)",
                    (state.job_id, state.job_id, self.keep_per_job),
                )
            return Success(None)
        except STORE_ERRORS as err:
            return Failure(
                store_error(
                    ErrorCode.STATE_SAVE_FAILED,
                    f"cannot save node state {state.state_id!r} of job {state.job_id!r}: "
                    f"{type(err).__name__}: {err}",
                    retryable=True,
                )
            )

    def list(self, job_id: str | None = None) -> tuple[StateSummary, ...]:
        """The saved states (of ``job_id`` when given), oldest first."""
        query, args = (_LIST_JOB, (job_id,)) if job_id is not None else (_LIST_ALL, ())
        try:
            with self._db.transaction(write=False) as conn:
                rows = conn.execute(query, args).fetchall()
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot list node states: {err}") from err
        return tuple(_summary(r) for r in rows)

    def chain(self, job_id: str, state_id: str) -> tuple[str, ...]:
        """The ids from ``state_id`` back through its predecessors still stored (newest first)."""
        ids: list[str] = []
        current: str | None = state_id
        try:
            with self._db.transaction(write=False) as conn:
                while current is not None and current not in ids:
                    row = conn.execute(
                        "SELECT previous_state_id FROM node_states WHERE job_id = ? AND state_id = ?",
                        (job_id, current),
                    ).fetchone()
                    if row is None:
                        break
                    ids.append(current)
                    current = row[0]
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot read node states: {err}") from err
        return tuple(ids)

    def remove_job(self, job_id: str) -> int:
        """Delete every state of ``job_id``; return how many there were."""
        try:
            with self._db.transaction() as conn:
                return int(conn.execute("DELETE FROM node_states WHERE job_id = ?", (job_id,)).rowcount)
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot remove the states of job {job_id!r}: {err}") from err


def _summary(row: tuple[Any, ...]) -> StateSummary:
    job_id, state_id, round_number, previous, version, saved_at, size = row
    return StateSummary(
        job_id=job_id,
        state_id=state_id,
        round=int(round_number),
        previous_state_id=previous,
        version=version,
        saved_at=saved_at,
        size_bytes=int(size),
    )
