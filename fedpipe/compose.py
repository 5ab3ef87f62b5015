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

Steps may declare what they need from the context and what they provide to later steps (names
of ``RoundContext`` fields or of capabilities), with ``declare`` on the step or ``needs`` and
``provides`` on its ``NamedStep``. Every edit checks the round it returns: a step whose need no
earlier step provides is refused then, with one line naming both steps, not when the round runs:

>>> @declare(provides=("plan",))
... def load(ctx):
...     return Success(ctx)
>>> @declare(needs=("plan",))
... def init(ctx):
...     return Success(ctx)
>>> planned = (NamedStep("load", load), NamedStep("init", init))
>>> without(planned, "load")
Traceback (most recent call last):
...
fedpipe.compose.CompositionError: step 'init' needs 'plan', which only 'load' provides: it was removed

A step that declares nothing (``ok`` above) needs nothing and provides nothing, so rounds of
undeclared steps compose as they always did; a replacement that declares nothing is taken to
provide what the step it replaces provided.
"""

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, TypeAlias, TypeVar

from attrs import field, frozen
from returns.result import Failure, Result, Success

from fedpipe.context import RoundContext
from fedpipe.errors import ErrorCode, RoundError

__all__ = [
    "INITIAL_CONTEXT",
    "CompositionError",
    "NamedStep",
    "Round",
    "Step",
    "StepContract",
    "StepInterrupt",
    "StepObserver",
    "check_round",
    "contract_of",
    "declare",
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
F = TypeVar("F", bound=Callable[..., Any])

Step: TypeAlias = Callable[[RoundContext], Result[RoundContext, RoundError]]

INITIAL_CONTEXT: frozenset[str] = frozenset({"request", "settings", "workdir", "state_id", "deadline"})
"""What a round's first context holds before any step ran (``fedpipe.context.new_context``)."""

_CONTRACT = "__fedpipe_contract__"


@frozen(kw_only=True)
class StepContract:
    """What a step needs from the context and what it provides to the steps after it (names)."""

    needs: frozenset[str] = frozenset()
    provides: frozenset[str] = frozenset()


def _name_set(value: str | Collection[str] | None) -> frozenset[str] | None:
    """``value`` as a set of names (one name may be given alone); None stays None."""
    if value is None:
        return None
    return frozenset((value,)) if isinstance(value, str) else frozenset(value)


def declare(*, needs: str | Collection[str] = (), provides: str | Collection[str] = ()) -> Callable[[F], F]:
    """Mark a step with what it needs and provides; the step is returned unchanged otherwise.

    >>> @declare(needs="update", provides="update")
    ... def clip_update(ctx):
    ...     return Success(ctx)
    >>> sorted(contract_of(clip_update).needs)
    ['update']
    """
    contract = StepContract(
        needs=_name_set(needs) or frozenset(), provides=_name_set(provides) or frozenset()
    )

    def mark(step: F) -> F:
        setattr(step, _CONTRACT, contract)
        return step

    return mark


def contract_of(step: object) -> StepContract | None:
    """The contract ``declare`` put on ``step`` (or a ``NamedStep``'s), or None when it declares nothing."""
    if isinstance(step, NamedStep):
        return step.contract
    contract = getattr(step, _CONTRACT, None)
    return contract if isinstance(contract, StepContract) else None


@frozen
class NamedStep:
    """A step with the name a round is edited by; failures left without a step name get this one.

    ``needs`` and ``provides`` (names) declare the step's contract here; when both are left
    out, the step's own declaration (``declare``) holds, and a step with neither needs nothing
    and provides nothing.
    """

    name: str
    step: Step
    needs: frozenset[str] | None = field(default=None, kw_only=True, converter=_name_set)
    provides: frozenset[str] | None = field(default=None, kw_only=True, converter=_name_set)

    @property
    def contract(self) -> StepContract | None:
        """What this step needs and provides, or None when neither it nor its step declares anything."""
        if self.needs is None and self.provides is None:
            return contract_of(self.step)
        return StepContract(needs=self.needs or frozenset(), provides=self.provides or frozenset())

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


class CompositionError(ValueError):
    """A round that cannot run as composed: ``step`` needs ``need``, which no earlier step provides."""

    def __init__(self, message: str, *, step: str, need: str) -> None:
        super().__init__(message)
        self.step = step
        self.need = need


def names(round_: Sequence[NamedStep]) -> tuple[str, ...]:
    """The step names of a round, in order."""
    return tuple(s.name for s in round_)


def _quoted(step_names: Sequence[str]) -> str:
    """``'a'``, ``'a' and 'b'``, ``'a', 'b' and 'c'``."""
    quoted = [repr(n) for n in step_names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"


def _provides(step: NamedStep) -> frozenset[str]:
    contract = step.contract
    return frozenset() if contract is None else contract.provides


def _unmet(step: str, need: str, round_: Sequence[NamedStep], at: int, before: Sequence[NamedStep]) -> str:
    """The one-line refusal of ``step`` (at index ``at``), whose ``need`` no earlier step provides."""
    head = f"step {step!r} needs {need!r}"
    later = [s.name for s in round_[at + 1 :] if need in _provides(s)]
    if later:
        return f"{head}, which {_quoted(later[:1])} provides only after it"
    kept = set(names(round_))
    gone = [s.name for s in before if need in _provides(s) and s.name not in kept]
    if gone:
        verb, pronoun = ("provides", "it was") if len(gone) == 1 else ("provide", "they were")
        return f"{head}, which only {_quoted(gone)} {verb}: {pronoun} removed"
    swapped = [s.name for s in before if need in _provides(s)]
    if swapped:
        return f"{head}, which {_quoted(swapped[:1])} provided before it was replaced"
    return f"{head}, which no earlier step provides"


def check_round(
    steps: Iterable[NamedStep],
    *,
    given: Collection[str] = INITIAL_CONTEXT,
    before: Sequence[NamedStep] = (),
) -> Round:
    """The steps as a round, once checked: NamedStep values, unique names, every need provided.

    A step's needs must be in ``given`` (what the first context holds) or provided by a step
    before it. Otherwise ``CompositionError`` (a ``ValueError``) says, in one line, which step
    needs what and why nothing provides it: the provider comes only later, was removed or
    replaced (compared with ``before``, the round the edit started from), or does not exist.
    A duplicate name is a ``ValueError``, a value that is not a ``NamedStep`` a ``TypeError``.

    >>> def init(ctx):
    ...     return Success(ctx)
    >>> check_round([NamedStep("init", init, needs="plan")])
    Traceback (most recent call last):
    ...
    fedpipe.compose.CompositionError: step 'init' needs 'plan', which no earlier step provides
    """
    out = tuple(steps)
    seen: set[str] = set()
    for s in out:
        if not isinstance(s, NamedStep):
            raise TypeError(f"a round holds NamedStep values, not {type(s).__name__}")
        if s.name in seen:
            raise ValueError(f"duplicate step name {s.name!r} in round")
        seen.add(s.name)
    # a node builds its rounds anew for every new ports bundle: the verdict depends only on
    # the names and contracts, so a shape seen once is not checked again
    shape = (tuple((s.name, s.contract) for s in out), frozenset(given))
    if shape in _CHECKED:
        return out
    provided = set(given)
    for at, s in enumerate(out):
        contract = s.contract
        if contract is None:
            continue
        missing = sorted(contract.needs - provided)
        if missing:
            raise CompositionError(_unmet(s.name, missing[0], out, at, before), step=s.name, need=missing[0])
        provided |= contract.provides
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED.add(shape)
    return out


_CHECKED: set[tuple[tuple[tuple[str, StepContract | None], ...], frozenset[str]]] = set()
_CHECKED_MAX = 256


def _index(round_: Sequence[NamedStep], name: str) -> int:
    for i, s in enumerate(round_):
        if s.name == name:
            return i
    raise KeyError(f"no step named {name!r} in round; steps are: {', '.join(names(round_))}")


def insert_before(round_: Sequence[NamedStep], name: str, *new: NamedStep) -> Round:
    """A new round with ``new`` steps placed just before the step ``name`` (checked: ``check_round``)."""
    i = _index(round_, name)
    return check_round((*round_[:i], *new, *round_[i:]), before=round_)


def insert_after(round_: Sequence[NamedStep], name: str, *new: NamedStep) -> Round:
    """A new round with ``new`` steps placed just after the step ``name`` (checked: ``check_round``)."""
    i = _index(round_, name) + 1
    return check_round((*round_[:i], *new, *round_[i:]), before=round_)


def replace(round_: Sequence[NamedStep], name: str, step: Step | NamedStep) -> Round:
    """A new round where the step ``name`` runs ``step`` instead (a bare step keeps the name).

    A replacement that declares nothing needs nothing and is taken to provide what the step it
    replaces provided, so that swapping in one's own version of a step keeps the round whole.
    The new round is checked (``check_round``).
    """
    i = _index(round_, name)
    named = step if isinstance(step, NamedStep) else NamedStep(name, step)
    if named.contract is None:
        old = round_[i].contract
        if old is not None and old.provides:
            named = NamedStep(named.name, named.step, provides=old.provides)
    return check_round((*round_[:i], named, *round_[i + 1 :]), before=round_)


def without(round_: Sequence[NamedStep], *drop: str) -> Round:
    """A new round without the steps named in ``drop`` (each must exist; checked: ``check_round``).

    Drop a step together with the steps that need what only it provides, in one call.
    """
    for name in drop:
        _index(round_, name)
    return check_round((s for s in round_ if s.name not in drop), before=round_)


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

    contract = contract_of(step)
    if contract is not None:  # it may run: it needs what ``step`` needs, and may provide what it provides
        setattr(guarded, _CONTRACT, contract)
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
