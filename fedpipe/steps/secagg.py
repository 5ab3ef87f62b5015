"""Secure-aggregation checks (reference §1.7): the five rules, then the key material."""

from collections.abc import Callable
from typing import TypeVar

from attrs import evolve
from returns.result import Failure, Result, Success

from fedpipe.compose import Step
from fedpipe.context import RoundContext, SecaggSetup
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import Biprime, SecaggKeys, ServerKeyShare

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


def check_secagg(keys: SecaggKeys) -> Step:
    """Apply the node's secure-aggregation rules and load the key material when secagg is on.

    In order: both context ids or neither; a node that forces secagg refuses a plain request;
    a node with secagg off refuses a secure one; ``secagg_random`` is required; the clipping
    range must be positive; the biprime and this job's key share must exist, and the party list
    must count at least one node.
    """

    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        req, settings = ctx.request, ctx.settings
        servkey_id, biprime_id = req.secagg_servkey_id, req.secagg_biprime_id
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
