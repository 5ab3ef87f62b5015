"""Helpers shared by the built-in steps: calling foreign plan code, binding the monitor."""

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from returns.result import Failure, Result, Success

from fedpipe.context import RoundContext
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.plan import MetricSink, Scalars, StopCheck, accepts_stop, never_stop
from fedpipe.ports import Clock, MetricEvent, Monitor

T = TypeVar("T")


def call_plan(step: str, code: ErrorCode, what: str, fn: Callable[[], T]) -> Result[T, RoundError]:
    """Run user plan code: its value as a Success, any exception as a ``code`` failure.

    Plan code is foreign, so every exception it raises is expected here; the detail (type and
    message) goes to the node log, the researcher reads only ``what``. A plan calling ``exit()``
    (``SystemExit``) fails its round the same way: it must not stop the node.
    """
    try:
        return Success(fn())
    except (Exception, SystemExit) as exc:
        return Failure(
            RoundError(
                code=code,
                step=step,
                detail=f"{what}: {type(exc).__name__}: {exc}",
                public=f"{what}.",
                cause=exc,
            )
        )


def deadline_stop(clock: Clock, deadline: float | None) -> StopCheck:
    """The ``stop`` check a plan polls: true once ``clock`` reads past ``deadline`` (never if None)."""
    if deadline is None:
        return never_stop
    return lambda: clock.perf_counter() > deadline


def call_routine(routine: Callable[..., T], clock: Clock | None, deadline: float | None, **kwargs: Any) -> T:
    """Call a plan routine with ``kwargs``, plus a ``stop`` check from the round's deadline.

    ``stop`` is passed only when there is a clock and a deadline and the routine declares it
    (``fedpipe.plan.accepts_stop``): plans written before the keyword existed are called as before.
    """
    if clock is not None and deadline is not None and accepts_stop(routine):
        return routine(**kwargs, stop=deadline_stop(clock, deadline))
    return routine(**kwargs)


def bound_sink(ctx: RoundContext, monitor: Monitor) -> MetricSink:
    """A MetricSink for the plan that tags scalars with this round's ids; it never raises."""
    request = ctx.request

    def sink(scalars: Scalars) -> None:
        event = MetricEvent(
            node_id=ctx.settings.node_id,
            job_id=request.job_id,
            researcher_id=request.researcher_id,
            round=request.round,
            metric=dict(scalars.metric),
            iteration=scalars.iteration,
            epoch=scalars.epoch,
            train=scalars.train,
            test=scalars.test,
            test_on_global_updates=scalars.test_on_global_updates,
            test_on_local_updates=scalars.test_on_local_updates,
            num_samples_trained=scalars.num_samples_trained,
            total_samples=scalars.total_samples,
            batch_samples=scalars.batch_samples,
            num_batches=scalars.num_batches,
        )
        # A monitor must never break training; the adapters log what they drop.
        with contextlib.suppress(Exception):
            monitor.report(event)

    return sink
