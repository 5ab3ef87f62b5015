"""SqliteSecaggKeys: secure-aggregation key shares, biprimes and used rounds (SecaggKeys port plus owner operations).

Integers of any size are stored as decimal text (SQLite integers stop at 64 bits). Each
``claim_tau`` is a committed row under a (secagg id, round) primary key, so a round used once is
refused for that key forever after, across restarts and processes.
"""

import json
import sqlite3
from collections.abc import Sequence

from returns.result import Failure, Result, Success

from fedpipe.adapters.sqlite.db import STORE_ERRORS, Database, NodeAdminError, now_iso, store_error
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import Biprime, ServerKeyShare

__all__ = ["SqliteSecaggKeys"]


def _read_failed(what: str, err: Exception) -> RoundError:
    return store_error(
        ErrorCode.SECAGG_CONFIG,
        f"secagg key store: cannot read {what}: {type(err).__name__}: {err}",
        "The secure-aggregation key material of this node could not be read.",
        retryable=True,
    )


def _parties(text: str) -> tuple[str, ...]:
    parties = json.loads(text)
    if not isinstance(parties, list) or not all(isinstance(p, str) for p in parties):
        raise ValueError("parties is not a JSON list of strings")
    return tuple(parties)


class SqliteSecaggKeys:
    """Key material in the node database; the port reads it, the owner (or the setup protocol) adds it."""

    def __init__(self, db: Database) -> None:
        """Use the shared database ``db``."""
        self._db = db

    def server_key(self, secagg_id: str, job_id: str) -> Result[ServerKeyShare | None, RoundError]:
        """The key share ``secagg_id``; None if absent; SECAGG_CONFIG if it belongs to another job."""
        try:
            with self._db.transaction(write=False) as conn:
                row = conn.execute(
                    "SELECT job_id, parties, key FROM secagg_server_keys WHERE secagg_id = ?", (secagg_id,)
                ).fetchone()
            if row is None:
                return Success(None)
            owner, parties, key = row
            if owner != job_id:
                return Failure(
                    store_error(
                        ErrorCode.SECAGG_CONFIG,
                        f"key share {secagg_id!r} belongs to job {owner!r}, not {job_id!r}",
                    )
                )
            return Success(
                ServerKeyShare(secagg_id=secagg_id, job_id=owner, parties=_parties(parties), key=int(key))
            )
        except STORE_ERRORS as err:
            return Failure(_read_failed(f"key share {secagg_id!r}", err))

    def biprime(self, secagg_id: str) -> Result[Biprime | None, RoundError]:
        """The biprime ``secagg_id``, or None."""
        try:
            with self._db.transaction(write=False) as conn:
                row = conn.execute(
                    "SELECT biprime, max_keysize FROM secagg_biprimes WHERE secagg_id = ?", (secagg_id,)
                ).fetchone()
            if row is None:
                return Success(None)
            return Success(Biprime(secagg_id=secagg_id, biprime=int(row[0]), max_keysize=int(row[1])))
        except STORE_ERRORS as err:
            return Failure(_read_failed(f"biprime {secagg_id!r}", err))

    def claim_tau(self, secagg_id: str, round_number: int) -> Result[None, RoundError]:
        """Durably record that key ``secagg_id`` encrypted round ``round_number``; refuse a second claim."""
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    "INSERT INTO secagg_tau_claims (secagg_id, round, claimed_at) VALUES (?, ?, ?)",
                    (secagg_id, round_number, now_iso()),
                )
            return Success(None)
        except sqlite3.IntegrityError:
            return Failure(
                RoundError(
                    code=ErrorCode.SECAGG_CONFIG,
                    step="",
                    detail=f"(key {secagg_id!r}, round {round_number}) already used for an encryption",
                    public="This node already encrypted an update for this secagg context and round.",
                )
            )
        except STORE_ERRORS as err:
            return Failure(
                store_error(
                    ErrorCode.SECAGG_CONFIG,
                    f"secagg key store: cannot record round {round_number} of key {secagg_id!r}: "
                    f"{type(err).__name__}: {err}",
                    "The secure-aggregation key material of this node could not be updated.",
                    retryable=True,
                )
            )

    def add_server_key(self, share: ServerKeyShare) -> None:
        """Store this node's key share; raise ``NodeAdminError`` if ``secagg_id`` is taken or fields are bad."""
        if len(share.parties) < 2 or not all(isinstance(p, str) and p for p in share.parties):
            raise NodeAdminError("a key share needs the researcher and at least one node as parties")
        self._insert(
            "INSERT INTO secagg_server_keys (secagg_id, job_id, parties, key, date_added) VALUES (?, ?, ?, ?, ?)",
            (share.secagg_id, share.job_id, json.dumps(list(share.parties)), str(int(share.key)), now_iso()),
            f"key share {share.secagg_id!r}",
        )

    def add_biprime(self, biprime: Biprime, parties: Sequence[str] | None = None) -> None:
        """Store a biprime (``parties`` None for a default one); raise ``NodeAdminError`` if the id is taken."""
        if biprime.biprime <= 1 or biprime.max_keysize < 1:
            raise NodeAdminError("a biprime must be > 1 with a positive max key size")
        self._insert(
            "INSERT INTO secagg_biprimes (secagg_id, biprime, max_keysize, parties, date_added) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                biprime.secagg_id,
                str(int(biprime.biprime)),
                biprime.max_keysize,
                json.dumps(list(parties)) if parties is not None else None,
                now_iso(),
            ),
            f"biprime {biprime.secagg_id!r}",
        )

    def _insert(self, sql: str, values: tuple[object, ...], what: str) -> None:
        try:
            with self._db.transaction() as conn:
                conn.execute(sql, values)
        except sqlite3.IntegrityError as err:
            raise NodeAdminError(f"{what} is already stored") from err
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot store {what}: {err}") from err

    def remove_server_key(self, secagg_id: str) -> None:
        """Delete a key share; raise ``NodeAdminError`` if absent.

        Its used-round records stay: were the same share stored again under the same id, a
        round it already encrypted must still be refused.
        """
        self._delete("secagg_server_keys", secagg_id, "key share")

    def remove_biprime(self, secagg_id: str) -> None:
        """Delete a biprime; raise ``NodeAdminError`` if absent."""
        self._delete("secagg_biprimes", secagg_id, "biprime")

    def _delete(self, table: str, secagg_id: str, what: str) -> None:
        try:
            with self._db.transaction() as conn:
                deleted = conn.execute(f"DELETE FROM {table} WHERE secagg_id = ?", (secagg_id,)).rowcount  # noqa: S608  # table is one of two constants
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot remove {what} {secagg_id!r}: {err}") from err
        if deleted == 0:
            raise NodeAdminError(f"no {what} {secagg_id!r}")

    def claimed_rounds(self, secagg_id: str) -> tuple[int, ...]:
        """The rounds key ``secagg_id`` has encrypted, ascending."""
        try:
            with self._db.transaction(write=False) as conn:
                rows = conn.execute(
                    "SELECT round FROM secagg_tau_claims WHERE secagg_id = ? ORDER BY round", (secagg_id,)
                ).fetchall()
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot read used rounds of {secagg_id!r}: {err}") from err
        return tuple(int(r[0]) for r in rows)
