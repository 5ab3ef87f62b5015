"""Secure aggregation in a Fed-BioMed 6.4.1 federation: the set-ups, and the round's secagg steps.

A Fed-BioMed researcher sets secure aggregation up with one request per node and scheme, before
the first round, and the nodes talk to each other through it (``OverlayMessage``, see
``fedpipe.fedbiomed.overlay``):

- Joye-Libert: ``AdditiveSSSetupRequest`` -> each node draws a user key, shares it additively
  with the other parties and answers ``AdditiveSSSetupReply{share}``, the sum of its own share
  and those it received; the researcher's server key is minus the sum of the replies. The node
  keeps its user key and 6.4.1's default biprime (public, shipped in the package) in its store.
- LOM: ``SecaggRequest{element=1}`` -> one ECDH agreement per peer; the node keeps the pairwise
  secrets and answers ``SecaggReply{success}``.

``SecaggSetups`` drives those set-ups on the node's dispatcher thread: it feeds ``Overlay``,
persists what it produces (channel keys at once, the key material when a set-up completes) and
answers the researcher; a set-up that has not completed within ``SETUP_TIMEOUT_SECONDS`` (6.4.1's
researcher gives up after 60 s) is dropped and answered with an error.

Each round then carries ``secagg_arguments`` (scheme, context id, parties, ``secagg_random``,
clipping range). ``check_secagg``, ``start_masks`` and ``encrypt_update`` here take the standard
steps' places by name in ``fedbiomed_round``: the update is flattened in the order of the
parameters the researcher sent, quantised and weighted by the sample size as 6.4.1's researcher
decodes it, and encrypted under tau = the round number from index 0, with no fedpipe-only slot
(compatible packing, no checksum). The encryption factor, ``[secagg_random]`` encrypted as its own
one-value vector, also starts at index 0: that is where 6.4.1's researcher checks it (its
"insecure validation", on by default), and it reuses the masks of the first update values, so
whoever sees both ciphertexts learns the first packed values of this node's update (Joye-Libert:
the first 30 or so weighted values; LOM: the first one). The owner turns it off with
``insecure_validation=False`` (``fedpipe node --fedbiomed ... --no-secagg-validation``); a
researcher whose validation is on then refuses the round with its own clear message.
"""

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Final, Protocol

import numpy as np
import torch
from attrs import define, evolve, field, frozen
from returns.result import Failure, Result, Success

from fedpipe.adapters.sqlite.secagg import DhContext
from fedpipe.compose import Step, require
from fedpipe.context import RoundContext
from fedpipe.errors import ErrorCode, RoundError, printable
from fedpipe.fedbiomed.messages import PROTOCOL_VERSION, Message
from fedpipe.fedbiomed.overlay import DhSecrets, Overlay, SharedKey
from fedpipe.ports import Biprime, Clock, SecaggCrypter, SecaggKeys, ServerKeyShare
from fedpipe.request import is_identifier_text
from fedpipe.secagg.lom import LomCrypter

__all__ = [
    "DEFAULT_BIPRIME",
    "SETUP_TIMEOUT_SECONDS",
    "FedbiomedSecagg",
    "Scheme",
    "SecaggSetups",
    "SecaggStore",
    "check_secagg",
    "encrypt_update",
    "secagg_of",
    "start_masks",
]

log = logging.getLogger("fedpipe.node")

DEFAULT_BIPRIME: Final = int(
    "1588209088092717166716598806133661046778133412554878341543039097611072152835699955238174284029879626"
    "4142939503234330534334195096686745827781257506502220312054770612749327293945565801888211223004277316"
    "3870472621818892994896895819790062496734944602899772583591514631486212290112369502692304700112819186"
    "167541107"
)
"""The 1024-bit biprime N that Fed-BioMed 6.4.1 ships (``default_biprimes/biprime0.json``) and
that its researcher and nodes use for every Joye-Libert context. Public: N's security rests on
nobody knowing its factors."""

SETUP_TIMEOUT_SECONDS: Final = 60.0
"""A set-up not completed by then is dropped and answered with an error (the researcher's limit)."""

_STEP_CHECK = "check_secagg"
_STEP_ENCRYPT = "encrypt_update"
_MAX_PARTIES: Final = 1024
_SETUP_ERRNUM: Final = "FB318"


class Scheme(StrEnum):
    """The secure-aggregation schemes of a Fed-BioMed federation (``secagg_scheme`` 1 and 2)."""

    JOYE_LIBERT = "joye-libert"
    LOM = "lom"


_SCHEME_OF_VALUE: Final = {1: Scheme.JOYE_LIBERT, 2: Scheme.LOM}
_CONTEXT_KEY: Final = {Scheme.JOYE_LIBERT: "secagg_servkey_id", Scheme.LOM: "secagg_dh_id"}


@frozen(kw_only=True)
class FedbiomedSecagg:
    """The ``secagg_arguments`` of a secure train request, checked.

    ``context_id`` is the set-up's secagg id (``secagg_servkey_id`` or ``secagg_dh_id``);
    ``random`` is None when the researcher does not validate; ``clipping_range`` None means 3.
    """

    scheme: Scheme
    context_id: str
    parties: tuple[str, ...]
    random: float | None
    clipping_range: int | None


def _config_error(public: str, detail: str = "") -> RoundError:
    return RoundError(code=ErrorCode.SECAGG_CONFIG, step=_STEP_CHECK, detail=detail or public, public=public)


def secagg_of(arguments: Mapping[str, Any] | None) -> Result[FedbiomedSecagg | None, RoundError]:
    """The checked secure-aggregation arguments of a train request; None for a plain round.

    Refused as 6.4.1 refuses them, with one line: an unknown scheme, a clipping range that is not
    an int, fewer than two parties, a missing context id; and, beyond 6.4.1, non-printable or
    duplicate ids and a ``secagg_random`` that is not a finite number.

    >>> secagg_of({"secagg_scheme": 2, "secagg_dh_id": "s", "parties": ["A", "B"],
    ...            "secagg_random": 0.5, "secagg_clipping_range": None}).unwrap().scheme
    <Scheme.LOM: 'lom'>
    >>> secagg_of({"secagg_scheme": 7, "parties": ["A", "B"]}).failure().public
    'Bad secure-aggregation scheme in the request: 7.'
    """
    if not arguments:
        return Success(None)
    value = arguments.get("secagg_scheme")
    scheme = _SCHEME_OF_VALUE.get(value) if type(value) is int else None
    if scheme is None:
        return Failure(
            _config_error(f"Bad secure-aggregation scheme in the request: {printable(repr(value), 40)}.")
        )
    clipping = arguments.get("secagg_clipping_range")
    if clipping is not None and (type(clipping) is not int or clipping <= 0):
        return Failure(_config_error("`secagg_clipping_range` must be a positive integer or null."))
    parties = arguments.get("parties")
    if (
        not isinstance(parties, list)
        or not 2 <= len(parties) <= _MAX_PARTIES
        or not all(is_identifier_text(p) for p in parties)
        or len(set(parties)) != len(parties)
    ):
        return Failure(
            _config_error("The secure-aggregation parties must be at least two distinct node ids.")
        )
    context_id = arguments.get(_CONTEXT_KEY[scheme])
    if not is_identifier_text(context_id):
        return Failure(_config_error(f"The request names no `{_CONTEXT_KEY[scheme]}`."))
    random = arguments.get("secagg_random")
    if random is not None and (
        type(random) not in (int, float) or not math.isfinite(random) or abs(random) > (clipping or 3)
    ):
        return Failure(_config_error("`secagg_random` must be a finite number within the clipping range."))
    return Success(
        FedbiomedSecagg(
            scheme=scheme,
            context_id=str(context_id),
            parties=tuple(parties),
            random=None if random is None else float(random),
            clipping_range=clipping,
        )
    )


class SecaggStore(SecaggKeys, Protocol):
    """The node store of Fed-BioMed set-up results (``SqliteSecaggKeys`` in production)."""

    def dh_context(self, secagg_id: str, job_id: str) -> Result[DhContext | None, RoundError]:
        """The LOM pairwise secrets of ``secagg_id`` for ``job_id``; None when absent."""
        ...

    def add_dh_context(self, ctx: DhContext) -> None:
        """Store (or replace) a LOM context; raises ``NodeAdminError``."""
        ...

    def put_server_key(self, share: ServerKeyShare, biprime: Biprime) -> None:
        """Store (or replace) a JL user key and its biprime together; raises ``NodeAdminError``."""
        ...

    def remove_dh_context(self, secagg_id: str) -> bool:
        """Delete a LOM context; True when one was removed."""
        ...

    def remove_server_key(self, secagg_id: str) -> None:
        """Delete a JL key share."""
        ...

    def claimed_rounds(self, secagg_id: str) -> tuple[int, ...]:
        """The rounds already encrypted under ``secagg_id``."""
        ...

    def channel_keys(self) -> dict[str, bytes]:
        """This node's channel private keys per peer (PEM)."""
        ...

    def add_channel_key(self, peer_id: str, pem: bytes) -> None:
        """Store this node's key for the channel with ``peer_id``; raises ``NodeAdminError``."""
        ...


# --- the round's steps ----------------------------------------------------------------------


def _same_parties(stored: Sequence[str], asked: Sequence[str]) -> bool:
    return set(stored) == set(asked) and len(stored) == len(asked)


def check_secagg(secagg: FedbiomedSecagg | None, store: SecaggStore | None) -> Step:
    """The node's secure-aggregation rules for a Fed-BioMed request, then the set-up's presence.

    As 6.4.1: a node that forces secure aggregation refuses a plain request; a node with it off
    refuses a secure one; the context must exist for this experiment and name the same parties,
    this node among them. The key material is read again when the update is encrypted.
    """

    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        settings = ctx.settings
        if secagg is None:
            if settings.force_secure_aggregation:
                return Failure(
                    _config_error(
                        "The node requires secure aggregation, but the request does not ask for it."
                    )
                )
            return Success(ctx)
        if not settings.secure_aggregation:
            return Failure(_config_error("Secure aggregation is not activated on the node."))
        if settings.node_id not in secagg.parties:
            return Failure(_config_error("This node is not a party of the secure-aggregation request."))
        if store is None:
            return Failure(_config_error("This node keeps no secure-aggregation contexts."))
        return _parties_of(secagg, store, ctx.request.job_id).bind(
            lambda parties: (
                Success(ctx)
                if _same_parties(parties, secagg.parties)
                else Failure(
                    _config_error(
                        f"The parties of this round do not match those of the secure-aggregation context "
                        f"`{secagg.context_id}`."
                    )
                )
            )
        )

    return step


def _parties_of(
    secagg: FedbiomedSecagg, store: SecaggStore, job_id: str
) -> Result[tuple[str, ...], RoundError]:
    missing = _config_error(
        f"The secure-aggregation context `{secagg.context_id}` is not set up on this node; "
        "run the set-up again (a new experiment or `secagg.setup(force=True)`)."
    )
    if secagg.scheme is Scheme.LOM:
        return store.dh_context(secagg.context_id, job_id).bind(
            lambda found: Success(found.parties) if found is not None else Failure(missing)
        )
    return store.server_key(secagg.context_id, job_id).bind(
        lambda found: Success(found.parties[1:]) if found is not None else Failure(missing)
    )


def _parameter_count(params: Mapping[str, Any]) -> int:
    return int(sum(t.numel() for t in params.values() if isinstance(t, torch.Tensor)))


def start_masks(
    secagg: FedbiomedSecagg | None,
    store: SecaggStore | None,
    crypter: SecaggCrypter,
    params: Mapping[str, Any],
) -> Step:
    """Joye-Libert: have the crypter compute this round's masks while the plan trains (LOM needs none)."""

    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        if (
            secagg is None
            or store is None
            or secagg.scheme is not Scheme.JOYE_LIBERT
            or not ctx.request.training
        ):
            return Success(ctx)
        key = store.server_key(secagg.context_id, ctx.request.job_id).value_or(None)
        biprime = store.biprime(secagg.context_id).value_or(None)
        if key is not None and biprime is not None:
            crypter.start_masks(
                key=key, biprime=biprime, round_number=ctx.request.round, n_values=_parameter_count(params)
            )
        return Success(ctx)

    return step


def _encrypt_error(detail: str, public: str) -> RoundError:
    return RoundError(code=ErrorCode.ENCRYPTION_FAILED, step=_STEP_ENCRYPT, detail=detail, public=public)


def _flat(weights: Any, names: Sequence[str]) -> Result[np.ndarray, RoundError]:
    """The update as 6.4.1 flattens it: the requested tensors, in the request's order, as float64."""
    if isinstance(weights, Mapping):
        missing = [n for n in names if n not in weights]
        if missing:
            return Failure(
                _encrypt_error(
                    f"the update lacks {len(missing)} requested parameter(s)",
                    "The model update lacks parameters the researcher sent; it cannot be encrypted.",
                )
            )
        parts = [weights[n] for n in names]
        if not all(isinstance(p, torch.Tensor) for p in parts):
            return Failure(
                _encrypt_error("the update holds non-tensors", "The model update is not made of tensors.")
            )
        flat = (
            torch.cat([p.detach().reshape(-1).to(torch.float64) for p in parts]).numpy()
            if parts
            else np.zeros(0, dtype=np.float64)
        )
    else:
        try:
            flat = np.asarray(weights, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return Failure(_encrypt_error("the update is not numeric", "The model update is not numeric."))
    if flat.size == 0 or not bool(np.isfinite(flat).all()):
        return Failure(
            _encrypt_error(
                "the flattened update is empty or not finite",
                "The model update is empty or holds NaN or infinity; it cannot be encrypted.",
            )
        )
    return Success(flat)


def encrypt_update(
    secagg: FedbiomedSecagg | None,
    store: SecaggStore | None,
    crypter: SecaggCrypter,
    *,
    names: Sequence[str],
    insecure_validation: bool = True,
    clock: Clock | None = None,
) -> Step:
    """Encrypt the update for a Fed-BioMed researcher, and the validation factor (see the module).

    ``names`` are the parameters the researcher sent, in its order (the flattening order);
    ``crypter`` the Joye-Libert crypter with the compatible packing and no checksum slot;
    ``clock`` times the encryption for the metadata (``encrypt_seconds``). The
    (context, round) pair is claimed first: a node never masks twice under the same round.
    Optimizer auxiliary variables are refused (6.4.1 encrypts them in a layout of its own).
    """

    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        if secagg is None:
            return Success(ctx)
        if store is None:
            return Failure(_config_error("This node keeps no secure-aggregation contexts."))
        update, training = ctx.update, ctx.training
        if update is None or training is None:
            return require(None, step=_STEP_ENCRYPT, what="update to encrypt")
        if update.aux_vars:
            return Failure(
                _encrypt_error(
                    "optimizer auxiliary variables with secure aggregation",
                    "Optimizer auxiliary variables cannot be securely aggregated in this federation.",
                )
            )
        weight = int(training.sample_size)

        def encrypt(flat: np.ndarray) -> Result[RoundContext, RoundError]:
            started = None if clock is None else clock.perf_counter()
            factor_value = secagg.random if insecure_validation else None
            if secagg.scheme is Scheme.LOM:
                outcome = _encrypt_lom(secagg, store, ctx, flat, weight, factor_value)
            else:
                outcome = _encrypt_jl(secagg, store, crypter, ctx, flat, weight, factor_value)
            seconds = None if clock is None or started is None else clock.perf_counter() - started

            def finish(pair: tuple[list[int], list[int] | None, dict[str, Any]]) -> RoundContext:
                cipher, factor, extra = pair
                meta: dict[str, Any] = {
                    "scheme": str(secagg.scheme),
                    "context_id": secagg.context_id,
                    "n_values": int(flat.size),
                    "encrypted": {
                        "weights": int(flat.size),
                        "aux_values": 0,
                        "factor": int(factor is not None),
                    },
                    "ciphertexts": len(cipher) + len(factor or ()),
                    "factor": factor is not None,
                    "factor_index": 0 if factor is not None else None,
                    "clipping_range": secagg.clipping_range or 3,
                    "num_nodes": len(secagg.parties),
                    "out_of_range": int(np.count_nonzero(np.abs(flat) > (secagg.clipping_range or 3))),
                    **extra,
                }
                if seconds is not None:
                    meta["encrypt_seconds"] = round(seconds, 6)
                notes: tuple[str, ...] = (
                    (
                        f"secagg: {meta['out_of_range']} values beyond the clipping range "
                        f"{meta['clipping_range']} were clipped before encryption",
                    )
                    if meta["out_of_range"]
                    else ()
                )
                if factor is None and secagg.random is not None:
                    notes += (
                        "secagg: the encryption factor was not sent (validation turned off by the node's owner)",
                    )
                return ctx.noted(
                    *notes,
                    update=evolve(
                        update,
                        model_weights=cipher,
                        encrypted=True,
                        encryption_factor=None if factor is None else tuple(factor),
                        metadata={**update.metadata, "secagg": meta},
                    ),
                )

            return outcome.map(finish)

        return (
            store.claim_tau(secagg.context_id, ctx.request.round)
            .bind(lambda _: _flat(update.model_weights, names))
            .bind(encrypt)
        )

    return step


_Encrypted = tuple[list[int], list[int] | None, dict[str, Any]]


def _encrypt_lom(
    secagg: FedbiomedSecagg,
    store: SecaggStore,
    ctx: RoundContext,
    flat: np.ndarray,
    weight: int,
    factor_value: float | None,
) -> Result[_Encrypted, RoundError]:
    def with_context(found: DhContext | None) -> Result[_Encrypted, RoundError]:
        if found is None:
            return Failure(
                _config_error(
                    f"The secure-aggregation context `{secagg.context_id}` is not set up on this node."
                )
            )
        crypter = LomCrypter.for_secagg_id(secagg.context_id, clipping_range=secagg.clipping_range)
        common: dict[str, Any] = {
            "pairwise_secrets": found.pairwise,
            "own_id": ctx.settings.node_id,
            "round_number": ctx.request.round,
            "weight": weight,
            "parties": found.parties,
        }
        cipher = crypter.encrypt(flat, **common)
        if factor_value is None:
            return cipher.map(lambda c: ([int(v) for v in c.tolist()], None, {}))
        factor = crypter.encryption_factor(factor_value, **common)
        return cipher.bind(
            lambda c: factor.map(lambda f: ([int(v) for v in c.tolist()], [int(v) for v in f.tolist()], {}))
        ).alt(lambda e: evolve(e, step=_STEP_ENCRYPT))

    return store.dh_context(secagg.context_id, ctx.request.job_id).bind(with_context)


def _encrypt_jl(
    secagg: FedbiomedSecagg,
    store: SecaggStore,
    crypter: SecaggCrypter,
    ctx: RoundContext,
    flat: np.ndarray,
    weight: int,
    factor_value: float | None,
) -> Result[_Encrypted, RoundError]:
    missing = _config_error(
        f"The secure-aggregation context `{secagg.context_id}` is not set up on this node."
    )

    def with_material(key: ServerKeyShare | None, biprime: Biprime | None) -> Result[_Encrypted, RoundError]:
        if key is None or biprime is None:
            return Failure(missing)
        clip = None if secagg.clipping_range is None else float(secagg.clipping_range)

        def run(values: Sequence[float]) -> Result[list[int], RoundError]:
            return crypter.encrypt(
                values,
                key=key,
                biprime=biprime,
                round_number=ctx.request.round,
                weight=weight,
                clipping_range=clip,
                first_index=0,
            ).alt(lambda e: evolve(e, step=_STEP_ENCRYPT))

        def stats() -> dict[str, Any]:
            read = getattr(crypter, "mask_stats", None)
            found = read(key=key, biprime=biprime, round_number=ctx.request.round) if callable(read) else None
            return {"masking": dict(found)} if isinstance(found, Mapping) else {}

        cipher = run(flat.tolist())
        if factor_value is None:
            return cipher.map(lambda c: (c, None, stats()))
        return cipher.bind(lambda c: run([factor_value]).map(lambda f: (c, f, stats())))

    return store.server_key(secagg.context_id, ctx.request.job_id).bind(
        lambda key: store.biprime(secagg.context_id).bind(lambda biprime: with_material(key, biprime))
    )


# --- the set-ups ----------------------------------------------------------------------------


@define
class _Pending:
    message: Message
    kind: str
    deadline: float


Outgoing = tuple[str, dict[str, Any]]
"""A message to send: (class name, fields)."""


@define
class SecaggSetups:
    """The node's Fed-BioMed secure-aggregation set-ups, driven on the dispatcher thread.

    ``handle`` takes a ``SecaggRequest``, ``AdditiveSSSetupRequest``, ``SecaggDeleteRequest`` or
    ``OverlayMessage`` and returns the messages to send (overlay messages to relay, replies to the
    researcher); ``expire`` answers the set-ups that ran out of time. Never raises for bad input.
    """

    node_id: str
    node_name: str
    store: SecaggStore
    overlay: Overlay
    clock: Callable[[], float] = time.monotonic
    timeout: float = SETUP_TIMEOUT_SECONDS
    _pending: dict[str, _Pending] = field(factory=dict, init=False)
    _lingering: dict[str, float] = field(factory=dict, init=False)  # secagg id -> when to forget it

    @classmethod
    def open(cls, *, node_id: str, node_name: str, store: SecaggStore, **options: Any) -> "SecaggSetups":
        """Set-ups over ``store``, with this node's stored channel keys."""
        return cls(
            node_id=node_id,
            node_name=node_name,
            store=store,
            overlay=Overlay(node_id=node_id, channel_keys=store.channel_keys()),
            **options,
        )

    def handle(self, message: Message) -> list[Outgoing]:
        """React to one set-up message; the messages to send, in order."""
        kind = message.kind
        if kind == "OverlayMessage":
            stepped = self.overlay.receive(message.fields)
            if isinstance(stepped, Failure):
                log.warning("refused a relayed node-to-node message: %s", stepped.failure().reason)
                return []
            return self._after(stepped.unwrap())
        if kind in ("SecaggRequest", "AdditiveSSSetupRequest"):
            return self._start(message)
        if kind == "SecaggDeleteRequest":
            return [self._delete(message)]
        return []

    def expire(self) -> list[Outgoing]:
        """Drop the set-ups past their deadline and answer each with an error.

        A completed set-up is kept for ``timeout`` more seconds: this node has what it needs,
        but the other parties may not have asked it for its key or share yet.
        """
        now = self.clock()
        for secagg_id, forget_at in list(self._lingering.items()):
            if now >= forget_at:
                del self._lingering[secagg_id]
                self.overlay.forget(secagg_id)
        out: list[Outgoing] = []
        for secagg_id, pending in list(self._pending.items()):
            if now >= pending.deadline:
                del self._pending[secagg_id]
                self.overlay.forget(secagg_id)
                log.error("secure-aggregation set-up %s timed out", printable(secagg_id, 80))
                out.append(
                    self._error(
                        pending.message,
                        f"Secure-aggregation set-up `{secagg_id}` did not complete within {self.timeout:.0f} s "
                        "(a party did not answer).",
                    )
                )
        return out

    @property
    def waiting(self) -> int:
        """Set-ups started and not yet answered, or completed and still answering the other parties."""
        return len(self._pending) + len(self._lingering)

    # -- internals -------------------------------------------------------------------------------

    def _error(self, message: Message, text: str) -> Outgoing:
        from fedpipe.fedbiomed.mapping import error_message

        return (
            "ErrorMessage",
            error_message(
                message, node_id=self.node_id, node_name=self.node_name, extra_msg=text, errnum=_SETUP_ERRNUM
            ),
        )

    def _reply_fields(self, message: Message, secagg_id: str, **extra: Any) -> dict[str, Any]:
        return {
            "protocol_version": PROTOCOL_VERSION,
            "request_id": message.fields.get("request_id"),
            "researcher_id": message.fields.get("researcher_id"),
            "secagg_id": secagg_id,
            "success": True,
            "node_id": self.node_id,
            "node_name": self.node_name,
            "msg": "",
            **extra,
        }

    def _start(self, message: Message) -> list[Outgoing]:
        f = message.fields
        secagg_id, parties, researcher_id = f.get("secagg_id"), f.get("parties"), f.get("researcher_id")
        expected = 1 if message.kind == "SecaggRequest" else 0
        if f.get("element") != expected:
            return [
                self._error(
                    message, f"Unknown secure-aggregation element {printable(repr(f.get('element')), 20)}."
                )
            ]
        if (
            not isinstance(secagg_id, str)
            or not isinstance(parties, list)
            or not isinstance(researcher_id, str)
        ):
            return [self._error(message, "The secure-aggregation request is malformed.")]
        if secagg_id in self._pending:
            return [
                self._error(
                    message, f"Secure-aggregation set-up `{printable(secagg_id, 80)}` is already running."
                )
            ]
        if self._lingering.pop(secagg_id, None) is not None:
            self.overlay.forget(secagg_id)  # the researcher sets the same context up again
        starter = self.overlay.start_dh if message.kind == "SecaggRequest" else self.overlay.start_sharing
        stepped = starter(secagg_id=secagg_id, parties=parties, researcher_id=researcher_id)
        if isinstance(stepped, Failure):
            return [self._error(message, f"Cannot set secure aggregation up: {stepped.failure().reason}.")]
        self._pending[secagg_id] = _Pending(
            message=message, kind=message.kind, deadline=self.clock() + self.timeout
        )
        log.info(
            "secure-aggregation set-up %s (%s) started with %d parties",
            printable(secagg_id, 80),
            "LOM" if expected == 1 else "Joye-Libert",
            len(parties),
        )
        return self._after(stepped.unwrap())

    def _after(self, step: Any) -> list[Outgoing]:
        out: list[Outgoing] = [("OverlayMessage", dict(fields)) for fields in step.send]
        for peer, pem in step.new_channels:
            try:
                self.store.add_channel_key(peer, pem)
            except Exception as err:
                log.error("cannot store the channel key for a peer: %s", err)
        for reason in step.refused:
            log.warning("secure-aggregation message dropped: %s", reason)
        for done in step.done:
            out.extend(self._complete(done))
        return out

    def _complete(self, done: DhSecrets | SharedKey) -> list[Outgoing]:
        pending = self._pending.pop(done.secagg_id, None)
        if pending is None:
            self.overlay.forget(done.secagg_id)
            return []
        # the peers may still ask for this node's key or share: answer them for a while
        self._lingering[done.secagg_id] = self.clock() + self.timeout
        message = pending.message
        job_id = message.fields.get("experiment_id")
        researcher_id = str(message.fields.get("researcher_id"))
        try:
            if isinstance(done, DhSecrets):
                self.store.add_dh_context(
                    DhContext(
                        secagg_id=done.secagg_id,
                        job_id=str(job_id),
                        parties=done.parties,
                        pairwise=done.pairwise,
                    )
                )
                reply: Outgoing = ("SecaggReply", self._reply_fields(message, done.secagg_id))
            else:
                self.store.put_server_key(
                    ServerKeyShare(
                        secagg_id=done.secagg_id,
                        job_id=str(job_id),
                        parties=(researcher_id, *done.parties),
                        key=done.user_key,
                    ),
                    Biprime(secagg_id=done.secagg_id, biprime=DEFAULT_BIPRIME),
                )
                reply = (
                    "AdditiveSSSetupReply",
                    self._reply_fields(message, done.secagg_id, share=done.share_sum),
                )
        except Exception as err:
            log.error("cannot store secure-aggregation context %s: %s", printable(done.secagg_id, 80), err)
            return [self._error(message, "The node could not store the secure-aggregation context.")]
        log.info("secure-aggregation set-up %s complete", printable(done.secagg_id, 80))
        return [reply]

    def _delete(self, message: Message) -> Outgoing:
        f = message.fields
        secagg_id = f.get("secagg_id")
        if not isinstance(secagg_id, str):
            return self._error(message, "The secure-aggregation delete request is malformed.")
        self._pending.pop(secagg_id, None)
        self._lingering.pop(secagg_id, None)
        self.overlay.forget(secagg_id)
        try:
            if f.get("element") == 1:
                self.store.remove_dh_context(secagg_id)
            else:
                self.store.remove_server_key(secagg_id)
        except Exception as err:
            log.warning("could not delete secure-aggregation context: %s", err)
        return ("SecaggDeleteReply", self._reply_fields(message, secagg_id, msg="Secagg context is deleted."))
