"""Validation on the testing subset, before training (global params) and after (local params).

As in the reference, a failing validation is logged and never fails the round.
"""

from collections.abc import Mapping

from attrs import evolve
from returns.result import Result, Success

from fedpipe.compose import Step
from fedpipe.context import RoundContext
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import Monitor
from fedpipe.steps._util import bound_sink, call_plan

__all__ = ["validate_global", "validate_local"]


def _validate(monitor: Monitor, *, before_train: bool) -> Step:
    name = "validate_global" if before_train else "validate_local"

    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        args, plan, split = ctx.args, ctx.plan, ctx.split
        if args is None or plan is None:
            return Success(ctx)
        wanted = args.test_on_global_updates if before_train else args.test_on_local_updates
        if not wanted:
            return Success(ctx)
        if split is None or not split.test_indices:
            return Success(
                ctx.noted(f"{name}: no testing subset (test_ratio is 0 or the dataset is too small)")
            )
        outcome = call_plan(
            name,
            ErrorCode.DATA_FAILED,
            "validation failed",
            lambda: plan.testing_routine(
                metric=args.test_metric,
                metric_args=dict(args.test_metric_args),
                report=bound_sink(ctx, monitor),
                before_train=before_train,
            ),
        )
        if not isinstance(outcome, Success):
            return Success(ctx.noted(f"{name}: {outcome.failure().detail}"))
        values = outcome.unwrap()
        metrics = dict(values) if isinstance(values, Mapping) else {}
        validation = (
            evolve(ctx.validation, before=metrics) if before_train else evolve(ctx.validation, after=metrics)
        )
        return Success(evolve(ctx, validation=validation))

    return step


def validate_global(monitor: Monitor) -> Step:
    """Validate the received global parameters when ``test_on_global_updates`` is on."""
    return _validate(monitor, before_train=True)


def validate_local(monitor: Monitor) -> Step:
    """Validate the locally trained parameters when ``test_on_local_updates`` is on."""
    return _validate(monitor, before_train=False)
