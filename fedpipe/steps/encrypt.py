"""Secure aggregation of the update: mask precomputation, then Joye-Libert encryption via the crypter port.

The encrypted vector of a node is its flat model weights followed by its flattened numeric aux vars
(D2), encrypted in one pass under tau indices ``0 .. K - 1``; the ``secagg_random`` factor follows at
index K, so that no tau index is used twice in a round. ``metadata["secagg"]`` of the update records
what the researcher needs to decrypt and rebuild: value counts, the aux-var layout, the factor index,
and how many values lay beyond the clipping range (D17: clipped, counted and reported, never silent).
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from attrs import evolve
from returns.result import Failure, Result, Success

from fedpipe.compose import Step, require
from fedpipe.context import RoundContext, SecaggSetup, Update
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import SecaggCrypter, SecaggKeys
from fedpipe.secagg.layout import flatten_aux, specs_to_data
from fedpipe.secagg.params import CLIPPING_RANGE
from fedpipe.secagg.quantize import out_of_range
from fedpipe.steps.fetch import decode_payload

__all__ = ["encrypt_update", "start_masks"]

STEP = "encrypt_update"
NOT_NUMBERS = "The flattened model update is not a list of finite numbers."


def _refuse(detail: str, public: str, code: ErrorCode = ErrorCode.ENCRYPTION_FAILED) -> Failure[RoundError]:
    return Failure(RoundError(code=code, step=STEP, detail=detail, public=public))


def _parameter_count(ctx: RoundContext) -> int | None:
    weights: Any = ctx.downloads.params
    if weights is None:
        path = ctx.downloads.params_path
        if path is None:
            return None
        content = decode_payload(path, ctx, "start_masks", "model parameters file").value_or(None)
        weights = content.get("model_weights") if isinstance(content, Mapping) else None
    if not isinstance(weights, Mapping):
        return None
    try:
        return int(sum(np.size(np.asarray(v)) for v in weights.values()))
    except (TypeError, ValueError):
        return None


def start_masks(crypter: SecaggCrypter) -> Step:
    """Have the crypter start computing this round's masks in worker processes, in parallel with training.

    The masks depend on the key, the round and the tau indices only. The number of values is read
    from the global parameters file when it has been fetched (place this step after
    ``fetch_params``); before that, the crypter reuses the count of the key's previous round, and in
    a first round it starts nothing (``encrypt_update`` then computes every mask on all cores).
    A missing count or bad file never fails the round here: later steps report real problems.
    """

    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        setup = ctx.secagg
        if setup is None or not ctx.request.training:
            return Success(ctx)
        crypter.start_masks(
            key=setup.key,
            biprime=setup.biprime,
            round_number=ctx.request.round,
            n_values=_parameter_count(ctx),
        )
        return Success(ctx)

    return step


def _check_setup(ctx: RoundContext, setup: SecaggSetup) -> Failure[RoundError] | float:
    """D17 checks on the node: clipping range, secagg_random, parties; the clipping range when fine."""
    c = CLIPPING_RANGE if setup.clipping_range is None else setup.clipping_range
    if not (math.isfinite(c) and c > 0):
        return _refuse(
            f"clipping range {c}", "`secagg_clipping_range` must be positive.", ErrorCode.SECAGG_CONFIG
        )
    if not (math.isfinite(setup.random) and abs(setup.random) <= c):
        return _refuse(
            f"secagg_random {setup.random} outside [-{c}, {c}]",
            "`secagg_random` must be a finite number within the clipping range.",
            ErrorCode.SECAGG_CONFIG,
        )
    parties = setup.key.parties
    if len(set(parties)) != len(parties) or setup.key.num_nodes < 2:
        return _refuse(
            f"parties {parties!r}: need a researcher and at least two distinct nodes",
            "The secagg context must name at least two distinct nodes.",
            ErrorCode.SECAGG_CONFIG,
        )
    if ctx.settings.node_id not in parties[1:]:
        return _refuse(
            f"node {ctx.settings.node_id!r} is not among the parties {parties!r}",
            "This node is not a party of the secagg context.",
            ErrorCode.SECAGG_CONFIG,
        )
    return float(c)


def _as_floats(values: Any) -> np.ndarray | None:
    if not isinstance(values, Sequence) or isinstance(values, str | bytes):
        return None
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.ndim == 1 and bool(np.isfinite(arr).all()) else None


def encrypt_update(crypter: SecaggCrypter, keys: SecaggKeys, *, fedbiomed_factor: bool = False) -> Step:
    """Encrypt the flat update and aux vars weighted by the sample size, then the ``secagg_random`` factor.

    Runs only when secure aggregation is on. Checks first (D17), then claims the (key, round) pair,
    so that this node never encrypts twice under the same tau, then encrypts.

    ``fedbiomed_factor=True`` encrypts the factor at tau index 0, as Fed-BioMed's "insecure
    validation" does, for a Fed-BioMed researcher that insists on checking it. That reuses the
    index of the first weights ciphertext: anyone holding both learns the difference of their
    plaintexts, i.e. the first packed weights of this node. Off by default.
    """

    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        setup = ctx.secagg
        if setup is None:
            return Success(ctx)
        update, training = ctx.update, ctx.training
        if update is None or training is None:
            return require(None, step=STEP, what="update to encrypt")
        checked = _check_setup(ctx, setup)
        if isinstance(checked, Failure):
            return checked
        clip = checked
        weights = _as_floats(update.model_weights)
        if weights is None:
            return _refuse(
                f"flattened update is {type(update.model_weights).__name__}, not a flat list of finite numbers",
                NOT_NUMBERS,
            )
        aux_values, specs, clear_aux = flatten_aux(update.aux_vars)
        if not np.isfinite(aux_values).all():
            return _refuse(
                "aux vars contain NaN or infinity", "The optimizer auxiliary variables are not finite."
            )
        values: Sequence[float] = (
            list(update.model_weights) + aux_values.tolist() if aux_values.size else update.model_weights
        )
        outside_w, outside_a = out_of_range(weights, clip), out_of_range(aux_values, clip)

        def encrypt(vals: Sequence[float], first_index: int) -> Result[list[int], RoundError]:
            return crypter.encrypt(
                vals,
                key=setup.key,
                biprime=setup.biprime,
                round_number=ctx.request.round,
                weight=training.sample_size,
                clipping_range=setup.clipping_range,
                first_index=first_index,
            )

        def finish(cipher: list[int], factor: list[int], factor_index: int) -> RoundContext:
            meta = {
                "scheme": "joye-libert",
                "n_weights": int(weights.size),
                "n_values": int(weights.size + aux_values.size),
                "aux_layout": specs_to_data(specs),
                "factor_index": factor_index,
                "clipping_range": clip,
                "num_nodes": setup.key.num_nodes,
                "out_of_range": outside_w + outside_a,
                "out_of_range_aux": outside_a,
            }
            new_update: Update = evolve(
                update,
                model_weights=cipher,
                aux_vars=clear_aux,
                encrypted=True,
                encryption_factor=tuple(factor),
                metadata={**update.metadata, "secagg": meta},
            )
            notes = (
                (
                    f"secagg: {outside_w + outside_a} values beyond the clipping range {clip} were "
                    "clipped before encryption",
                )
                if outside_w + outside_a
                else ()
            )
            return ctx.noted(*notes, update=new_update)

        def with_factor(cipher: list[int]) -> Result[RoundContext, RoundError]:
            index = 0 if fedbiomed_factor else len(cipher)
            return encrypt([setup.random], index).map(lambda factor: finish(cipher, factor, index))

        return (
            keys.claim_tau(setup.key.secagg_id, ctx.request.round)
            .bind(lambda _: encrypt(values, 0))
            .bind(with_factor)
        )

    return step
