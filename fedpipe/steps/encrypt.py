"""Secure aggregation of the update: Joye-Libert encryption through the crypter port."""

import math

from attrs import evolve
from returns.result import Failure, Result, Success

from fedpipe.compose import Step, require
from fedpipe.context import RoundContext
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import SecaggCrypter, SecaggKeys

__all__ = ["encrypt_update"]


def _refuse(detail: str, public: str) -> RoundError:
    return RoundError(code=ErrorCode.ENCRYPTION_FAILED, step="encrypt_update", detail=detail, public=public)


def encrypt_update(crypter: SecaggCrypter, keys: SecaggKeys) -> Step:
    """Encrypt the flat update weighted by the sample size, and the ``secagg_random`` check value.

    Runs only when secure aggregation is on. The (key, round) pair is claimed first: this node
    never encrypts twice under the same tau.
    """

    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        setup = ctx.secagg
        if setup is None:
            return Success(ctx)
        update, training = ctx.update, ctx.training
        if update is None or training is None:
            return require(None, step="encrypt_update", what="update to encrypt")
        values = update.model_weights
        if not isinstance(values, list) or not all(isinstance(v, float) and math.isfinite(v) for v in values):
            return Failure(
                _refuse(
                    f"flattened update is {type(values).__name__}, not a list of finite floats",
                    "The flattened model update is not a list of finite numbers.",
                )
            )

        def encrypt(values_: list[float]) -> Result[list[int], RoundError]:
            return crypter.encrypt(
                values_,
                key=setup.key,
                biprime=setup.biprime,
                round_number=ctx.request.round,
                weight=training.sample_size,
                clipping_range=setup.clipping_range,
            )

        return (
            keys.claim_tau(setup.key.secagg_id, ctx.request.round)
            .bind(lambda _: encrypt(values))
            .bind(
                lambda cipher: encrypt([setup.random]).map(
                    lambda factor: evolve(
                        ctx,
                        update=evolve(
                            update, model_weights=cipher, encrypted=True, encryption_factor=tuple(factor)
                        ),
                    )
                )
            )
        )

    return step
