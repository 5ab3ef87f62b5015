"""Training, and turning the trained plan into the update to upload."""

from collections.abc import Mapping
from typing import Any

from attrs import evolve
from returns.result import Failure, Result, Success

from fedpipe.compose import Step, declare, require, timeout_error
from fedpipe.context import RoundContext, TrainingOutcome, Update
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import Clock, Monitor
from fedpipe.steps._util import bound_sink, call_plan, call_routine, deadline_stop

__all__ = ["deadline_stop", "make_update", "train_model"]


def train_model(monitor: Monitor, clock: Clock) -> Step:
    """Run the plan's training routine on the training subset, timing it in wall and CPU seconds.

    The routine gets a ``stop`` check from the round's deadline (when it declares ``stop``);
    if the deadline has passed when it returns, the round fails with ``round_timeout`` whatever
    the routine returned or raised, and nothing of this training is kept.
    """

    @declare(needs=("plan", "split"), provides="training")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        plan, split = ctx.plan, ctx.split
        if plan is None or split is None:
            return require(None, step="train_model", what="training plan and data split")
        if not split.train_indices:
            return Failure(
                RoundError(
                    code=ErrorCode.NO_TRAINING_DATA,
                    step="train_model",
                    detail="training subset is empty",
                    public="No samples are left for training after the train/test split.",
                )
            )
        report, gpu, deadline = bound_sink(ctx, monitor), ctx.settings.gpu, ctx.deadline
        start_real, start_cpu = clock.perf_counter(), clock.process_time()
        trained = call_plan(
            "train_model",
            ErrorCode.TRAINING_FAILED,
            "Cannot train model in round",
            lambda: call_routine(plan.training_routine, clock, deadline, report=report, gpu=gpu),
        )
        end_real, end_cpu = clock.perf_counter(), clock.process_time()
        if deadline is not None and end_real > deadline:
            outcome = "returned" if isinstance(trained, Success) else f"failed ({trained.failure().detail})"
            return Failure(
                timeout_error(
                    "train_model",
                    ctx.settings.max_round_seconds,
                    f"training {outcome} past the round's deadline after {end_real - start_real:.3f} s",
                )
            )
        return trained.map(
            lambda seen: evolve(
                ctx,
                training=TrainingOutcome(
                    samples_seen=int(seen) if isinstance(seen, int) else 0,
                    sample_size=len(split.train_indices),
                    rtime_training=end_real - start_real,
                    ptime_training=end_cpu - start_cpu,
                ),
            )
        )

    return step


def _metadata(ctx: RoundContext) -> dict[str, Any]:
    # the round's notes are added where the update leaves the node (results file, reply), so
    # that those of the steps after this one are there too
    return {
        "validation_before": None if ctx.validation.before is None else dict(ctx.validation.before),
        "validation_after": None if ctx.validation.after is None else dict(ctx.validation.after),
    }


@declare(needs=("plan", "training"), provides="update")
def make_update(ctx: RoundContext) -> Result[RoundContext, RoundError]:
    """Collect the trained parameters (flat when secure aggregation will encrypt them) and optimizer args."""
    plan, training = ctx.plan, ctx.training
    if plan is None or training is None:
        return require(None, step="make_update", what="trained plan")
    flatten = ctx.secagg is not None or ctx.lom is not None
    weights = call_plan(
        "make_update",
        ErrorCode.TRAINING_FAILED,
        "Cannot collect the trained parameters",
        lambda: plan.after_training_params(flatten=flatten),
    )
    optimizer_args = call_plan(
        "make_update",
        ErrorCode.TRAINING_FAILED,
        "Cannot collect the optimizer arguments",
        plan.optimizer_args,
    )

    def build(pair: tuple[Any, Any]) -> Result[RoundContext, RoundError]:
        params, opt_args = pair
        if not isinstance(opt_args, Mapping):
            opt_args = {}
        update = Update(
            model_weights=params,
            aux_vars=training.aux_vars,
            optimizer_args=dict(opt_args),
            metadata=_metadata(ctx),
        )
        return Success(evolve(ctx, update=update))

    return weights.bind(lambda w: optimizer_args.map(lambda o: (w, o))).bind(build)
