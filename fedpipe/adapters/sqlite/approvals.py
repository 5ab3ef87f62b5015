"""SqliteApprovalRegistry: the node owner's training-plan approvals (ApprovalRegistry port plus owner operations).

A plan is identified by the digest of its canonical form (``fedpipe.approval``), stored with the
algorithm and the canonical-form version that produced it. The reference's D15 defects are fixed:

* each algorithm name maps to its own hash function (BLAKE2B is blake2b);
* registering refuses a name, an id, or a source already registered under *any* stored
  algorithm (a real uniqueness check: one record per plan);
* a lookup matches hash, algorithm and canonical form together, so a digest made with one
  algorithm never matches a record made with another;
* digests do not depend on a minifier version;
* a source that does not parse is reported as such (PLAN_NOT_APPROVED with a syntax-error text),
  never as a download error.

The source text is kept in the database, so the owner can review it and ``rehash`` the registry
when changing algorithm without the original files. A plan that a round refused because it was
unknown is recorded as Pending (``record_refused``), source included, for the owner to review.
Owner operations find a plan by id, name, or digest (``SHA256:<hex>``, a unique prefix of at
least 8 hex digits will do), the form ``plans list`` shows.
"""

import re
import sqlite3
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from attrs import frozen
from returns.result import Failure, Result, Success

from fedpipe.adapters.sqlite.db import STORE_ERRORS, Database, NodeAdminError, now_iso, store_error
from fedpipe.approval import (
    CANONICAL_FORM,
    DEFAULT_ALGORITHM,
    HashAlgorithm,
    PendingPlan,
    PlanDigest,
    PlanSyntaxError,
    digest_text,
    plan_digest,
    plan_digests,
)
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import Approval

__all__ = ["PlanRecord", "SqliteApprovalRegistry"]

T = TypeVar("T")

_STORED = (Approval.APPROVED, Approval.REJECTED, Approval.PENDING)
_SELECT = (
    "SELECT plan_id, name, description, hash, algorithm, canonical_form, status, researcher_id, notes, "
    "date_registered, date_last_action FROM training_plans "
)
_BY_DIGEST = _SELECT + "WHERE hash = ? AND algorithm = ? AND canonical_form = ?"
_BY_ID = _SELECT + "WHERE plan_id = ?"
_BY_NAME = _SELECT + "WHERE name = ?"
_BY_DIGEST_PREFIX = _SELECT + "WHERE algorithm = ? AND substr(hash, 1, ?) = ? LIMIT 2"
_DIGEST_REF = re.compile(r"(?P<algorithm>[A-Z0-9_]+):(?P<hex>[0-9a-fA-F]{8,128})")
_ALL = _SELECT + "ORDER BY date_registered, plan_id"
_WITH_STATUS = _SELECT + "WHERE status = ? ORDER BY date_registered, plan_id"
_INSERT = (
    "INSERT INTO training_plans (plan_id, name, description, hash, algorithm, canonical_form, status, "
    "researcher_id, notes, date_registered, date_last_action, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@frozen(kw_only=True)
class PlanRecord:
    """One registered training plan, as the node owner lists it (the source is fetched separately)."""

    plan_id: str
    name: str
    description: str
    hash: str
    algorithm: HashAlgorithm
    canonical_form: str
    status: Approval
    researcher_id: str | None
    notes: str | None
    date_registered: str
    date_last_action: str

    def digest_text(self, *, short: bool = False) -> str:
        """The plan's digest as every fedpipe output writes it: ``SHA256:<hex>`` (``short``: 12 digits)."""
        return digest_text(self.algorithm, self.hash, short=short)


def _record(row: tuple[Any, ...]) -> PlanRecord:
    plan_id, name, description, digest, algorithm, canon, status, researcher, notes, registered, last = row
    return PlanRecord(
        plan_id=plan_id,
        name=name,
        description=description,
        hash=digest,
        algorithm=HashAlgorithm(algorithm),
        canonical_form=canon,
        status=Approval(status),
        researcher_id=researcher,
        notes=notes,
        date_registered=registered,
        date_last_action=last,
    )


def _syntax_failure(err: PlanSyntaxError) -> RoundError:
    return store_error(
        ErrorCode.PLAN_NOT_APPROVED,
        f"training plan source does not parse: {err.message} (line {err.line})",
        err.public(),
    )


def _stored_algorithms(conn: sqlite3.Connection) -> list[HashAlgorithm]:
    rows = conn.execute(
        "SELECT DISTINCT algorithm FROM training_plans WHERE canonical_form = ? ORDER BY algorithm",
        (CANONICAL_FORM,),
    ).fetchall()
    return [HashAlgorithm(r[0]) for r in rows]


def _find(conn: sqlite3.Connection, digests: Iterable[PlanDigest]) -> tuple[Any, ...] | None:
    for d in digests:
        row = conn.execute(
            _BY_DIGEST,
            (d.hexdigest, d.algorithm.value, d.canonical_form),
        ).fetchone()
        if row is not None:
            return tuple(row)
    return None


class SqliteApprovalRegistry:
    """Training-plan approvals in the node database; ``status`` is the round's port.

    Owner operations raise ``NodeAdminError``; a plan is referred to by id or, failing that, name.
    New records are hashed with ``algorithm``.
    """

    def __init__(self, db: Database, *, algorithm: HashAlgorithm = DEFAULT_ALGORITHM) -> None:
        """Use the shared database ``db``; hash new registrations with ``algorithm``."""
        self._db = db
        self.algorithm = HashAlgorithm(algorithm)

    def status(self, source: str) -> Result[Approval, RoundError]:
        """The status of the plan whose source is ``source``: NOT_REGISTERED when unknown.

        The source is hashed with every algorithm the registry holds records for and matched on
        (hash, algorithm, canonical form). A source that does not parse fails with a clear text.
        """
        try:
            with self._db.transaction(write=False) as conn:
                algorithms = _stored_algorithms(conn)
                digests = plan_digests(source, algorithms or [self.algorithm])
                if isinstance(digests, Failure):
                    return Failure(_syntax_failure(digests.failure()))
                row = _find(conn, digests.unwrap())
            return Success(Approval(row[6]) if row is not None else Approval.NOT_REGISTERED)
        except STORE_ERRORS as err:
            return Failure(
                store_error(
                    ErrorCode.PLAN_NOT_APPROVED,
                    f"approval registry read failed: {type(err).__name__}: {err}",
                    "The training plan approval registry of this node could not be read.",
                    retryable=True,
                )
            )

    def register(
        self,
        source: str,
        *,
        name: str | None = None,
        description: str = "",
        status: Approval = Approval.APPROVED,
        plan_id: str | None = None,
        researcher_id: str | None = None,
        notes: str | None = None,
    ) -> PlanRecord:
        """Register ``source`` with ``status`` (the owner registering a plan approves it by default).

        Refused with ``NodeAdminError``: a source that does not parse, NOT_REGISTERED as status,
        an id or name already used, or a plan already registered (same canonical form, whatever
        algorithm its record was hashed with).
        """
        if status not in _STORED:
            raise NodeAdminError(f"a registered plan is Approved, Rejected or Pending, not {status.value!r}")
        plan_id = plan_id or f"training_plan_{uuid.uuid4()}"
        name = name or plan_id
        try:
            with self._db.transaction() as conn:
                digests = plan_digests(source, [self.algorithm, *_stored_algorithms(conn)])
                if isinstance(digests, Failure):
                    err = digests.failure()
                    raise NodeAdminError(f"cannot register: {err.public()} ({err.message})")
                existing = _find(conn, digests.unwrap())
                if existing is not None:
                    raise NodeAdminError(
                        f"this training plan is already registered as {existing[1]!r} "
                        f"(id {existing[0]!r}, status {existing[6]})"
                    )
                clash = conn.execute(
                    "SELECT plan_id, name FROM training_plans WHERE plan_id IN (?, ?) OR name IN (?, ?)",
                    (plan_id, name, plan_id, name),
                ).fetchone()
                if clash is not None:
                    raise NodeAdminError(
                        f"a training plan with id or name {plan_id!r} / {name!r} already exists "
                        f"(id {clash[0]!r}, name {clash[1]!r})"
                    )
                digest = digests.unwrap()[0]
                now = now_iso()
                conn.execute(
                    _INSERT,
                    (
                        plan_id,
                        name,
                        description,
                        digest.hexdigest,
                        digest.algorithm.value,
                        digest.canonical_form,
                        status.value,
                        researcher_id,
                        notes,
                        now,
                        now,
                        source,
                    ),
                )
                row = conn.execute(_BY_ID, (plan_id,)).fetchone()
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot register training plan {name!r}: {err}") from err
        return _record(row)

    def record_refused(
        self, source: str, *, plan_class: str, researcher_id: str | None
    ) -> Result[PendingPlan, RoundError]:
        """Record the plan ``source`` a round refused as Pending, for the owner's review.

        The record is named after ``plan_class`` and its digest, and notes who sent it. A plan
        already registered (recorded by an earlier round, say) is returned as it is: one record
        per plan. A source that does not parse, or a store that cannot be written, is a failure
        (the round is refused all the same).
        """
        try:
            with self._db.transaction() as conn:
                digests = plan_digests(source, [self.algorithm, *_stored_algorithms(conn)])
                if isinstance(digests, Failure):
                    return Failure(_syntax_failure(digests.failure()))
                existing = _find(conn, digests.unwrap())
                if existing is None:
                    digest = digests.unwrap()[0]
                    plan_id = f"training_plan_{uuid.uuid4()}"
                    name = f"{plan_class}@{digest.text(short=True)}"
                    if conn.execute("SELECT 1 FROM training_plans WHERE name = ?", (name,)).fetchone():
                        name = plan_id  # an owner's plan already took the name
                    now = now_iso()
                    conn.execute(
                        _INSERT,
                        (
                            plan_id,
                            name,
                            f"refused by a round: class {plan_class}",
                            digest.hexdigest,
                            digest.algorithm.value,
                            digest.canonical_form,
                            Approval.PENDING.value,
                            researcher_id,
                            "recorded when a round asked for it unapproved",
                            now,
                            now,
                            source,
                        ),
                    )
                    existing = tuple(conn.execute(_BY_ID, (plan_id,)).fetchone())
            record = _record(existing)
        except STORE_ERRORS as err:
            return Failure(
                store_error(
                    ErrorCode.PLAN_NOT_APPROVED,
                    f"approval registry write failed: {type(err).__name__}: {err}",
                    "The training plan approval registry of this node could not be written.",
                    retryable=True,
                )
            )
        return Success(
            PendingPlan(
                plan_id=record.plan_id,
                digest=PlanDigest(
                    hexdigest=record.hash, algorithm=record.algorithm, canonical_form=record.canonical_form
                ),
            )
        )

    @staticmethod
    def _lookup(conn: sqlite3.Connection, ref: str) -> tuple[Any, ...] | None:
        row = conn.execute(_BY_ID, (ref,)).fetchone()
        if row is None:
            row = conn.execute(_BY_NAME, (ref,)).fetchone()
        if row is None and (match := _DIGEST_REF.fullmatch(ref.strip().rstrip("…"))):
            prefix = match["hex"].lower()
            rows = conn.execute(_BY_DIGEST_PREFIX, (match["algorithm"], len(prefix), prefix)).fetchall()
            if len(rows) > 1:
                raise NodeAdminError(f"{ref} matches several training plans: give more of the digest")
            row = rows[0] if rows else None
        return tuple(row) if row is not None else None

    def _row(self, conn: sqlite3.Connection, ref: str) -> tuple[Any, ...]:
        row = self._lookup(conn, ref)
        if row is None:
            raise NodeAdminError(f"no training plan with id or name {ref!r}")
        return row

    def find(self, source: str) -> PlanRecord | None:
        """The registered plan whose source is ``source`` (same canonical form), or None.

        Raises ``NodeAdminError`` for a source that does not parse.
        """

        def lookup(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            digests = plan_digests(source, _stored_algorithms(conn) or [self.algorithm])
            if isinstance(digests, Failure):
                raise NodeAdminError(f"the plan source does not parse: {digests.failure().message}")
            return _find(conn, digests.unwrap())

        row = self._read(lookup)
        return _record(row) if row is not None else None

    def get(self, ref: str) -> PlanRecord | None:
        """The plan with id (or else name) ``ref``, or None."""
        row = self._read(lambda conn: self._lookup(conn, ref))
        return _record(row) if row is not None else None

    def source_of(self, ref: str) -> str:
        """The stored source text of plan ``ref`` (for review)."""
        return str(
            self._read(
                lambda conn: conn.execute(
                    "SELECT source FROM training_plans WHERE plan_id = ?", (self._row(conn, ref)[0],)
                ).fetchone()[0]
            )
        )

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            with self._db.transaction(write=False) as conn:
                return fn(conn)
        except STORE_ERRORS as err:
            raise NodeAdminError(f"cannot read the approval registry: {err}") from err

    def set_status(self, ref: str, status: Approval, notes: str | None = None) -> PlanRecord:
        """Set plan ``ref``'s status (and notes, when given); setting the same status again is allowed."""
        if status not in _STORED:
            raise NodeAdminError(f"a registered plan is Approved, Rejected or Pending, not {status!r}")
        try:
            with self._db.transaction() as conn:
                plan_id = self._row(conn, ref)[0]
                conn.execute(
                    "UPDATE training_plans SET status = ?, notes = COALESCE(?, notes), date_last_action = ? "
                    "WHERE plan_id = ?",
                    (status.value, notes, now_iso(), plan_id),
                )
                row = self._row(conn, plan_id)
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot update training plan {ref!r}: {err}") from err
        return _record(row)

    def approve(self, ref: str, notes: str | None = None) -> PlanRecord:
        """Approve plan ``ref``."""
        return self.set_status(ref, Approval.APPROVED, notes)

    def reject(self, ref: str, notes: str | None = None) -> PlanRecord:
        """Reject plan ``ref``."""
        return self.set_status(ref, Approval.REJECTED, notes)

    def set_pending(self, ref: str, notes: str | None = None) -> PlanRecord:
        """Put plan ``ref`` back to Pending (awaiting review)."""
        return self.set_status(ref, Approval.PENDING, notes)

    def remove(self, ref: str) -> None:
        """Delete plan ``ref``; raise ``NodeAdminError`` when unknown."""
        try:
            with self._db.transaction() as conn:
                conn.execute("DELETE FROM training_plans WHERE plan_id = ?", (self._row(conn, ref)[0],))
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot remove training plan {ref!r}: {err}") from err

    def list(self, status: Approval | None = None) -> tuple[PlanRecord, ...]:
        """Every registered plan (only those with ``status`` when given), oldest first."""
        query, args = (_WITH_STATUS, (status.value,)) if status is not None else (_ALL, ())
        return self._read(lambda conn: tuple(_record(tuple(r)) for r in conn.execute(query, args).fetchall()))

    def rehash(self, algorithm: HashAlgorithm | None = None) -> int:
        """Re-hash every record with ``algorithm`` (default: the registry's) and the current canonical form.

        Use after changing algorithm or upgrading fedpipe to a new canonical form; returns the
        number of records updated. All or nothing.
        """
        target = HashAlgorithm(algorithm or self.algorithm)
        try:
            with self._db.transaction() as conn:
                rows = conn.execute("SELECT plan_id, source FROM training_plans").fetchall()
                changed = 0
                for plan_id, source in rows:
                    digest = plan_digest(source, target)
                    if isinstance(digest, Failure):
                        raise NodeAdminError(f"plan {plan_id!r} no longer parses: {digest.failure().message}")
                    d = digest.unwrap()
                    fields = (d.hexdigest, d.algorithm.value, d.canonical_form)
                    changed += conn.execute(
                        "UPDATE training_plans SET hash = ?, algorithm = ?, canonical_form = ? "
                        "WHERE plan_id = ? AND NOT (hash = ? AND algorithm = ? AND canonical_form = ?)",
                        (*fields, plan_id, *fields),
                    ).rowcount
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot rehash the approval registry: {err}") from err
        return changed
