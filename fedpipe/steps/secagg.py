"""Secure-aggregation checks (reference §1.7): the five rules, then the key material (or the LOM context)."""

from collections.abc import Callable
from typing import TypeVar

from attrs import evolve
from returns.result import Failure, Result, Success

from fedpipe.compose import Step, declare
from fedpipe.context import LomSetup, RoundContext, SecaggSetup
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import Biprime, SecaggKeys, ServerKeyShare
from fedpipe.secagg.params import CLIPPING_RANGE

T = TypeVar("T")

__all__ = ["check_secagg"]

STEP = "check_secagg"


def _refuse(public: str, detail: str = "") -> Result[RoundContext, RoundError]:
    return Failure(
        RoundError(code=ErrorCode.SECAGG_CONFIG, step=STEP, detail=detail or public, public=public)
    )


def _present(public: str) -> Callable[[T | None], Result[T, RoundError]]:
    def check(value: T | None) -> Result[T, RoundError]:
        if value is None:
            return Failure(RoundError(code=ErrorCode.SECAGG_CONFIG, step=STEP, detail=public, public=public))
        return Success(value)

    return check


def _with_setup(ctx: RoundContext, key: ServerKeyShare, biprime: Biprime) -> Result[RoundContext, RoundError]:
    if key.num_nodes < 1:
        return _refuse("The secagg context has no node party.")
    req = ctx.request
    clipping = None if req.secagg_clipping_range is None else float(req.secagg_clipping_range)
    setup = SecaggSetup(
        key=key, biprime=biprime, random=float(req.secagg_random or 0.0), clipping_range=clipping
    )
    return Success(evolve(ctx, secagg=setup))


def _check_lom(ctx: RoundContext) -> Result[RoundContext, RoundError]:
    """The rules of a LOM round of fedpipe's own federation; its context is agreed by ``agree_keys``."""
    req, settings = ctx.request, ctx.settings
    if req.secagg_servkey_id is not None or req.secagg_biprime_id is not None:
        return _refuse(
            "A LOM request must not name Joye-Libert contexts (`secagg_servkey_id`, `secagg_biprime_id`)."
        )
    if not settings.secure_aggregation:
        return _refuse("Secure aggregation is not activated on the node.")
    if req.secagg_dh_id is None:
        return _refuse("A LOM request must name its context in `secagg_dh_id`.")
    if req.secagg_parties is None:
        return _refuse("A LOM request must list the node ids of its context in `secagg_parties`.")
    if settings.node_id not in req.secagg_parties:
        return _refuse("This node is not a party of the secagg context.")
    if req.secagg_random is None:
        return _refuse("Secure aggregation requires `secagg_random` in the train request.")
    clipping = req.secagg_clipping_range
    if clipping is not None and clipping <= 0:
        return _refuse("`secagg_clipping_range` must be positive.")
    if abs(req.secagg_random) > (CLIPPING_RANGE if clipping is None else clipping):
        return _refuse("`secagg_random` must be a finite number within the clipping range.")
    setup = LomSetup(
        secagg_id=req.secagg_dh_id,
        parties=req.secagg_parties,
        random=float(req.secagg_random),
        clipping_range=clipping,
    )
    return Success(evolve(ctx, lom=setup))


def check_secagg(keys: SecaggKeys) -> Step:
    """Apply the node's secure-aggregation rules and load the key material when secagg is on.

    In order: both context ids or neither; a node that forces secagg refuses a plain request;
    a node with secagg off refuses a secure one; ``secagg_random`` is required; the clipping
    range must be positive; the biprime and this job's key share must exist, and the party list
    must count at least one node.

    A LOM request (``secagg_scheme: "lom"``) names no Joye-Libert context but its own
    (``secagg_dh_id``) and its node parties (``secagg_parties``, this node among them), with
    ``secagg_random`` within the clipping range; the step then records a ``LomSetup`` and leaves
    the pairwise secrets to ``agree_keys``. ``secagg_dh_id`` or ``secagg_parties`` without that
    scheme, and ``"joye-libert"`` without its two contexts, are refused.
    """

    @declare(provides=("secagg", "lom"))
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        req, settings = ctx.request, ctx.settings
        if req.secagg_scheme == "lom":
            return _check_lom(ctx)
        if req.secagg_dh_id is not None or req.secagg_parties is not None:
            return _refuse('`secagg_dh_id` and `secagg_parties` need `secagg_scheme` "lom".')
        servkey_id, biprime_id = req.secagg_servkey_id, req.secagg_biprime_id
        if req.secagg_scheme is not None and servkey_id is None and biprime_id is None:
            return _refuse(
                "Missing secagg context: a Joye-Libert request must contain `secagg_servkey_id` and "
                "`secagg_biprime_id`."
            )
        if (servkey_id is None) != (biprime_id is None):
            return _refuse(
                "Missing secagg context: the request must contain both `secagg_servkey_id` and `secagg_biprime_id`."
            )
        if servkey_id is None or biprime_id is None:
            if settings.force_secure_aggregation:
                return _refuse(
                    "The node requires secure aggregation, but the request defines no secagg context."
                )
            return Success(ctx)
        if not settings.secure_aggregation:
            return _refuse("Secure aggregation is not activated on the node.")
        if req.secagg_random is None:
            return _refuse("Secure aggregation requires `secagg_random` in the train request.")
        if req.secagg_clipping_range is not None and req.secagg_clipping_range <= 0:
            return _refuse("`secagg_clipping_range` must be positive.")
        return (
            keys.biprime(biprime_id)
            .bind(_present(f"Unknown biprime for secagg context `{biprime_id}`."))
            .bind(
                lambda biprime: (
                    keys.server_key(servkey_id, req.job_id)
                    .bind(_present(f"Unknown server-key share for secagg context `{servkey_id}`."))
                    .bind(lambda key: _with_setup(ctx, key, biprime))
                )
            )
        )

    return step
