"""Fakes of the LOM key-agreement ports: an in-memory relay, key store and identity, and a federation of them."""

import threading
from collections.abc import Mapping, Sequence

from attrs import define, field
from cryptography.hazmat.primitives.asymmetric import ec
from returns.result import Failure, Result, Success

from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import LomPorts, PairwiseSecrets, PendingOffer
from fedpipe.secagg.identity import new_identity_key, public_pem, sign
from fedpipe.testing.fakes import FakeClock

__all__ = ["InMemoryIdentity", "InMemoryLomKeys", "InMemorySecaggRelay", "lom_federation"]


def _error(detail: str, public: str) -> RoundError:
    return RoundError(code=ErrorCode.SECAGG_CONFIG, step="", detail=detail, public=public)


@define
class InMemorySecaggRelay:
    """The server's relay in a dict: the first offer of a node in a set-up stays, as on the server.

    With a ``clock`` (single-threaded tests), a ``collect`` that finds too few offers lets ``wait``
    seconds pass on it instead of waiting; without one it waits for real, so that nodes in
    threads can meet. ``withheld`` node ids publish into the void (a node whose offer never comes).
    """

    clock: FakeClock | None = None
    offers: dict[str, dict[str, bytes]] = field(factory=dict)
    withheld: set[str] = field(factory=set)
    published: list[tuple[str, str]] = field(factory=list)
    _changed: threading.Condition = field(factory=threading.Condition)

    def publish(self, secagg_id: str, node_id: str, blob: bytes) -> Result[None, RoundError]:
        """Keep the offer unless the node has another one there (then a failure, as the server's 409)."""
        with self._changed:
            self.published.append((secagg_id, node_id))
            if node_id in self.withheld:
                return Success(None)
            held = self.offers.setdefault(secagg_id, {}).setdefault(node_id, blob)
            if held != blob:
                return Failure(
                    _error(
                        "relay: another offer of this node",
                        "The relay holds another key offer of this node for this LOM context; set up a new context.",
                    )
                )
            self._changed.notify_all()
        return Success(None)

    def collect(self, secagg_id: str, *, count: int, wait: float) -> Result[Mapping[str, bytes], RoundError]:
        """The offers of ``secagg_id`` once ``count`` are there, or after ``wait`` (real or fake) seconds."""
        with self._changed:
            if len(self.offers.get(secagg_id, {})) < count:
                if self.clock is not None:
                    self.clock.advance(wait)
                else:
                    self._changed.wait_for(lambda: len(self.offers.get(secagg_id, {})) >= count, timeout=wait)
            return Success(dict(self.offers.get(secagg_id, {})))

    def replace(self, secagg_id: str, node_id: str, blob: bytes) -> None:
        """Put ``blob`` in the place of ``node_id``'s offer (what a dishonest relay could do)."""
        with self._changed:
            self.offers.setdefault(secagg_id, {})[node_id] = blob
            self._changed.notify_all()


@define
class InMemoryLomKeys:
    """Pinned peer keys, agreed contexts and pending offers in dicts (``stored`` counts the contexts written)."""

    pinned: dict[str, bytes] = field(factory=dict)
    contexts: dict[str, PairwiseSecrets] = field(factory=dict)
    pending: dict[str, PendingOffer] = field(factory=dict)
    stored: int = 0

    def pinned_key(self, node_id: str) -> Result[bytes | None, RoundError]:
        """The pinned PEM, or None."""
        return Success(self.pinned.get(node_id))

    def pairwise(self, secagg_id: str, job_id: str) -> Result[PairwiseSecrets | None, RoundError]:
        """The context, None if absent, a failure if it belongs to another job."""
        found = self.contexts.get(secagg_id)
        if found is not None and found.job_id != job_id:
            return Failure(
                _error(
                    f"LOM context {secagg_id!r} belongs to another job",
                    "This secure-aggregation context belongs to another experiment on this node.",
                )
            )
        return Success(found)

    def store_pairwise(self, secrets: PairwiseSecrets) -> Result[None, RoundError]:
        """Keep (or replace) the context."""
        self.contexts[secrets.secagg_id] = secrets
        self.pending.pop(secrets.secagg_id, None)
        self.stored += 1
        return Success(None)

    def pending_offer(self, secagg_id: str) -> Result[PendingOffer | None, RoundError]:
        """The pending offer, or None."""
        return Success(self.pending.get(secagg_id))

    def keep_pending_offer(self, offer: PendingOffer) -> Result[None, RoundError]:
        """Keep (or replace) the pending offer."""
        self.pending[offer.secagg_id] = offer
        return Success(None)


@define
class InMemoryIdentity:
    """A node identity key held in memory (a fresh P-256 key unless one is given)."""

    key: ec.EllipticCurvePrivateKey = field(factory=new_identity_key, repr=False)

    def sign(self, message: bytes) -> Result[bytes, RoundError]:
        """ECDSA-P256-SHA256 (DER)."""
        return Success(sign(self.key, message))

    def public_pem(self) -> bytes:
        """The public key, PEM."""
        return public_pem(self.key)


def lom_federation(
    node_ids: Sequence[str],
    *,
    relay: InMemorySecaggRelay | None = None,
    agreement_seconds: float = 60.0,
) -> dict[str, LomPorts]:
    """``LomPorts`` per node over one relay, every node's owner having pinned every other node's key."""
    shared = relay if relay is not None else InMemorySecaggRelay()
    identities = {n: InMemoryIdentity() for n in node_ids}
    return {
        n: LomPorts(
            relay=shared,
            keys=InMemoryLomKeys(pinned={p: identities[p].public_pem() for p in node_ids if p != n}),
            identity=identities[n],
            agreement_seconds=agreement_seconds,
        )
        for n in node_ids
    }
