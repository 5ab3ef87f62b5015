"""Instantiating the plan and feeding it: post_init, global parameters, auxiliary variables."""

from collections.abc import Mapping
from typing import Any

from attrs import evolve
from returns.result import Failure, Result, Success

from fedpipe.compose import Step, declare, require
from fedpipe.context import RoundContext
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import PlanLoader
from fedpipe.request import thaw
from fedpipe.steps._util import call_plan
from fedpipe.steps.fetch import decode_payload
from fedpipe.views import frozen_view

__all__ = ["collect_aux_vars", "ingest_aux_vars", "init_plan", "load_plan", "set_params"]


def load_plan(plans: PlanLoader) -> Step:
    """Import the downloaded source and instantiate ``training_plan_class`` with no arguments."""

    @declare(needs="plan_source", provides="plan")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        return (
            require(ctx.plan_source, step="load_plan", what="training plan source")
            .bind(lambda src: plans.load(src.path, ctx.request.training_plan_class))
            .map(lambda plan: evolve(ctx, plan=plan))
        )

    return step


@declare(needs=("plan", "args", "aggregator_args"))
def init_plan(ctx: RoundContext) -> Result[RoundContext, RoundError]:
    """Call the plan's post_init with the model args, training args and resolved aggregator args.

    The model args (small JSON from the request) are given as a plain mutable copy; the
    aggregator args, which hold decoded files of up to the download limit, as a read-only view
    (``fedpipe.views``): copying them would multiply the memory their decoding was bounded to.
    """
    return (
        require(ctx.plan, step="init_plan", what="training plan")
        .bind(
            lambda plan: require(ctx.args, step="init_plan", what="training arguments").bind(
                lambda args: call_plan(
                    "init_plan",
                    ErrorCode.PLAN_INIT_FAILED,
                    "The training plan could not be initialized with the given arguments",
                    lambda: plan.post_init(
                        model_args=thaw(ctx.request.model_args),
                        training_args=args,
                        aggregator_args=frozen_view(ctx.downloads.aggregator_args),
                    ),
                )
            )
        )
        .map(lambda _: ctx)
    )


@declare(needs=("plan", "params"))
def set_params(ctx: RoundContext) -> Result[RoundContext, RoundError]:
    """Decode the global parameters file (once) and load its ``model_weights`` into the plan.

    Parameters that came inline (``Downloads.params``) are loaded as they are.
    """

    def weights_of(content: Any) -> Result[Mapping[str, Any], RoundError]:
        if isinstance(content, Mapping) and isinstance(content.get("model_weights"), Mapping):
            return Success(content["model_weights"])
        return Failure(
            RoundError(
                code=ErrorCode.BAD_PAYLOAD,
                step="set_params",
                detail="parameters file has no `model_weights` map",
                public="The model parameters file has no `model_weights` map.",
            )
        )

    def global_weights() -> Result[Mapping[str, Any], RoundError]:
        if ctx.downloads.params is not None:  # inline in the request: already decoded
            return Success(ctx.downloads.params)
        return (
            require(ctx.downloads.params_path, step="set_params", what="parameters file")
            .bind(lambda path: decode_payload(path, ctx, "set_params", "model parameters file"))
            .bind(weights_of)
        )

    return require(ctx.plan, step="set_params", what="training plan").bind(
        lambda plan: (
            global_weights()
            .bind(
                lambda weights: call_plan(
                    "set_params",
                    ErrorCode.PARAMS_LOAD_FAILED,
                    "Cannot initialize model parameters",
                    lambda: plan.set_model_params(weights),
                )
            )
            .map(lambda _: ctx)
        )
    )


@declare(needs=("plan", "aux_vars"))
def ingest_aux_vars(ctx: RoundContext) -> Result[RoundContext, RoundError]:
    """Hand the researcher's auxiliary variables to the plan's optimizer (nothing to do without any).

    The plan gets a read-only view of the decoded variables, not a copy (see ``init_plan``).
    """
    if not ctx.downloads.aux_vars:
        return Success(ctx)
    aux = frozen_view(ctx.downloads.aux_vars)
    return (
        require(ctx.plan, step="ingest_aux_vars", what="training plan")
        .bind(
            lambda plan: call_plan(
                "ingest_aux_vars",
                ErrorCode.AUX_VAR_FAILED,
                "TrainingPlan Optimizer failed to ingest the provided auxiliary variables",
                lambda: plan.set_aux_vars(aux),
            )
        )
        .map(lambda _: ctx)
    )


@declare(needs=("plan", "training"), provides="training")
def collect_aux_vars(ctx: RoundContext) -> Result[RoundContext, RoundError]:
    """Collect the optimizer's auxiliary variables after training (e.g. SCAFFOLD state)."""

    def store(aux: object) -> Result[RoundContext, RoundError]:
        if not isinstance(aux, Mapping):
            return Failure(
                RoundError(
                    code=ErrorCode.AUX_VAR_FAILED,
                    step="collect_aux_vars",
                    detail=f"collect_aux_vars returned {type(aux).__name__}, not a mapping",
                    public="Cannot collect Optimizer auxiliary variables.",
                )
            )
        outcome = require(ctx.training, step="collect_aux_vars", what="training outcome")
        return outcome.map(lambda t: evolve(ctx, training=evolve(t, aux_vars=dict(aux))))

    return (
        require(ctx.plan, step="collect_aux_vars", what="training plan")
        .bind(
            lambda plan: call_plan(
                "collect_aux_vars",
                ErrorCode.AUX_VAR_FAILED,
                "Cannot collect Optimizer auxiliary variables",
                plan.collect_aux_vars,
            )
        )
        .bind(store)
    )
