"""The Fed-BioMed 6.x round: the standard round with its exchange steps replaced by name.

A Fed-BioMed 6.x researcher sends the plan source, the global parameters, the aggregator
arguments and the optimizer auxiliary variables inline in the TrainRequest, and expects the
update inline in the TrainReply. So the variant replaces, by name, ``fetch_plan``,
``fetch_params``, ``fetch_aggregator_args`` and ``fetch_aux_vars`` with steps that take those
values from the decoded message (``InlineRound``), and ``upload_results`` with
``prepare_reply``, which turns the update into what the researcher can read (a bfloat16 tensor
becomes float32, with a note). Every other step is the standard one: approval, state by
``state_id``, validation before and after training, the owner's caps, the crash-safe ordering
(the state is saved last, after the update is ready; the reply is sent by the node afterwards).
``split_data`` keeps its name but draws the test subset as Fed-BioMed 6.4.1 does (see
``fedpipe.fedbiomed.compat.steps``), so a stock node and a fedpipe node split alike.

>>> from fedpipe.compose import names
>>> from fedpipe.testing import fake_ports
>>> from fedpipe.fedbiomed.mapping import InlineRound
>>> inline = InlineRound(request_id="r", researcher_id="R", experiment_id="e", plan_source="",
...                      params={}, aggregator_args={}, aux_vars={}, secagg_arguments=None)
>>> names(fedbiomed_round(fake_ports(), inline))[3:6]
('take_plan', 'check_approval', 'take_params')
>>> names(fedbiomed_round(fake_ports(), inline)) == FEDBIOMED_STEPS
True
>>> names(fedbiomed_validation_round(fake_ports(), inline))[-3:]
('ingest_aux_vars', 'split_data', 'validate_global')
"""

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from attrs import evolve
from returns.result import Failure, Result, Success

from fedpipe.compose import NamedStep, Round, Step, declare, replace, require, without
from fedpipe.context import PlanSource, RoundContext, Update
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.fedbiomed import secure
from fedpipe.fedbiomed.compat.steps import split_data_fedbiomed
from fedpipe.fedbiomed.mapping import InlineRound, fedbiomed_update
from fedpipe.ports import Ports, SecaggCrypter
from fedpipe.rounds import STANDARD_STEPS, TRAINING_ONLY_STEPS, standard_round
from fedpipe.steps.fetch import MAX_PLAN_SOURCE_BYTES
from fedpipe.views import frozen_view

__all__ = [
    "FEDBIOMED_STEPS",
    "fedbiomed_round",
    "fedbiomed_validation_round",
    "prepare_reply",
    "take_aggregator_args",
    "take_aux_vars",
    "take_params",
    "take_plan",
]


# standard step -> the step of this variant that takes its place
_RENAMED = {
    "fetch_plan": "take_plan",
    "fetch_params": "take_params",
    "fetch_aggregator_args": "take_aggregator_args",
    "fetch_aux_vars": "take_aux_vars",
    "upload_results": "prepare_reply",
}
# fedpipe's own LOM key agreement runs through a fedpipe server; a Fed-BioMed researcher sets
# its contexts up with its own requests (``fedpipe.fedbiomed.secure.SecaggSetups``)
_DROPPED = ("agree_keys",)
FEDBIOMED_STEPS: tuple[str, ...] = tuple(_RENAMED.get(n, n) for n in STANDARD_STEPS if n not in _DROPPED)
"""The step names of ``fedbiomed_round``, in order."""


def _bad(step: str, detail: str, public: str) -> RoundError:
    return RoundError(code=ErrorCode.BAD_PAYLOAD, step=step, detail=detail, public=public)


def take_plan(inline: InlineRound) -> Step:
    """Write the plan source that came in the message into the round workspace (for the loader)."""

    @declare(provides="plan_source")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        try:
            raw = inline.plan_source.encode("utf-8")
        except UnicodeEncodeError:
            return Failure(
                _bad(
                    "take_plan",
                    "plan source is not UTF-8 text",
                    "The training plan source is not valid text.",
                )
            )
        if len(raw) > MAX_PLAN_SOURCE_BYTES:
            return Failure(
                _bad(
                    "take_plan",
                    f"plan source of {len(raw)} bytes",
                    f"The training plan source is larger than {MAX_PLAN_SOURCE_BYTES} bytes.",
                )
            )
        path = ctx.workdir / "training_plan.py"
        try:
            path.write_bytes(raw)
        except OSError as err:
            return Failure(
                RoundError(
                    code=ErrorCode.INTERNAL,
                    step="take_plan",
                    detail=f"cannot write the plan source: {type(err).__name__}: {err}",
                    cause=err,
                )
            )
        source = PlanSource(path=path, source=inline.plan_source, sha256=hashlib.sha256(raw).hexdigest())
        return Success(evolve(ctx, plan_source=source))

    return step


def take_params(inline: InlineRound) -> Step:
    """Keep the global parameters that came decoded in the message for ``set_params``."""

    @declare(provides="params")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        if not isinstance(inline.params, Mapping) or not inline.params:
            return Failure(
                _bad(
                    "take_params", "no parameters in the request", "The request carries no model parameters."
                )
            )
        return Success(evolve(ctx, downloads=evolve(ctx.downloads, params=inline.params)))

    return step


def take_aggregator_args(inline: InlineRound) -> Step:
    """Keep the aggregator arguments of the message, read-only."""

    @declare(provides="aggregator_args")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        if not inline.aggregator_args:
            return Success(ctx)
        view = frozen_view(dict(inline.aggregator_args))
        return Success(evolve(ctx, downloads=evolve(ctx.downloads, aggregator_args=view)))

    return step


def take_aux_vars(inline: InlineRound) -> Step:
    """Keep the optimizer auxiliary variables of the message (none in a plain FedAvg round)."""

    @declare(provides="aux_vars")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        if not inline.aux_vars:
            return Success(ctx)
        return Success(evolve(ctx, downloads=evolve(ctx.downloads, aux_vars=inline.aux_vars)))

    return step


def prepare_reply(convert: Callable[[Any], tuple[Any, tuple[str, ...]]] = fedbiomed_update) -> Step:
    """Make the update readable by a Fed-BioMed researcher (``convert``); the node replies with it.

    A conversion (a bfloat16 tensor sent as float32) is kept as a note of the round; an update
    that cannot be expressed is a failure, and then no state is saved.
    """

    @declare(needs="update", provides="update")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        def fill(update: Update) -> Result[RoundContext, RoundError]:
            if update.encrypted:
                return Success(ctx)  # ciphertexts go as they are, a list of ints
            try:
                weights, notes = convert(update.model_weights)
            except (TypeError, ValueError) as err:
                return Failure(
                    RoundError(
                        code=ErrorCode.UPLOAD_FAILED,
                        step="prepare_reply",
                        detail=f"update cannot be sent to a Fed-BioMed researcher: {err}",
                        public="The model update cannot be expressed in a Fed-BioMed reply.",
                        cause=err,
                    )
                )
            return Success(ctx.noted(*notes, update=evolve(update, model_weights=weights)))

        return require(ctx.update, step="prepare_reply", what="update").bind(fill)

    return step


def fedbiomed_round(
    ports: Ports,
    inline: InlineRound,
    *,
    secagg_store: secure.SecaggStore | None = None,
    crypter: SecaggCrypter | None = None,
    insecure_validation: bool = True,
) -> Round:
    """The standard round over ``ports`` with the plan, parameters, aggregator args and aux vars
    taken from the message, and the update prepared for the reply instead of uploaded.

    ``check_secagg``, ``start_masks`` and ``encrypt_update`` are Fed-BioMed's
    (``fedpipe.fedbiomed.secure``): the contexts come from ``secagg_store`` (None: a secure
    request is refused), Joye-Libert encrypts with ``crypter`` (the compatible packing without
    the checksum slot; default ``ports.crypter``) and the validation factor is sent when
    ``insecure_validation``.
    """
    steps = without(standard_round(ports), *_DROPPED)
    jl = crypter if crypter is not None else ports.crypter
    names = tuple(str(name) for name in inline.params)
    # the secagg decision of a Fed-BioMed round is the message's (``inline.secagg``): its steps
    # provide and need it under the standard steps' names
    steps = replace(
        steps,
        "check_secagg",
        NamedStep(
            "check_secagg", secure.check_secagg(inline.secagg, secagg_store), provides=("secagg", "lom")
        ),
    )
    steps = replace(
        steps,
        "start_masks",
        NamedStep(
            "start_masks", secure.start_masks(inline.secagg, secagg_store, jl, inline.params), needs="secagg"
        ),
    )
    steps = replace(
        steps,
        "encrypt_update",
        NamedStep(
            "encrypt_update",
            secure.encrypt_update(
                inline.secagg,
                secagg_store,
                jl,
                names=names,
                insecure_validation=insecure_validation,
                clock=ports.clock,
            ),
            needs=("update", "training", "secagg"),
            provides="update",
        ),
    )
    steps = replace(steps, "fetch_plan", NamedStep("take_plan", take_plan(inline)))
    steps = replace(steps, "fetch_params", NamedStep("take_params", take_params(inline)))
    steps = replace(
        steps, "fetch_aggregator_args", NamedStep("take_aggregator_args", take_aggregator_args(inline))
    )
    steps = replace(steps, "fetch_aux_vars", NamedStep("take_aux_vars", take_aux_vars(inline)))
    # Fed-BioMed draws the test subset from torch's seeded generator and keeps it in the state;
    # the same draw orders the training data, so a stock node and this one see the same batches.
    steps = replace(steps, "split_data", split_data_fedbiomed)
    return replace(steps, "upload_results", NamedStep("prepare_reply", prepare_reply()))


def fedbiomed_validation_round(
    ports: Ports, inline: InlineRound, *, secagg_store: secure.SecaggStore | None = None
) -> Round:
    """The validation-only variant (``training: false``): validate the global model, save nothing."""
    training_only = tuple(_RENAMED.get(n, n) for n in TRAINING_ONLY_STEPS if n not in _DROPPED)
    return without(fedbiomed_round(ports, inline, secagg_store=secagg_store), *training_only)
