"""Secure aggregation of the update: mask precomputation, then Joye-Libert encryption via the crypter port.

The encrypted vector of a node is its flat model weights followed by its flattened numeric aux vars
(D2), encrypted in one pass under tau indices ``0 .. K - 1``; the ``secagg_random`` factor follows at
index K, so that no tau index is used twice in a round. ``metadata["secagg"]`` of the update records
what the researcher needs to decrypt and rebuild: value counts, the aux-var layout, the factor index,
and how many values lay beyond the clipping range (D17: clipped, counted and reported, never silent);
and what the researcher may show of the round: what was encrypted, how many ciphertexts, how long the
encryption after training took and, when the crypter reports them, its masking figures. All of it
is plain data (numbers and strings): never a key, a mask, a plaintext or a value of the update.

A LOM round of fedpipe's own federation (``RoundContext.lom``) encrypts the same vector with
fedpipe-mode LOM masks (``fedpipe.secagg.lom.FedpipeLomCrypter``) under the pairwise secrets
``agree_keys`` stored, the factor at value index K again (its own mask words), and claims the
(context, round) pair first as Joye-Libert does.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from attrs import evolve
from returns.result import Failure, Result, Success

from fedpipe.compose import Step, declare, require
from fedpipe.context import LomSetup, RoundContext, SecaggSetup, TrainingOutcome, Update
from fedpipe.errors import ErrorCode, RoundError, printable
from fedpipe.ports import Clock, LomKeys, PairwiseSecrets, SecaggCrypter, SecaggKeys
from fedpipe.secagg.layout import flatten_aux, specs_to_data
from fedpipe.secagg.lom import FEDPIPE_LOM_INFO, FEDPIPE_TARGET_RANGE, FedpipeLomCrypter
from fedpipe.secagg.params import CLIPPING_RANGE
from fedpipe.secagg.quantize import out_of_range
from fedpipe.steps._util import call_plan
from fedpipe.steps.fetch import decode_payload

__all__ = ["LOM_MODE", "MASK_STATS", "encrypt_update", "start_masks"]

STEP = "encrypt_update"
NOT_NUMBERS = "The flattened model update is not a list of finite numbers."
MASK_STATS: tuple[str, ...] = (
    "mask_cpu_seconds",
    "mask_wall_seconds",
    "precomputed_fraction",
    "encrypt_wait_seconds",
)
"""The crypter's masking figures that the metadata carries; any other entry is dropped, so that
nothing but these durations and fractions can reach the researcher from the crypter."""
MAX_FIGURE = 1e9
"""Seconds (about 32 years): a larger "figure" is no duration, and is dropped rather than sent."""
LOM_MODE = FEDPIPE_LOM_INFO.decode("ascii")
"""``metadata["secagg"]["mode"]`` of a fedpipe-mode LOM update (the researcher checks it)."""


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

    @declare(needs="secagg")
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


def _figure(value: Any) -> float | None:
    """``value`` as a figure for the metadata: a real number in ``[0, MAX_FIGURE]``, else None.

    >>> _figure(3), _figure(0.5), _figure(True), _figure(float("nan")), _figure(-1.0), _figure(2**2048)
    (3.0, 0.5, None, None, None, None)
    """
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if isinstance(value, int) and not 0 <= value <= MAX_FIGURE:
        return None  # a huge int (a mask, a key) must not even be rounded into a float
    number = float(value)
    return number if math.isfinite(number) and 0 <= number <= MAX_FIGURE else None


def _masking(crypter: SecaggCrypter, setup: SecaggSetup, round_number: int) -> dict[str, float]:
    """The crypter's masking figures of this round: the ``MASK_STATS`` entries that are figures.

    ``mask_stats`` is optional on a crypter: one without it (or with nothing to say) yields ``{}``.
    """
    stats_of = getattr(crypter, "mask_stats", None)
    if not callable(stats_of):
        return {}
    stats = stats_of(key=setup.key, biprime=setup.biprime, round_number=round_number)
    if not isinstance(stats, Mapping):
        return {}
    figures = {name: _figure(stats.get(name)) for name in MASK_STATS}
    return {name: value for name, value in figures.items() if value is not None}


def _flat_weights(ctx: RoundContext, update: Update) -> Result[Any, RoundError]:
    """The update's weights as a flat sequence: as ``make_update`` left them, or flattened by the plan.

    ``make_update`` flattens them for a Joye-Libert round (``ctx.secagg``); for a LOM round it may
    have kept the mapping, and the plan, which alone knows its flattening order, flattens it here.
    """
    weights = update.model_weights
    if not isinstance(weights, Mapping):
        return Success(weights)
    plan = ctx.plan
    if plan is None:
        return require(None, step=STEP, what="trained plan")
    return call_plan(
        STEP,
        ErrorCode.ENCRYPTION_FAILED,
        "Cannot flatten the trained parameters",
        lambda: plan.after_training_params(flatten=True),
    )


def _weights_and_aux(
    flat: Any, update: Update
) -> Failure[RoundError] | tuple[np.ndarray, np.ndarray, Any, dict[str, Any]]:
    """The flat weights as floats and the update's numeric aux vars (values, layout, clear part), checked finite."""
    weights = _as_floats(flat)
    if weights is None:
        return _refuse(
            f"flattened update is {type(flat).__name__}, not a flat list of finite numbers", NOT_NUMBERS
        )
    aux_values, specs, clear_aux = flatten_aux(update.aux_vars)
    if not np.isfinite(aux_values).all():
        return _refuse(
            "aux vars contain NaN or infinity", "The optimizer auxiliary variables are not finite."
        )
    return weights, aux_values, specs, clear_aux


def _encrypt_lom(
    ctx: RoundContext,
    setup: LomSetup,
    store: LomKeys | None,
    keys: SecaggKeys,
    update: Update,
    training: TrainingOutcome,
    clock: Clock | None,
) -> Result[RoundContext, RoundError]:
    """The LOM branch of ``encrypt_update``: the agreed context, the tau claim, then the two vectors."""
    if store is None:
        return _refuse(
            "no LOM key store",
            "This node cannot run LOM rounds: it keeps no LOM contexts.",
            ErrorCode.SECAGG_CONFIG,
        )
    flat = _flat_weights(ctx, update)
    if isinstance(flat, Failure):
        return flat
    split = _weights_and_aux(flat.unwrap(), update)
    if isinstance(split, Failure):
        return split
    weights, aux_values, specs, clear_aux = split
    values = np.concatenate([weights, aux_values]) if aux_values.size else weights
    clip = CLIPPING_RANGE if setup.clipping_range is None else setup.clipping_range
    crypter = FedpipeLomCrypter(clipping_range=clip)
    context = printable(setup.secagg_id, 80)

    def with_context(found: PairwiseSecrets | None) -> Result[RoundContext, RoundError]:
        if found is None:
            return _refuse(
                f"no LOM context {setup.secagg_id!r}",
                f"LOM context `{context}` is not agreed on this node.",
                ErrorCode.SECAGG_CONFIG,
            )
        if len(found.parties) != len(setup.parties) or set(found.parties) != set(setup.parties):
            return _refuse(
                f"parties {setup.parties!r} differ from the agreed {found.parties!r}",
                f"The parties of this round do not match those LOM context `{context}` was agreed with.",
                ErrorCode.SECAGG_CONFIG,
            )
        common: dict[str, Any] = {
            "pairwise_secrets": found.pairwise,
            "own_id": ctx.settings.node_id,
            "secagg_id": setup.secagg_id,
            "round_number": ctx.request.round,
            "weight": training.sample_size,
            "parties": found.parties,
        }

        def encrypt_all(_: None) -> Result[RoundContext, RoundError]:
            started = None if clock is None else clock.perf_counter()
            cipher = crypter.encrypt(values, first_index=0, **common)
            factor = crypter.encrypt([setup.random], first_index=int(values.size), **common)
            seconds = None if clock is None or started is None else clock.perf_counter() - started
            return cipher.bind(
                lambda c: factor.map(
                    lambda f: finish([int(v) for v in c.tolist()], [int(v) for v in f.tolist()], seconds)
                )
            ).alt(lambda e: evolve(e, step=STEP))

        return keys.claim_tau(setup.secagg_id, ctx.request.round).bind(encrypt_all)

    def finish(cipher: list[int], factor: list[int], seconds: float | None) -> RoundContext:
        outside_w, outside_a = out_of_range(weights, float(clip)), out_of_range(aux_values, float(clip))
        meta: dict[str, Any] = {
            "scheme": "lom",
            "mode": LOM_MODE,
            "context_id": setup.secagg_id,
            "target_range": FEDPIPE_TARGET_RANGE,
            "n_weights": int(weights.size),
            "n_values": int(values.size),
            "aux_layout": specs_to_data(specs),
            "factor_index": int(values.size),
            "clipping_range": clip,
            "num_nodes": len(setup.parties),
            "out_of_range": outside_w + outside_a,
            "out_of_range_aux": outside_a,
            "encrypted": {"weights": int(weights.size), "aux_values": int(aux_values.size), "factor": 1},
            "ciphertexts": len(cipher) + len(factor),
        }
        if seconds is not None:
            meta["encrypt_seconds"] = seconds
        notes = (
            (
                f"secagg: {outside_w + outside_a} values beyond the clipping range {clip} were clipped before encryption",
            )
            if outside_w + outside_a
            else ()
        )
        return ctx.noted(
            *notes,
            update=evolve(
                update,
                model_weights=cipher,
                aux_vars=clear_aux,
                encrypted=True,
                encryption_factor=tuple(factor),
                metadata={**update.metadata, "secagg": meta},
            ),
        )

    return store.pairwise(setup.secagg_id, ctx.request.job_id).bind(with_context)


def encrypt_update(
    crypter: SecaggCrypter,
    keys: SecaggKeys,
    *,
    fedbiomed_factor: bool = False,
    clock: Clock | None = None,
    lom_keys: LomKeys | None = None,
) -> Step:
    """Encrypt the flat update and aux vars weighted by the sample size, then the ``secagg_random`` factor.

    Runs only when secure aggregation is on. Checks first (D17), then claims the (key, round) pair,
    so that this node never encrypts twice under the same tau, then encrypts.

    ``fedbiomed_factor=True`` encrypts the factor at tau index 0, as Fed-BioMed's "insecure
    validation" does, for a Fed-BioMed researcher that insists on checking it. That reuses the
    index of the first weights ciphertext: anyone holding both learns the difference of their
    plaintexts, i.e. the first packed weights of this node. Off by default.

    Besides the layout, ``metadata["secagg"]`` says what was encrypted (``encrypted``: weights, aux
    values, factor), the ``ciphertexts`` sent (update and factor), ``encrypt_seconds`` (wall time of
    the crypter's calls, read from ``clock``; absent without one) and ``masking`` (the crypter's
    ``MASK_STATS``, when it has a ``mask_stats`` method and reports any).

    A LOM round (``ctx.lom``) encrypts with the pairwise secrets ``lom_keys`` holds for its
    context instead (see the module docstring); its metadata adds ``mode`` (``LOM_MODE``),
    ``context_id`` and ``target_range``, and the factor sits at index ``n_values``.
    """

    @declare(needs=("update", "training", "secagg", "lom"), provides="update")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        if ctx.lom is not None:
            if ctx.update is None or ctx.training is None:
                return require(None, step=STEP, what="update to encrypt")
            return _encrypt_lom(ctx, ctx.lom, lom_keys, keys, ctx.update, ctx.training, clock)
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
        split = _weights_and_aux(update.model_weights, update)
        if isinstance(split, Failure):
            return split
        weights, aux_values, specs, clear_aux = split
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

        def finish(
            cipher: list[int], factor: list[int], factor_index: int, seconds: float | None
        ) -> RoundContext:
            meta: dict[str, Any] = {
                "scheme": "joye-libert",
                "n_weights": int(weights.size),
                "n_values": int(weights.size + aux_values.size),
                "aux_layout": specs_to_data(specs),
                "factor_index": factor_index,
                "clipping_range": clip,
                "num_nodes": setup.key.num_nodes,
                "out_of_range": outside_w + outside_a,
                "out_of_range_aux": outside_a,
                "encrypted": {"weights": int(weights.size), "aux_values": int(aux_values.size), "factor": 1},
                "ciphertexts": len(cipher) + len(factor),
            }
            if seconds is not None:
                meta["encrypt_seconds"] = seconds
            masking = _masking(crypter, setup, ctx.request.round)
            if masking:
                meta["masking"] = masking
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

        def encrypt_all(_: None) -> Result[RoundContext, RoundError]:
            # only the crypter's calls are timed: the checks and the tau claim are not encryption
            started = None if clock is None else clock.perf_counter()

            def elapsed() -> float | None:
                return None if clock is None or started is None else clock.perf_counter() - started

            def with_factor(cipher: list[int]) -> Result[RoundContext, RoundError]:
                index = 0 if fedbiomed_factor else len(cipher)
                return encrypt([setup.random], index).map(
                    lambda factor: finish(cipher, factor, index, elapsed())
                )

            return encrypt(values, 0).bind(with_factor)

        return keys.claim_tau(setup.key.secagg_id, ctx.request.round).bind(encrypt_all)

    return step
