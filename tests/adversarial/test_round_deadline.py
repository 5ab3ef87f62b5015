"""The owner's wall-time limit of a round: past it the round is stopped, answered round_timeout, nothing saved.

Issue 11 point 7. Time is a FakeClock (``tick=0``: it moves only when a step or plan "takes" time),
so every test is deterministic and none sleeps; two tests use the real clock with a limit so
small that it has certainly passed by the first check.
"""

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hypothesis import given
from hypothesis import strategies as st
from returns.result import Failure, Result, Success

from fedpipe import ErrorCode, execute_round, parse_request, standard_round
from fedpipe.adapters.clock import SystemClock
from fedpipe.compose import NamedStep, insert_after, names, run_steps
from fedpipe.context import RoundContext, new_context
from fedpipe.errors import RoundError
from fedpipe.plan import MetricSink
from fedpipe.rounds import STANDARD_STEPS
from fedpipe.runner import RoundRun
from fedpipe.settings import GpuPolicy, NodeSettings
from fedpipe.testing import FakeClock, FakeNode, ScriptedPlan
from tests.training.support import PLAN_SOURCE, MlpPlan, initial_params, record

_ROOT = Path(tempfile.mkdtemp(prefix="fedpipe-deadline-"))


def node_with(limit: float | None, **settings: Any) -> FakeNode:
    return FakeNode(
        settings=NodeSettings(node_id="deadline-node", root=_ROOT, max_round_seconds=limit, **settings),
        clock=FakeClock(tick=0.0),
    )


def slow(node: FakeNode, seconds: float) -> NamedStep:
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        node.clock.advance(seconds)
        return Success(ctx)

    return NamedStep("slow", step)


def assert_nothing_kept(node: FakeNode) -> None:
    assert node.states.states == {} and node.states.saves == 0
    assert node.exchange.uploads == {}


def assert_timed_out(run: RoundRun, step: str, limit: str) -> None:
    reply = run.reply
    assert reply.error is not None, "the round should have been stopped"
    assert (reply.error.code, reply.error.step) == (ErrorCode.ROUND_TIMEOUT, step)
    assert reply.msg == f"The round ran past the node's limit of {limit} s and was stopped."
    assert reply.to_dict()["success"] is False


# --- between steps -------------------------------------------------------------------------------


@given(st.sampled_from(STANDARD_STEPS))
def test_a_round_past_its_deadline_stops_before_the_next_step(after: str) -> None:
    """Time running out in any step stops the round before the next one, which the error names; nothing is saved."""
    node = node_with(60.0)
    ran: list[str] = []

    def tracked(step: NamedStep) -> NamedStep:
        def run(ctx: RoundContext) -> Result[RoundContext, RoundError]:
            ran.append(step.name)
            return step(ctx)

        return NamedStep(step.name, run)

    round_ = tuple(tracked(s) for s in insert_after(standard_round(node.ports), after, slow(node, 61.0)))
    run = execute_round(node.request(), node.ports, node.settings, round_)
    order = names(round_)
    stopped_before = order[order.index("slow") + 1] if order[-1] != "slow" else None
    if stopped_before is None:  # time ran out after the last step: the round is done
        assert run.reply.success
        return
    assert_timed_out(run, stopped_before, "60")
    assert run.reply.error is not None and f"stopped before step {stopped_before}" in run.reply.error.detail
    assert ran == list(order[: order.index("slow") + 1])  # the slow step ran, nothing after it
    assert node.states.saves == 0


def test_no_limit_means_no_limit() -> None:
    """max_round_seconds=None: a round that takes a fake year still succeeds."""
    node = node_with(None)
    round_ = insert_after(standard_round(node.ports), "train_model", slow(node, 3.2e7))
    assert execute_round(node.request(), node.ports, node.settings, round_).reply.success


def test_the_default_limit_is_four_hours() -> None:
    node = FakeNode(settings=NodeSettings(node_id="n", root=_ROOT), clock=FakeClock(tick=0.0))
    round_ = insert_after(standard_round(node.ports), "fetch_plan", slow(node, 4 * 3600 + 1))
    run = execute_round(node.request(), node.ports, node.settings, round_)
    assert_timed_out(run, "check_approval", "14400")


# --- inside training and validation --------------------------------------------------------------


def test_training_that_runs_past_the_deadline_stops_early() -> None:
    """A ScriptedPlan taking 1 s a sample under a 5.5 s limit trains 6 of its 10 samples, then the round stops."""
    node = node_with(5.5)
    plan = ScriptedPlan(n_samples=10, clock=node.clock, seconds_per_sample=1.0)
    run = execute_round(node.request(plan=lambda: plan), node.ports, node.settings)
    assert_timed_out(run, "train_model", "5.5")
    assert plan.stopped and plan.samples_trained == 6
    assert "after_training_params" not in plan.calls and "save_state" not in plan.calls
    assert_nothing_kept(node)


def test_training_within_the_deadline_is_not_stopped() -> None:
    node = node_with(10.5)
    plan = ScriptedPlan(n_samples=10, clock=node.clock, seconds_per_sample=1.0)
    run = execute_round(node.request(plan=lambda: plan), node.ports, node.settings)
    assert run.reply.success, run.reply.error
    assert not plan.stopped and plan.samples_trained == 10


def test_validation_past_the_deadline_stops_the_round() -> None:
    """Validation never fails a round, except by running past the limit."""
    node = node_with(5.0)
    plan = ScriptedPlan(n_samples=20, clock=node.clock, seconds_per_sample=1.0)
    args = {"epochs": 1, "test_ratio": 0.5, "test_on_global_updates": True}
    run = execute_round(node.request(plan=lambda: plan, training_args=args), node.ports, node.settings)
    assert_timed_out(run, "validate_global", "5")
    assert "training_routine" not in plan.calls
    assert_nothing_kept(node)


class PlanWithoutStop(ScriptedPlan):
    """A plan written before ``stop`` existed: its routine has no such keyword."""

    def training_routine(self, *, report: MetricSink, gpu: GpuPolicy) -> int:  # type: ignore[override]
        assert self.clock is not None
        self.calls.append("training_routine")
        self.clock.advance(100.0)
        return 10


def test_a_plan_without_stop_still_runs_and_is_stopped_when_it_returns() -> None:
    node = node_with(50.0)
    plan = PlanWithoutStop(clock=node.clock)
    run = execute_round(node.request(plan=lambda: plan), node.ports, node.settings)
    assert_timed_out(run, "train_model", "50")
    assert plan.calls.count("training_routine") == 1
    assert_nothing_kept(node)


# --- the torch plan ------------------------------------------------------------------------------


class SlowMlpPlan(MlpPlan):
    """The MLP plan whose every batch takes ``seconds`` of the round's fake clock."""

    def __init__(self, clock: FakeClock | None = None, seconds: float = 0.0) -> None:
        super().__init__()
        self.clock, self.seconds, self.batches = clock, seconds, 0

    def training_step(self, data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        if self.clock is not None:
            self.clock.advance(self.seconds)
        return super().training_step(data, target)


def torch_request(node: FakeNode, factory: Any) -> dict[str, Any]:
    return node.request(
        plan=factory,
        class_name="SlowMlpPlan",
        source=PLAN_SOURCE,
        params=initial_params(),
        dataset=record(),
        training_args={"epochs": 2, "loader_args": {"batch_size": 32}},
    )


def test_a_torch_plan_stops_before_the_batch_past_the_deadline() -> None:
    """4 fake seconds a batch under a 10 s limit: batches start at 0, 4 and 8 s; the fourth (12 s) never runs."""
    node = node_with(10.0, secure_aggregation=False)
    plan = SlowMlpPlan(node.clock, 4.0)
    run = execute_round(torch_request(node, lambda: plan), node.ports, node.settings)
    assert_timed_out(run, "train_model", "10")
    assert plan.batches == 3
    assert_nothing_kept(node)


def test_a_torch_plan_on_the_real_clock_stops_at_its_first_batch_check() -> None:
    """Real clock, a 1 µs limit: loading plan and data take far longer, so the first check inside training stops it.

    The steps run without the runner's between-steps check (``run_steps`` alone), so that the
    stop comes from the check the plan polls, before its first batch.
    """
    limit = 1e-6
    node = FakeNode(
        settings=NodeSettings(
            node_id="real-clock", root=_ROOT, secure_aggregation=False, max_round_seconds=limit
        ),
        clock=SystemClock(),  # type: ignore[arg-type]
    )
    request = parse_request(torch_request(node, SlowMlpPlan)).unwrap()
    workdir = Path(tempfile.mkdtemp(dir=_ROOT))
    ctx = new_context(
        request, node.settings, workdir, "node_state_real", deadline=node.clock.perf_counter() + limit
    )
    result = run_steps(ctx, standard_round(node.ports))
    assert isinstance(result, Failure)
    error = result.failure()
    assert (error.code, error.step) == (ErrorCode.ROUND_TIMEOUT, "train_model")
    (plan,) = node.plans.instances
    assert isinstance(plan, SlowMlpPlan) and plan.batches == 0
    assert_nothing_kept(node)


def test_a_round_on_the_real_clock_with_a_tiny_limit_stops_between_steps() -> None:
    """Real clock through the runner: with a 1 ns limit the round is stopped before its second step."""
    node = FakeNode(
        settings=NodeSettings(node_id="real-clock", root=_ROOT, max_round_seconds=1e-9),
        clock=SystemClock(),  # type: ignore[arg-type]
    )
    run = execute_round(node.request(), node.ports, node.settings)
    assert_timed_out(run, STANDARD_STEPS[1], "1e-09")
    assert node.plans.instances == []
    assert_nothing_kept(node)


def test_stop_is_offered_only_to_routines_that_declare_it() -> None:
    """Backward compatibility: the keyword reaches plans that take it (by name or **kwargs), no others."""
    from fedpipe.plan import accepts_stop

    class Old:
        def training_routine(self, *, report: MetricSink, gpu: GpuPolicy) -> int:
            return 0

    class Kw:
        def testing_routine(self, **kwargs: Any) -> Mapping[str, float]:
            return {}

    assert not accepts_stop(Old().training_routine)
    assert accepts_stop(Kw().testing_routine)
    assert accepts_stop(ScriptedPlan().training_routine) and accepts_stop(MlpPlan().training_routine)


def test_asking_whether_a_plan_takes_stop_does_not_keep_the_plan_alive() -> None:
    """A plan loaded from source is a new class every round: the answer's cache must not hold it after the round."""
    import gc
    import weakref

    from fedpipe.plan import accepts_stop

    namespace: dict[str, Any] = {}
    exec(  # a throw-away class, as the plan loader makes one per round
        "class Fresh:\n    def training_routine(self, *, report, gpu, stop=None):\n        return 0\n",
        namespace,
    )
    fresh = namespace["Fresh"]  # its module (here: namespace) holds it, as a plan module holds its class
    assert accepts_stop(fresh().training_routine) and accepts_stop(fresh().training_routine)
    gone = weakref.ref(fresh)
    del fresh, namespace
    gc.collect()
    assert gone() is None
