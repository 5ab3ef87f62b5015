"""Pinned peer identity keys (the owner's trust list) and the LOM key store of fedpipe's own federations.

``SqlitePinnedPeers`` is the owner's list (``fedpipe peers add|list|remove``): for each peer node,
the public identity key its owner handed over, checked to be a P-256 key, with its fingerprint.
A peer is pinned once: pinning another key for it needs ``remove`` first, so that a key is never
replaced by mistake. ``SqliteLomKeys`` is the ``LomKeys`` port over that list, the LOM contexts of
``SqliteSecaggKeys`` (the table Fed-BioMed set-ups fill too) and this node's pending offers
(``lom_pending_offers``: the ephemeral key and signed offer of an agreement in progress, dropped
once the context is stored).
"""

import json
import sqlite3

from attrs import frozen
from returns.result import Failure, Result, Success

from fedpipe.adapters.sqlite.db import STORE_ERRORS, Database, NodeAdminError, now_iso, store_error
from fedpipe.adapters.sqlite.secagg import MAX_ID_CHARS, DhContext, SqliteSecaggKeys
from fedpipe.errors import ErrorCode, RoundError, is_printable, printable
from fedpipe.ports import PairwiseSecrets, PendingOffer
from fedpipe.secagg.identity import fingerprint, load_public_key, public_pem

__all__ = ["PinnedPeer", "SqliteLomKeys", "SqlitePinnedPeers"]


@frozen(kw_only=True)
class PinnedPeer:
    """A peer node's identity key as its owner pinned it: the PEM, its fingerprint and when."""

    node_id: str
    public_pem: bytes
    fingerprint: str
    date_added: str


def _id_problem(node_id: object) -> str | None:
    if not isinstance(node_id, str) or not node_id:
        return "a node id must be a non-empty string"
    if len(node_id) > MAX_ID_CHARS or not is_printable(node_id):
        return f"node id '{printable(str(node_id), 80)}' must be at most {MAX_ID_CHARS} printable characters"
    return None


class SqlitePinnedPeers:
    """The peer identity keys pinned by this node's owner (table ``pinned_peers``)."""

    def __init__(self, db: Database) -> None:
        """Use the shared database ``db``."""
        self._db = db

    def add(self, node_id: str, pem: bytes) -> PinnedPeer:
        """Pin ``pem`` (a P-256 public key, PEM) for ``node_id``; the record, with its fingerprint.

        Pinning the same key again changes nothing. Raise ``NodeAdminError`` (one line) for a bad
        id or key, for a peer already pinned with another key (``remove`` it first), or when the
        database cannot be written.
        """
        if (problem := _id_problem(node_id)) is not None:
            raise NodeAdminError(problem)
        loaded = load_public_key(pem)
        if isinstance(loaded, Failure):
            raise NodeAdminError(
                f"cannot pin a key for '{printable(node_id, 80)}': {loaded.failure().reason}"
            )
        key = loaded.unwrap()
        text, print_ = public_pem(key).decode("ascii"), fingerprint(key)
        try:
            with self._db.transaction() as conn:
                row = conn.execute(
                    "SELECT fingerprint, date_added FROM pinned_peers WHERE node_id = ?", (node_id,)
                ).fetchone()
                if row is not None:
                    if row[0] != print_:
                        raise NodeAdminError(
                            f"peer '{printable(node_id, 80)}' is already pinned with key {row[0]}; "
                            "remove it first to pin another key"
                        )
                    added = str(row[1])
                else:
                    added = now_iso()
                    conn.execute(
                        "INSERT INTO pinned_peers (node_id, public_pem, fingerprint, date_added) VALUES (?, ?, ?, ?)",
                        (node_id, text, print_, added),
                    )
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot pin the key of '{printable(node_id, 80)}': {err}") from err
        return PinnedPeer(
            node_id=node_id, public_pem=text.encode("ascii"), fingerprint=print_, date_added=added
        )

    def list(self) -> tuple[PinnedPeer, ...]:
        """Every pinned peer, by node id; ``NodeAdminError`` when the database cannot be read."""
        try:
            with self._db.transaction(write=False) as conn:
                rows = conn.execute(
                    "SELECT node_id, public_pem, fingerprint, date_added FROM pinned_peers ORDER BY node_id"
                ).fetchall()
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot read the pinned peers: {err}") from err
        return tuple(
            PinnedPeer(
                node_id=r[0],
                public_pem=str(r[1]).encode("ascii", "replace"),
                fingerprint=r[2],
                date_added=r[3],
            )
            for r in rows
        )

    def remove(self, node_id: str) -> bool:
        """Unpin ``node_id``; True if it was pinned. ``NodeAdminError`` when the database cannot be written.

        Contexts already agreed with that peer stay usable: the key is only checked at agreement.
        """
        try:
            with self._db.transaction() as conn:
                deleted = conn.execute("DELETE FROM pinned_peers WHERE node_id = ?", (node_id,)).rowcount
        except sqlite3.Error as err:
            raise NodeAdminError(f"cannot unpin '{printable(node_id, 80)}': {err}") from err
        return bool(deleted)

    def get(self, node_id: str) -> Result[PinnedPeer | None, RoundError]:
        """The pinned key of ``node_id`` (None when none); a failure when the database cannot be read."""
        try:
            with self._db.transaction(write=False) as conn:
                row = conn.execute(
                    "SELECT public_pem, fingerprint, date_added FROM pinned_peers WHERE node_id = ?",
                    (node_id,),
                ).fetchone()
        except STORE_ERRORS as err:
            return Failure(
                store_error(
                    ErrorCode.SECAGG_CONFIG,
                    f"pinned peers: cannot read {node_id!r}: {type(err).__name__}: {err}",
                    "The pinned peer keys of this node could not be read.",
                    retryable=True,
                )
            )
        if row is None:
            return Success(None)
        pem = str(row[0]).encode("ascii", "replace")
        return Success(PinnedPeer(node_id=node_id, public_pem=pem, fingerprint=row[1], date_added=row[2]))


class SqliteLomKeys:
    """The ``LomKeys`` port: pinned keys from ``peers``, agreed contexts in ``secagg_keys``' DH table."""

    def __init__(self, peers: SqlitePinnedPeers, secagg_keys: SqliteSecaggKeys, db: Database) -> None:
        """Read pinned keys from ``peers``, keep contexts with ``secagg_keys`` and pending offers in ``db``."""
        self._peers = peers
        self._keys = secagg_keys
        self._db = db

    def pinned_key(self, node_id: str) -> Result[bytes | None, RoundError]:
        """The PEM pinned for ``node_id``, or None."""
        return self._peers.get(node_id).map(lambda peer: None if peer is None else peer.public_pem)

    def pairwise(self, secagg_id: str, job_id: str) -> Result[PairwiseSecrets | None, RoundError]:
        """The agreed context ``secagg_id`` of ``job_id``, or None; a failure if another job's or unreadable."""
        return self._keys.dh_context(secagg_id, job_id).map(
            lambda ctx: (
                None
                if ctx is None
                else PairwiseSecrets(
                    secagg_id=ctx.secagg_id, job_id=ctx.job_id, parties=ctx.parties, pairwise=ctx.pairwise
                )
            )
        )

    def store_pairwise(self, secrets: PairwiseSecrets) -> Result[None, RoundError]:
        """Store the context (replacing one of the same id) and drop its pending offer; a failure if it is
        malformed or cannot be written."""
        try:
            self._keys.add_dh_context(
                DhContext(
                    secagg_id=secrets.secagg_id,
                    job_id=secrets.job_id,
                    parties=secrets.parties,
                    pairwise=secrets.pairwise,
                )
            )
        except NodeAdminError as err:
            return Failure(
                store_error(
                    ErrorCode.SECAGG_CONFIG,
                    f"cannot store LOM context {secrets.secagg_id!r}: {err}",
                    "The node could not store the agreed LOM context.",
                )
            )
        try:
            with self._db.transaction() as conn:
                conn.execute("DELETE FROM lom_pending_offers WHERE secagg_id = ?", (secrets.secagg_id,))
        except sqlite3.Error:
            pass  # the context is stored; a stale offer is ignored once it is (and replaced by a new set-up)
        return Success(None)

    def pending_offer(self, secagg_id: str) -> Result[PendingOffer | None, RoundError]:
        """This node's pending offer for ``secagg_id``, or None; a failure when it cannot be read."""
        try:
            with self._db.transaction(write=False) as conn:
                row = conn.execute(
                    "SELECT job_id, parties, ephemeral_key, offer FROM lom_pending_offers WHERE secagg_id = ?",
                    (secagg_id,),
                ).fetchone()
            if row is None:
                return Success(None)
            parties = json.loads(row[1])
            if not isinstance(parties, list) or not all(isinstance(p, str) for p in parties):
                raise ValueError("parties is not a JSON list of strings")
            return Success(
                PendingOffer(
                    secagg_id=secagg_id,
                    job_id=str(row[0]),
                    parties=tuple(parties),
                    ephemeral_key=bytes.fromhex(row[2]),
                    offer=str(row[3]).encode("ascii"),
                )
            )
        except (*STORE_ERRORS, TypeError, RecursionError) as err:
            return Failure(
                store_error(
                    ErrorCode.SECAGG_CONFIG,
                    f"cannot read the pending LOM offer {secagg_id!r}: {type(err).__name__}: {err}",
                    "The LOM key agreement state of this node could not be read.",
                )
            )

    def keep_pending_offer(self, offer: PendingOffer) -> Result[None, RoundError]:
        """Store this node's offer (replacing one of the same id) before it is published."""
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO lom_pending_offers "
                    "(secagg_id, job_id, parties, ephemeral_key, offer, date_added) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        offer.secagg_id,
                        offer.job_id,
                        json.dumps(list(offer.parties)),
                        offer.ephemeral_key.hex(),
                        offer.offer.decode("ascii"),
                        now_iso(),
                    ),
                )
        except (sqlite3.Error, UnicodeDecodeError) as err:
            return Failure(
                store_error(
                    ErrorCode.SECAGG_CONFIG,
                    f"cannot store the pending LOM offer {offer.secagg_id!r}: {type(err).__name__}: {err}",
                    "The LOM key agreement state of this node could not be stored.",
                    retryable=True,
                )
            )
        return Success(None)
