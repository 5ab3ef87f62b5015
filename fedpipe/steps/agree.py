"""LOM key agreement in fedpipe's own federations: signed X25519 offers through the relay, on first use.

A LOM round names its context (``secagg_dh_id``) and parties. The first time a node sees that
context, ``agree_keys`` agrees one pairwise secret with every other party (the protocol is in
``fedpipe.secagg.identity``): it draws an ephemeral X25519 key, signs an offer of it with the node's
identity key, publishes it on the relay and collects every other party's offer within
``LomPorts.agreement_seconds``. Each peer's offer must verify under the key the node's owner pinned
for that peer; any refusal names the peer and stores no secret. The secrets are then stored with the
parties, and later rounds of the context find them there and run no agreement. The node keeps its
ephemeral key and offer until then (``LomKeys.keep_pending_offer``): a round retried after a
timeout, or redelivered to a restarted node, offers the same key again, which the peers may have
read already, instead of one that would not match theirs.

The relay (the server) sees the offers but cannot forge one, so it cannot stand in the middle; it
can withhold offers, which makes the agreement time out with one clear error.
"""

from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from returns.result import Failure, Result, Success

from fedpipe.compose import Step, declare
from fedpipe.context import LomSetup, RoundContext
from fedpipe.errors import ErrorCode, RoundError, printable
from fedpipe.ports import Clock, LomPorts, PairwiseSecrets, PendingOffer
from fedpipe.secagg.identity import (
    decode_offer,
    encode_offer,
    ephemeral_public,
    load_public_key,
    offer_message,
    pairwise_secret,
    verify_offer,
)

__all__ = ["POLL_SECONDS", "agree_keys"]

STEP = "agree_keys"
POLL_SECONDS = 10.0
"""The longest single wait on the relay; the whole agreement is bounded by ``agreement_seconds``."""
_SHOWN_MISSING = 5


def _refuse(public: str, detail: str = "", *, retryable: bool = False) -> Failure[RoundError]:
    return Failure(
        RoundError(
            code=ErrorCode.SECAGG_CONFIG,
            step=STEP,
            detail=detail or public,
            public=public,
            retryable=retryable,
        )
    )


def _same_parties(stored: tuple[str, ...], asked: tuple[str, ...]) -> bool:
    return len(stored) == len(asked) and set(stored) == set(asked)


def _peer(node_id: str) -> str:
    return printable(node_id, 80)


def agree_keys(
    lom: LomPorts | None,
    clock: Clock,
    *,
    new_ephemeral: Callable[[], X25519PrivateKey] = X25519PrivateKey.generate,
    poll_seconds: float = POLL_SECONDS,
) -> Step:
    """Make sure this node holds the pairwise secrets of the round's LOM context, agreeing them if not.

    Does nothing for a plain, Joye-Libert or validation round. A stored context must have the
    request's parties. Otherwise, in order: every peer must have a pinned identity key; this node
    keeps its signed offer (the pending one of this set-up if it has one), publishes it and
    collects the others' until all parties have one or the time is up (``clock`` measures it);
    each peer's offer must be for this context, job and party list and verify under its pinned
    key; then the secrets are stored. Every refusal is one ``SECAGG_CONFIG`` error that names the
    peer at fault and leaves no context stored; a timeout (retryable) names the parties whose
    offers never came. ``new_ephemeral`` draws the ephemeral keys (a seeded one in tests).
    """

    @declare(needs="lom")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        setup = ctx.lom
        if setup is None or not ctx.request.training:
            return Success(ctx)
        if lom is None:
            return _refuse("This node cannot agree LOM contexts: it has no key relay.")
        found = lom.keys.pairwise(setup.secagg_id, ctx.request.job_id)
        if isinstance(found, Failure):
            return found
        stored = found.unwrap()
        if stored is not None:
            if _same_parties(stored.parties, setup.parties):
                return Success(ctx)
            return _refuse(
                f"The parties of this round do not match those LOM context `{printable(setup.secagg_id, 80)}` "
                "was agreed with."
            )
        return _agree(ctx, setup, lom)

    def _agree(ctx: RoundContext, setup: LomSetup, lom: LomPorts) -> Result[RoundContext, RoundError]:
        own = ctx.settings.node_id
        job_id = ctx.request.job_id
        peers = [p for p in setup.parties if p != own]
        pinned = {}
        for peer in peers:
            got = lom.keys.pinned_key(peer)
            if isinstance(got, Failure):
                return got
            pem = got.unwrap()
            if pem is None:
                return _refuse(
                    f"No identity key is pinned for peer `{_peer(peer)}`: its owner's public key must be "
                    "pinned on this node (`fedpipe peers add`) before a LOM round."
                )
            key = load_public_key(pem)
            if isinstance(key, Failure):
                return _refuse(
                    f"The identity key pinned for peer `{_peer(peer)}` is unusable.",
                    f"pinned key of {peer!r}: {key.failure().reason}",
                )
            pinned[peer] = key.unwrap()
        mine = _own_offer(ctx, setup, lom)
        if isinstance(mine, Failure):
            return mine
        ephemeral, blob = mine.unwrap()
        collected = _collect(setup, own, blob, lom)
        if isinstance(collected, Failure):
            return collected
        offers = collected.unwrap()
        secrets: dict[str, bytes] = {}
        for peer in peers:
            decoded = decode_offer(offers[peer])
            if isinstance(decoded, Failure):
                return _refuse(
                    f"The key offer of peer `{_peer(peer)}` is malformed: {decoded.failure().reason}.",
                )
            problem = verify_offer(
                decoded.unwrap(),
                secagg_id=setup.secagg_id,
                job_id=job_id,
                parties=setup.parties,
                node_id=peer,
                pinned=pinned[peer],
            )
            if problem is not None:
                return _refuse(f"The key offer of peer `{_peer(peer)}` is refused: {problem.reason}.")
            secret = pairwise_secret(
                ephemeral,
                decoded.unwrap().ephemeral,
                secagg_id=setup.secagg_id,
                own_id=own,
                peer_id=peer,
                parties=setup.parties,
            )
            if isinstance(secret, Failure):
                return _refuse(
                    f"The key offer of peer `{_peer(peer)}` is refused: {secret.failure().reason}."
                )
            secrets[peer] = secret.unwrap()
        record = PairwiseSecrets(
            secagg_id=setup.secagg_id, job_id=job_id, parties=setup.parties, pairwise=secrets
        )
        return lom.keys.store_pairwise(record).map(
            lambda _: ctx.noted(
                f"secagg: LOM context {printable(setup.secagg_id, 80)} agreed with {len(peers)} peer(s)"
            )
        )

    def _own_offer(
        ctx: RoundContext, setup: LomSetup, lom: LomPorts
    ) -> Result[tuple[X25519PrivateKey, bytes], RoundError]:
        """This node's ephemeral key and signed offer: the pending ones of this set-up, else new ones,
        kept before they are published (a retried round must offer what the peers may have read)."""
        job_id = ctx.request.job_id
        found = lom.keys.pending_offer(setup.secagg_id)
        if isinstance(found, Failure):
            return found
        pending = found.unwrap()
        if pending is not None and pending.job_id == job_id and pending.parties == setup.parties:
            try:
                return Success((X25519PrivateKey.from_private_bytes(pending.ephemeral_key), pending.offer))
            except ValueError:
                pass  # an unreadable key: offer a new one (the relay refuses it if the old one is there)
        ephemeral = new_ephemeral()
        offer: dict[str, Any] = {
            "secagg_id": setup.secagg_id,
            "job_id": job_id,
            "parties": setup.parties,
            "node_id": ctx.settings.node_id,
            "ephemeral": ephemeral_public(ephemeral),
        }
        signed = lom.identity.sign(offer_message(**offer))
        if isinstance(signed, Failure):
            return signed
        blob = encode_offer(**offer, signature=signed.unwrap())
        keep = PendingOffer(
            secagg_id=setup.secagg_id,
            job_id=job_id,
            parties=setup.parties,
            ephemeral_key=ephemeral.private_bytes_raw(),
            offer=blob,
        )
        return lom.keys.keep_pending_offer(keep).map(lambda _: (ephemeral, blob))

    def _collect(
        setup: LomSetup, own: str, blob: bytes, lom: LomPorts
    ) -> Result[Mapping[str, bytes], RoundError]:
        deadline = clock.perf_counter() + lom.agreement_seconds
        published = lom.relay.publish(setup.secagg_id, own, blob)
        if isinstance(published, Failure):
            return published
        while True:
            left = deadline - clock.perf_counter()
            got = lom.relay.collect(
                setup.secagg_id, count=len(setup.parties), wait=max(0.0, min(poll_seconds, left))
            )
            if isinstance(got, Failure):
                return got
            offers = {p: got.unwrap()[p] for p in setup.parties if p in got.unwrap()}
            mine = offers.get(own)
            if mine is None:  # the relay lost it (a restarted server): post it again
                again = lom.relay.publish(setup.secagg_id, own, blob)
                if isinstance(again, Failure):
                    return again
            elif mine != blob:
                return _refuse(
                    f"The relay holds another key offer of this node for LOM context "
                    f"`{printable(setup.secagg_id, 80)}`; set up a new context."
                )
            elif len(offers) == len(setup.parties):
                return Success(offers)
            if left <= 0:
                missing = [p for p in setup.parties if p not in offers and p != own]
                shown = ", ".join(f"`{_peer(p)}`" for p in missing[:_SHOWN_MISSING])
                more = f" and {len(missing) - _SHOWN_MISSING} more" if len(missing) > _SHOWN_MISSING else ""
                return _refuse(
                    f"LOM key agreement for context `{printable(setup.secagg_id, 80)}` timed out after "
                    f"{lom.agreement_seconds:g} s: no key offer from {shown}{more}.",
                    retryable=True,
                )

    return step
