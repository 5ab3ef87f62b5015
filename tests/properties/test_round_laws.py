"""Laws of the round core: first failure wins, composition algebra, total parsing, no leaks."""

import tempfile
from pathlib import Path
from typing import Any

from attrs import evolve
from hypothesis import given
from hypothesis import strategies as st
from returns.result import Failure, Result, Success

from fedpipe import ErrorCode, RoundError, execute_round, parse_request, standard_round
from fedpipe.compose import NamedStep, insert_after, insert_before, names, replace, run_steps, without
from fedpipe.context import RoundContext
from fedpipe.errors import is_public_safe
from fedpipe.reply import REPLY_FIELDS, ReplyHeader, to_reply
from fedpipe.request import TrainRequest
from fedpipe.rounds import STANDARD_STEPS
from fedpipe.settings import NodeSettings
from fedpipe.testing import FakeNode, ScriptedPlan
from fedpipe.testing.strategies import json_values, round_errors, train_requests, valid_request_dicts

_ROOT = Path(tempfile.mkdtemp(prefix="fedpipe-laws-"))


def fresh_node() -> FakeNode:
    return FakeNode(settings=NodeSettings(node_id="law-node", root=_ROOT))


def failing(name: str) -> NamedStep:
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        return Failure(
            RoundError(
                code=ErrorCode.TRAINING_FAILED, step="", detail=f"{name} failed", public=f"{name} failed."
            )
        )

    return NamedStep(name, step)


@given(st.sets(st.sampled_from(STANDARD_STEPS)))
def test_first_failure_short_circuits(failing_steps: set[str]) -> None:
    """For any set of failing steps the reply carries the first one's error and no later step ran."""
    node = fresh_node()
    ran: list[str] = []
    round_ = standard_round(node.ports)
    for name in failing_steps:
        round_ = replace(round_, name, failing(name))

    def tracked(step: NamedStep) -> NamedStep:
        def run(ctx: RoundContext) -> Result[RoundContext, RoundError]:
            ran.append(step.name)
            return step(ctx)

        return NamedStep(step.name, run)

    run = execute_round(node.request(), node.ports, node.settings, tuple(tracked(s) for s in round_))
    first = next((n for n in STANDARD_STEPS if n in failing_steps), None)
    if first is None:
        assert run.reply.success
        assert ran == list(STANDARD_STEPS)
    else:
        assert run.reply.error is not None
        assert run.reply.error.step == first
        assert run.reply.msg == f"{first} failed."
        assert ran == list(STANDARD_STEPS[: STANDARD_STEPS.index(first) + 1])


def ok(name: str) -> NamedStep:
    def step(ctx: Any) -> Result[Any, RoundError]:
        return Success((*ctx, name))

    return NamedStep(name, step)


round_names = st.lists(
    st.text(alphabet="abcdefgh", min_size=1, max_size=3), min_size=1, max_size=8, unique=True
)


@given(round_names, st.data())
def test_insert_then_without_gives_the_round_back(steps: list[str], data: st.DataObject) -> None:
    """insert_before/insert_after a new step, then without it, returns the original round."""
    round_ = tuple(ok(n) for n in steps)
    anchor = data.draw(st.sampled_from(steps))
    new = ok("zz-new")
    for insert in (insert_before, insert_after):
        assert without(insert(round_, anchor, new), "zz-new") == round_


@given(round_names, st.data())
def test_replace_keeps_order_and_length(steps: list[str], data: st.DataObject) -> None:
    """replace swaps one step in place: same names, same length, the new step at the same index."""
    round_ = tuple(ok(n) for n in steps)
    target = data.draw(st.sampled_from(steps))
    replaced = replace(round_, target, failing(target).step)
    assert names(replaced) == names(round_)
    assert replaced[steps.index(target)].step is not round_[steps.index(target)].step


@given(round_names, st.integers(0, 8))
def test_run_steps_is_associative(steps: list[str], cut: int) -> None:
    """Running a + b equals running a then b; the empty round is the identity."""
    round_ = tuple(ok(n) for n in steps)
    a, b = round_[:cut], round_[cut:]
    assert run_steps((), round_) == run_steps((), a).bind(lambda c: run_steps(c, b))
    assert run_steps(("x",), ()) == Success(("x",))


@given(round_names, st.data())
def test_an_interrupt_stops_before_the_step_it_names(steps: list[str], data: st.DataObject) -> None:
    """An interrupt at step k gives its error, after exactly the steps before k; none fires: the plain fold."""
    round_ = tuple(ok(n) for n in steps)
    stop_at = data.draw(st.none() | st.sampled_from(steps))
    asked: list[str] = []

    def interrupt(name: str) -> RoundError | None:
        asked.append(name)
        return RoundError(code=ErrorCode.ROUND_TIMEOUT, step=name) if name == stop_at else None

    result = run_steps((), round_, interrupt=interrupt)
    if stop_at is None:
        assert result == run_steps((), round_) and asked == steps
        return
    k = steps.index(stop_at)
    assert result == Failure(RoundError(code=ErrorCode.ROUND_TIMEOUT, step=stop_at))
    assert asked == steps[: k + 1]
    assert run_steps((), round_[:k]) == Success(tuple(steps[:k]))


@given(round_names, st.data())
def test_unknown_names_are_refused_when_building(steps: list[str], data: st.DataObject) -> None:
    """Editing a round by a name it does not have is an error at build time."""
    round_ = tuple(ok(n) for n in steps)
    for edit in (
        lambda: insert_before(round_, "missing-step", ok("x")),
        lambda: insert_after(round_, "missing-step", ok("x")),
        lambda: replace(round_, "missing-step", ok("x")),
        lambda: without(round_, "missing-step"),
    ):
        try:
            edit()
        except KeyError as err:
            assert "missing-step" in str(err)
        else:
            raise AssertionError("edit by unknown name was accepted")
    dup = data.draw(st.sampled_from(steps))
    try:
        insert_after(round_, dup, ok(dup))
    except ValueError:
        pass
    else:
        raise AssertionError("duplicate step name was accepted")


@given(train_requests())
def test_parse_request_is_total(raw: Any) -> None:
    """parse_request never raises on arbitrary JSON-like input; failures are bad_request naming a field."""
    result = parse_request(raw)
    if isinstance(result, Failure):
        error = result.failure()
        assert error.code is ErrorCode.BAD_REQUEST and "field `" in error.public
        assert is_public_safe(error.public)
    else:
        assert isinstance(result.unwrap(), TrainRequest)


@given(valid_request_dicts())
def test_parse_request_accepts_every_valid_request(raw: dict[str, Any]) -> None:
    """Every well-formed request parses, and its fields survive the round trip to a dict."""
    request = parse_request(raw).unwrap()
    back = request.to_dict()
    for key in ("researcher_id", "job_id", "params_url", "dataset_id", "training", "training_plan_class"):
        assert back[key] == raw[key]
    assert back["round"] == raw.get("round", 0)
    assert back["model_args"] == raw.get("model_args", {})


@given(round_errors, st.text(max_size=10), st.text(max_size=10))
def test_failure_reply_never_leaks(error: RoundError, researcher: str, job: str) -> None:
    """No failure reply's msg contains a filesystem path, a traceback or an exception repr."""
    reply = to_reply(Failure(error), ReplyHeader(researcher_id=researcher, job_id=job, node_id="n"))
    assert is_public_safe(reply.msg)
    assert "/etc/passwd" not in reply.msg and "Traceback" not in reply.msg and "0x7f" not in reply.msg
    assert set(reply.to_dict()) == set(REPLY_FIELDS)
    assert reply.to_dict()["success"] is False


@given(
    st.sampled_from(
        [
            "post_init",
            "set_model_params",
            "load_data",
            "training_routine",
            "collect_aux_vars",
            "after_training_params",
            "save_state",
        ]
    ),
    json_values,
)
def test_plan_failures_never_leak(method: str, junk: Any) -> None:
    """Whatever a plan raises (with paths and reprs in the message), the reply msg stays public-safe."""
    node = fresh_node()

    class Leaky(ScriptedPlan):
        pass

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise OSError(f"cannot read /srv/hospital/{junk!r} <object at 0xdeadbeef>")

    def factory() -> ScriptedPlan:
        plan = Leaky()
        object.__setattr__(plan, method, boom)
        return plan

    reply = execute_round(node.request(plan=factory), node.ports, node.settings).reply
    assert not reply.success
    assert is_public_safe(reply.msg) and "/srv/hospital" not in reply.msg


@given(st.integers(1, 60), st.sampled_from([0, 0.1, 0.25, 0.5, 0.9, 1]))
def test_split_is_stable_across_rounds(n_samples: int, ratio: float) -> None:
    """The test subset of round k+1 equals round k's for the same job and dataset (D14)."""
    node = fresh_node()
    args = {"test_ratio": ratio, "test_on_global_updates": True}
    training = ratio < 1 and n_samples - int(n_samples * ratio + 1e-9) > 0
    first = execute_round(
        node.request(plan=lambda: ScriptedPlan(n_samples=n_samples), training_args=args, training=training),
        node.ports,
        node.settings,
    )
    assert first.reply.success, first.reply.error
    split0 = first.result.unwrap().split
    assert split0 is not None
    if not training:
        return
    second = execute_round(
        node.request(
            plan=lambda: ScriptedPlan(n_samples=n_samples),
            training_args=args,
            state_id=first.reply.state_id,
            round=1,
        ),
        node.ports,
        node.settings,
    )
    split1 = second.result.unwrap().split
    assert split1 is not None and split1.test_indices == split0.test_indices
    shuffled = execute_round(
        node.request(
            plan=lambda: ScriptedPlan(n_samples=n_samples),
            training_args={**args, "shuffle_testing_dataset": True},
            state_id=second.reply.state_id,
            round=2,
        ),
        node.ports,
        node.settings,
    )
    split2 = shuffled.result.unwrap().split
    assert split2 is not None and len(split2.test_indices) == len(split0.test_indices)


def test_context_is_never_mutated() -> None:
    """Steps evolve the context; the context a round starts from is unchanged afterwards."""
    node = fresh_node()
    request = parse_request(node.request()).unwrap()
    from fedpipe.context import new_context

    workdir = _ROOT / "ctx-test"
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = new_context(request, node.settings, workdir, "node_state_x")
    before = evolve(ctx)
    result = run_steps(ctx, standard_round(node.ports))
    assert isinstance(result, Success)
    assert ctx == before and ctx.plan is None and ctx.update is None
