"""Rounds as data: named steps, a short-circuiting fold, and edits by step name.

A round is a tuple of ``NamedStep``. ``run_steps`` folds them with bind semantics: the first
failure short-circuits and no later step runs. ``insert_before``, ``insert_after``, ``replace``
and ``without`` return a new round and refuse unknown or duplicate names when the round is built.

>>> from returns.result import Success
>>> def ok(ctx):
...     return Success(ctx + 1)
>>> r = (NamedStep("a", ok), NamedStep("b", ok))
>>> names(insert_after(r, "a", NamedStep("clip", ok)))
('a', 'clip', 'b')
>>> run_steps(0, insert_after(r, "a", NamedStep("clip", ok)))
<Success: 3>

``run_steps`` also takes an ``interrupt`` check, asked before each step whether the round must
stop there (the runner uses it for the owner's wall-time limit):

>>> from fedpipe.errors import ErrorCode, RoundError
>>> def late(name):
...     return RoundError(code=ErrorCode.ROUND_TIMEOUT, step=name) if name == "b" else None
>>> run_steps(0, r, interrupt=late).failure().step
'b'
"""

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias, TypeVar

from attrs import frozen
from returns.result import Failure, Result, Success

from fedpipe.context import RoundContext
from fedpipe.errors import ErrorCode, RoundError

__all__ = [
    "NamedStep",
    "Round",
    "Step",
    "StepInterrupt",
    "StepObserver",
    "insert_after",
    "insert_before",
    "names",
    "replace",
    "require",
    "run_steps",
    "tap",
    "timeout_error",
    "when",
    "without",
]

T = TypeVar("T")

Step: TypeAlias = Callable[[RoundContext], Result[RoundContext, RoundError]]


@frozen
class NamedStep:
    """A step with the name a round is edited by; failures left without a step name get this one."""

    name: str
    step: Step

    def __call__(self, ctx: RoundContext) -> Result[RoundContext, RoundError]:
        result = self.step(ctx)
        if isinstance(result, Failure):
            error = result.failure()
            if not error.step:
                return Failure(error.with_step(self.name))
        return result


Round: TypeAlias = tuple[NamedStep, ...]
StepObserver = Callable[[str, Result[RoundContext, RoundError]], None]
StepInterrupt = Callable[[str], RoundError | None]
"""Asked with the name of the next step before it runs: an error stops the round there."""


def names(round_: Sequence[NamedStep]) -> tuple[str, ...]:
    """The step names of a round, in order."""
    return tuple(s.name for s in round_)


def _checked(steps: Iterable[NamedStep]) -> Round:
    out = tuple(steps)
    seen: set[str] = set()
    for s in out:
        if not isinstance(s, NamedStep):
            raise TypeError(f"a round holds NamedStep values, not {type(s).__name__}")
        if s.name in seen:
            raise ValueError(f"duplicate step name {s.name!r} in round")
        seen.add(s.name)
    return out


def _index(round_: Sequence[NamedStep], name: str) -> int:
    for i, s in enumerate(round_):
        if s.name == name:
            return i
    raise KeyError(f"no step named {name!r} in round; steps are: {', '.join(names(round_))}")


def insert_before(round_: Sequence[NamedStep], name: str, *new: NamedStep) -> Round:
    """A new round with ``new`` steps placed just before the step ``name``."""
    i = _index(round_, name)
    return _checked((*round_[:i], *new, *round_[i:]))


def insert_after(round_: Sequence[NamedStep], name: str, *new: NamedStep) -> Round:
    """A new round with ``new`` steps placed just after the step ``name``."""
    i = _index(round_, name) + 1
    return _checked((*round_[:i], *new, *round_[i:]))


def replace(round_: Sequence[NamedStep], name: str, step: Step | NamedStep) -> Round:
    """A new round where the step ``name`` runs ``step`` instead (a bare step keeps the name)."""
    i = _index(round_, name)
    named = step if isinstance(step, NamedStep) else NamedStep(name, step)
    return _checked((*round_[:i], named, *round_[i + 1 :]))


def without(round_: Sequence[NamedStep], *drop: str) -> Round:
    """A new round without the steps named in ``drop`` (each must exist)."""
    for name in drop:
        _index(round_, name)
    return _checked(s for s in round_ if s.name not in drop)


def run_steps(
    ctx: Any,
    round_: Sequence[Callable[[Any], Result[Any, RoundError]]],
    observer: StepObserver | None = None,
    *,
    interrupt: StepInterrupt | None = None,
) -> Result[Any, RoundError]:
    """Fold the steps over ``ctx`` with bind: the first failure is returned and nothing after it runs.

    ``observer`` (when given) is told each step's name and result as it completes.
    ``interrupt`` (when given) is asked before each step, with its name, whether the round must
    stop; the error it returns is the round's result and that step and the later ones never
    run. It should be cheap: it is called once per step of every round.
    """
    result: Result[Any, RoundError] = Success(ctx)
    named = observer is not None or interrupt is not None
    for step in round_:
        # inline rather than a helper: this loop runs for every step of every round
        name = (getattr(step, "name", "") or getattr(step, "__name__", "?")) if named else ""
        if interrupt is not None:
            stopped = interrupt(name)
            if stopped is not None:
                return Failure(stopped)
        result = step(result.unwrap())
        if observer is not None:
            observer(name, result)
        if isinstance(result, Failure):
            return result
    return result


def when(predicate: Callable[[RoundContext], bool], step: Step) -> Step:
    """A step that runs ``step`` only when ``predicate(ctx)`` holds, else passes ``ctx`` through."""

    def guarded(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        return step(ctx) if predicate(ctx) else Success(ctx)

    return guarded


def tap(effect: Callable[[RoundContext], None]) -> Step:
    """A step that calls ``effect`` (logging, metrics) and passes the context on unchanged."""

    def tapped(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        effect(ctx)
        return Success(ctx)

    return tapped


def timeout_error(step: str, limit: float | None, detail: str) -> RoundError:
    """The ROUND_TIMEOUT error of a round stopped at ``step`` past the owner's ``limit`` (seconds).

    >>> timeout_error("train_model", 14400.0, "stopped after 3 batches").public
    "The round ran past the node's limit of 14400 s and was stopped."
    """
    limit_text = "time limit" if limit is None else f"limit of {limit:g} s"
    return RoundError(
        code=ErrorCode.ROUND_TIMEOUT,
        step=step,
        detail=detail,
        public=f"The round ran past the node's {limit_text} and was stopped.",
    )


def require(value: T | None, *, step: str, what: str) -> Result[T, RoundError]:
    """``value`` as a Success, or an INTERNAL failure saying which earlier step did not run.

    >>> require(3, step="s", what="x")
    <Success: 3>
    >>> require(None, step="train_model", what="training plan").failure().detail
    'train_model needs the training plan, which no earlier step produced'
    """
    if value is None:
        return Failure(
            RoundError(
                code=ErrorCode.INTERNAL,
                step=step,
                detail=f"{step} needs the {what}, which no earlier step produced",
            )
        )
    return Success(value)
