"""Validation on the testing subset, before training (global params) and after (local params).

As in the reference, a failing validation is logged and never fails the round; running past
the owner's wall-time limit does (``round_timeout``), as it does anywhere in the round.
"""

from collections.abc import Mapping

from attrs import evolve
from returns.result import Failure, Result, Success

from fedpipe.compose import Step, declare, timeout_error
from fedpipe.context import RoundContext
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import Clock, Monitor
from fedpipe.steps._util import bound_sink, call_plan, call_routine

__all__ = ["validate_global", "validate_local"]


def _validate(monitor: Monitor, clock: Clock | None, *, before_train: bool) -> Step:
    name = "validate_global" if before_train else "validate_local"

    @declare(needs=("plan", "args", "split"), provides="validation")
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
        deadline, report = ctx.deadline, bound_sink(ctx, monitor)
        outcome = call_plan(
            name,
            ErrorCode.DATA_FAILED,
            "validation failed",
            lambda: call_routine(
                plan.testing_routine,
                clock,
                deadline,
                metric=args.test_metric,
                metric_args=dict(args.test_metric_args),
                report=report,
                before_train=before_train,
            ),
        )
        if clock is not None and deadline is not None and clock.perf_counter() > deadline:
            return Failure(
                timeout_error(name, ctx.settings.max_round_seconds, f"{name} ran past the round's deadline")
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


def validate_global(monitor: Monitor, clock: Clock | None = None) -> Step:
    """Validate the received global parameters when ``test_on_global_updates`` is on.

    With ``clock``, the plan's routine gets a ``stop`` check from the round's deadline and the
    step fails with ``round_timeout`` when the deadline passed while it ran; without one, the
    limit is enforced between steps only.
    """
    return _validate(monitor, clock, before_train=True)


def validate_local(monitor: Monitor, clock: Clock | None = None) -> Step:
    """Validate the locally trained parameters when ``test_on_local_updates`` is on (``clock``: as above)."""
    return _validate(monitor, clock, before_train=False)
