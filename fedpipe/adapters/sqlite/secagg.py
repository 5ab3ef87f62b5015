"""SqliteSecaggKeys: secure-aggregation key shares, biprimes, DH contexts, channel keys and used rounds.

Integers of any size are stored as decimal text (SQLite integers stop at 64 bits). Each
``claim_tau`` is a committed row under a (secagg id, round) primary key, so a round used once is
refused for that key forever after, across restarts and processes: no operation that stores,
replaces or removes key material touches those rows.

The Fed-BioMed 6.4.1 set-ups store here what they agree on: a Joye-Libert key share with its
biprime (``put_server_key``), the LOM pairwise secrets of a context (``add_dh_context``) and this
node's private key of the overlay channel with each peer (``add_channel_key``). A researcher that
sets up the same secagg id again replaces what it set up before, as a set-up is a fresh agreement.
"""

import base64
import binascii
import json
import re
import sqlite3
import types
from collections.abc import Mapping, Sequence
from typing import Final

from attrs import field, frozen
from returns.result import Failure, Result, Success

from fedpipe.adapters.sqlite.db import STORE_ERRORS, Database, NodeAdminError, now_iso, store_error
from fedpipe.errors import ErrorCode, RoundError, is_printable, printable
from fedpipe.ports import Biprime, ServerKeyShare

__all__ = ["DH_SECRET_BYTES", "MAX_CHANNEL_KEY_BYTES", "MAX_ID_CHARS", "DhContext", "SqliteSecaggKeys"]

DH_SECRET_BYTES: Final = 32
"""Length of one LOM pairwise secret (Fed-BioMed derives it with ConcatKDF-SHA256, 32 bytes)."""

MAX_CHANNEL_KEY_BYTES: Final = 4096
"""Longest channel key PEM accepted; a P-256 PKCS8 PEM is about 240 bytes."""

MAX_ID_CHARS: Final = 256
"""Longest secagg, job or node id accepted in a DH context or a channel (Fed-BioMed's are ~43)."""

# One unencrypted PKCS8 PEM block, as ``cryptography`` writes it (64-column base64 lines).
_PKCS8_PEM: Final = re.compile(
    rb"-----BEGIN PRIVATE KEY-----\r?\n((?:[A-Za-z0-9+/=]{1,76}\r?\n)+)-----END PRIVATE KEY-----(?:\r?\n)?"
)


def _frozen_secrets(secrets: Mapping[str, bytes]) -> Mapping[str, bytes]:
    """A read-only copy, so a frozen context cannot change through the dict it was built from."""
    return types.MappingProxyType(dict(secrets))


@frozen(kw_only=True)
class DhContext:
    """The LOM (Diffie-Hellman) context ``secagg_id`` of job ``job_id``: one 32-byte secret per peer.

    ``parties`` are the node ids of the context, this node included; ``pairwise`` maps every other
    party this node agreed a key with to the secret they share. Equality compares the secrets too;
    the hash leaves them out.
    """

    secagg_id: str
    job_id: str
    parties: tuple[str, ...]
    pairwise: Mapping[str, bytes] = field(converter=_frozen_secrets, repr=False, hash=False)

    @property
    def peers(self) -> tuple[str, ...]:
        """The parties this node shares a secret with, in the order of ``parties``."""
        return tuple(p for p in self.parties if p in self.pairwise)


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


def _unreadable(what: str, err: Exception) -> RoundError:
    # Stored data that does not decode stays broken however often it is read: not retryable.
    return store_error(
        ErrorCode.SECAGG_CONFIG,
        f"secagg key store: {what} is unreadable: {type(err).__name__}: {err}",
        "The secure-aggregation key material of this node could not be read.",
    )


def _id_problem(kind: str, value: object) -> str | None:
    """Why ``value`` cannot be an id (a sentence), or None when it can."""
    if not isinstance(value, str):
        return f"a {kind} must be a string, not {type(value).__name__}"
    if not value:
        return f"a {kind} must not be empty"
    if len(value) > MAX_ID_CHARS:
        return f"{kind} '{printable(value)}' is longer than {MAX_ID_CHARS} characters"
    if not is_printable(value):
        return f"{kind} '{printable(value)}' holds control or invisible characters"
    return None


def _dh_problem(ctx: DhContext) -> str | None:
    """Why ``ctx`` cannot be stored (one sentence), or None when it is well formed."""
    for kind, value in (("secagg id", ctx.secagg_id), ("job id", ctx.job_id)):
        if (problem := _id_problem(kind, value)) is not None:
            return problem
    if not isinstance(ctx.parties, tuple) or len(ctx.parties) < 2:
        return "a DH context needs at least two parties"
    for party in ctx.parties:
        if (problem := _id_problem("party id", party)) is not None:
            return problem
    if len(set(ctx.parties)) != len(ctx.parties):
        return "the parties of a DH context must be distinct"
    if not ctx.pairwise:
        return "a DH context needs the secret of at least one peer"
    for peer, secret in ctx.pairwise.items():
        if (problem := _id_problem("peer id", peer)) is not None:
            return problem
        if peer not in ctx.parties:
            return f"peer '{printable(peer)}' is not one of the parties"
        if not isinstance(secret, bytes) or len(secret) != DH_SECRET_BYTES:
            size = f"{len(secret)} bytes" if isinstance(secret, bytes) else type(secret).__name__
            return f"the secret of peer '{printable(peer)}' must be {DH_SECRET_BYTES} bytes, not {size}"
    if len(ctx.pairwise) == len(ctx.parties):
        return "a DH context holds no secret for this node itself: one party must have none"
    return None


def _decode_dh(secagg_id: str, job_id: str, parties: str, secrets: str) -> DhContext:
    """The context of a stored row; ``ValueError`` if the row does not decode to a well-formed one."""
    stored = json.loads(secrets)
    if not isinstance(stored, dict) or not all(isinstance(v, str) for v in stored.values()):
        raise ValueError("secrets is not a JSON object of hex strings")
    ctx = DhContext(
        secagg_id=secagg_id,
        job_id=job_id,
        parties=_parties(parties),
        pairwise={peer: bytes.fromhex(text) for peer, text in stored.items()},
    )
    if (problem := _dh_problem(ctx)) is not None:
        raise ValueError(problem)
    return ctx


def _pem_problem(pem: object) -> str | None:
    """Why ``pem`` is not one unencrypted PKCS8 PEM private key of bounded size, or None."""
    if not isinstance(pem, bytes):
        return f"a channel key must be PEM bytes, not {type(pem).__name__}"
    if len(pem) > MAX_CHANNEL_KEY_BYTES:
        return f"a channel key must be at most {MAX_CHANNEL_KEY_BYTES} bytes, not {len(pem)}"
    match = _PKCS8_PEM.fullmatch(pem)
    if match is None:
        return "a channel key must be one PKCS8 PEM block ('-----BEGIN PRIVATE KEY-----')"
    try:
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
    except binascii.Error:
        return "the channel key PEM does not hold valid base64"
    if not der.startswith(b"\x30"):  # a DER SEQUENCE, as every PKCS8 structure is
        return "the channel key PEM does not hold a PKCS8 structure"
    return None


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

    def put_server_key(self, share: ServerKeyShare, biprime: Biprime) -> None:
        """Store a key share and the biprime of its context in one transaction, replacing either.

        The Fed-BioMed Joye-Libert set-up stores both under the context's secagg id, so
        ``biprime.secagg_id`` must equal ``share.secagg_id``; the biprime row records the share's
        parties. Rounds the previous share of that id claimed stay claimed. Raise
        ``NodeAdminError`` if a field is bad or the database cannot be written (nothing is stored).
        """
        for kind, value in (("secagg id", share.secagg_id), ("job id", share.job_id)):
            if (problem := _id_problem(kind, value)) is not None:
                raise NodeAdminError(problem)
        if len(share.parties) < 2 or not all(isinstance(p, str) and p for p in share.parties):
            raise NodeAdminError("a key share needs the researcher and at least one node as parties")
        if biprime.secagg_id != share.secagg_id:
            raise NodeAdminError(
                f"biprime '{printable(biprime.secagg_id)}' is not stored under the id of its key share "
                f"'{printable(share.secagg_id)}'"
            )
        if biprime.biprime <= 1 or biprime.max_keysize < 1:
            raise NodeAdminError("a biprime must be > 1 with a positive max key size")
        parties = json.dumps(list(share.parties))
        added = now_iso()
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO secagg_server_keys (secagg_id, job_id, parties, key, date_added) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (share.secagg_id, share.job_id, parties, str(int(share.key)), added),
                )
                conn.execute(
                    "INSERT OR REPLACE INTO secagg_biprimes (secagg_id, biprime, max_keysize, parties, date_added) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (share.secagg_id, str(int(biprime.biprime)), biprime.max_keysize, parties, added),
                )
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot store key share '{printable(share.secagg_id)}': {err}") from err

    def dh_context(self, secagg_id: str, job_id: str) -> Result[DhContext | None, RoundError]:
        """The LOM context ``secagg_id``; None if absent; SECAGG_CONFIG if another job's or unreadable.

        A stored row that does not decode to a well-formed context (JSON, hex, 32-byte secrets,
        peers among the parties) is a failure, never an exception.
        """
        try:
            with self._db.transaction(write=False) as conn:
                row = conn.execute(
                    "SELECT job_id, parties, secrets FROM secagg_dh_contexts WHERE secagg_id = ?",
                    (secagg_id,),
                ).fetchone()
        except STORE_ERRORS as err:
            return Failure(_read_failed(f"DH context {secagg_id!r}", err))
        if row is None:
            return Success(None)
        owner, parties, secrets = row
        if owner != job_id:
            return Failure(
                store_error(
                    ErrorCode.SECAGG_CONFIG,
                    f"DH context {secagg_id!r} belongs to job {owner!r}, not {job_id!r}",
                    "This secure-aggregation context belongs to another experiment on this node.",
                )
            )
        try:
            return Success(_decode_dh(secagg_id, owner, parties, secrets))
        except (ValueError, TypeError, RecursionError) as err:  # RecursionError: JSON nested too deep
            return Failure(_unreadable(f"DH context {secagg_id!r}", err))

    def add_dh_context(self, ctx: DhContext) -> None:
        """Store the LOM context ``ctx``, replacing one of the same secagg id.

        Ids must be non-empty printable text of at most ``MAX_ID_CHARS`` characters, the parties
        distinct (at least two), every secret exactly 32 bytes and its peer one of the parties, and
        one party (this node) without a secret. Rounds claimed under that secagg id stay claimed.
        Raise ``NodeAdminError`` (one line) if a field is bad or the database cannot be written.
        """
        if (problem := _dh_problem(ctx)) is not None:
            raise NodeAdminError(problem)
        secrets = json.dumps({peer: ctx.pairwise[peer].hex() for peer in ctx.peers})
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO secagg_dh_contexts (secagg_id, job_id, parties, secrets, date_added) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (ctx.secagg_id, ctx.job_id, json.dumps(list(ctx.parties)), secrets, now_iso()),
                )
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot store DH context '{printable(ctx.secagg_id)}': {err}") from err

    def remove_dh_context(self, secagg_id: str) -> bool:
        """Delete the LOM context ``secagg_id``; True if there was one. Its claimed rounds stay.

        Raise ``NodeAdminError`` if the database cannot be written.
        """
        try:
            with self._db.transaction() as conn:
                deleted = conn.execute(
                    "DELETE FROM secagg_dh_contexts WHERE secagg_id = ?", (secagg_id,)
                ).rowcount
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot remove DH context '{printable(secagg_id)}': {err}") from err
        return bool(deleted)

    def channel_keys(self) -> dict[str, bytes]:
        """This node's private channel key (PKCS8 PEM) for every peer it has an overlay channel with.

        Raise ``NodeAdminError`` if the database cannot be read or a stored key is not a PEM key.
        """
        try:
            with self._db.transaction(write=False) as conn:
                rows = conn.execute(
                    "SELECT peer_id, key_pem FROM overlay_channels ORDER BY peer_id"
                ).fetchall()
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot read the overlay channel keys: {err}") from err
        keys: dict[str, bytes] = {}
        for peer, text in rows:
            pem = text.encode("ascii", "replace") if isinstance(text, str) else text
            if not isinstance(peer, str) or (problem := _pem_problem(pem)) is not None:
                raise NodeAdminError(
                    f"the stored channel key of peer '{printable(str(peer))}' is unreadable: "
                    f"{problem or 'bad peer id'}"
                )
            keys[peer] = pem
        return keys

    def add_channel_key(self, peer_id: str, pem: bytes) -> None:
        """Store this node's private key (unencrypted PKCS8 PEM) for the channel with ``peer_id``, replacing one.

        Raise ``NodeAdminError`` if ``peer_id`` is not a printable id, ``pem`` is not one PEM
        private key block or is over ``MAX_CHANNEL_KEY_BYTES``, or the database cannot be written.
        """
        if (problem := _id_problem("peer id", peer_id) or _pem_problem(pem)) is not None:
            raise NodeAdminError(problem)
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO overlay_channels (peer_id, key_pem, date_added) VALUES (?, ?, ?)",
                    (peer_id, pem.decode("ascii"), now_iso()),
                )
        except sqlite3.Error as err:
            raise NodeAdminError(
                f"cannot store the channel key of peer '{printable(peer_id)}': {err}"
            ) from err

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
