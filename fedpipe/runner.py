"""run_round: parse, run the steps in a fresh workspace, always reply; the only catch-all lives here."""

import logging
import shutil
import tempfile
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from attrs import field, frozen
from returns.result import Failure, Result

from fedpipe.compose import NamedStep, StepInterrupt, run_steps, timeout_error
from fedpipe.context import RoundContext, new_context
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import Ports
from fedpipe.reply import ReplyHeader, TrainReply, header_of, to_reply
from fedpipe.request import TrainRequest, parse_request
from fedpipe.rounds import standard_round, validation_round
from fedpipe.settings import NodeSettings

__all__ = ["RoundRun", "RoundSelector", "execute_round", "run_round"]

log = logging.getLogger("fedpipe.node")

RoundSelector = Callable[[Ports, TrainRequest], Sequence[NamedStep]]


# the last round built of each kind, with the ports it was built for: a node's rounds reuse theirs,
# and nothing is kept of ports that are not the latest (a simulation's are new for every task)
_BUILT: dict[bool, tuple[Ports, Sequence[NamedStep]]] = {}


def default_round(ports: Ports, request: TrainRequest) -> Sequence[NamedStep]:
    """The standard round for training requests, the validation round otherwise.

    Each is built when first asked for and reused while the same ports bundle asks again
    (rounds are immutable data); only the latest bundle's rounds are kept.
    """
    built = _BUILT.get(request.training)
    if built is None or built[0] is not ports:
        built = (ports, standard_round(ports) if request.training else validation_round(ports))
        _BUILT[request.training] = built
    return built[1]


@frozen(kw_only=True)
class RoundRun:
    """A finished round: the reply, the steps' Result and each completed step's wall time."""

    reply: TrainReply
    result: Result[RoundContext, RoundError] = field(eq=False, repr=False)
    step_seconds: tuple[tuple[str, float], ...] = ()


def _overdue(start: float, limit: float, last: list[float]) -> StepInterrupt:
    """The between-steps check of the wall-time limit.

    It compares the clock reading the observer took when the previous step ended (``last[0]``)
    with the deadline, so it adds no clock reading to the round.
    """
    deadline = start + limit

    def interrupt(name: str) -> RoundError | None:
        if last[0] <= deadline:
            return None
        return timeout_error(
            name, limit, f"stopped before step {name}: {last[0] - start:.3f} s into the round"
        )

    return interrupt


def _raw_header(raw_request: Any, node_id: str) -> ReplyHeader:
    """The ids a raw request offers for the reply; none at all if even reading them raises."""
    try:
        return header_of(raw_request if isinstance(raw_request, Mapping) else None, node_id)
    except Exception:  # part of the last-resort boundary: a hostile mapping may raise anything
        return ReplyHeader(researcher_id="", job_id="", node_id=node_id)


def _bug(step: str, exc: Exception) -> RoundError:
    """The ``internal`` error of an exception that escaped ``step``; its traceback goes to the node log."""
    log.error("bug in step %s:\n%s", step, traceback.format_exc())
    return RoundError(code=ErrorCode.INTERNAL, step=step, detail=f"{type(exc).__name__}: {exc}", cause=exc)


def execute_round(
    raw_request: Mapping[str, Any] | TrainRequest,
    ports: Ports,
    settings: NodeSettings,
    rounds: Sequence[NamedStep] | RoundSelector = default_round,
) -> RoundRun:
    """Run one round end to end and always return a reply; never raises for a bad request or a bug.

    The round works in a fresh directory under ``settings.tmp_dir`` that is removed whatever
    happens (D9). An exception escaping parsing or a step is a bug: it is logged with its
    traceback and answered with an ``internal`` error that names the step (``parse_request``
    for parsing, ``(setup)`` before the first step) but reveals nothing else.

    The owner's ``settings.max_round_seconds`` is enforced from ``ports.clock``: the round's
    deadline is its start plus the limit; past it the round is stopped before the next step
    (``round_timeout``, naming the step that did not run), and training and validation get a
    ``stop`` check from it through ``RoundContext.deadline``.
    """
    parsed: TrainRequest | Result[TrainRequest, RoundError]
    try:
        parsed = raw_request if isinstance(raw_request, TrainRequest) else parse_request(raw_request)
    except Exception as exc:  # the last-resort boundary covers parsing too: even its bugs get a reply
        parsed = Failure(_bug("parse_request", exc))
    if isinstance(parsed, Failure):
        log.error("%s", parsed.failure().log_line())
        return RoundRun(reply=to_reply(parsed, _raw_header(raw_request, settings.node_id)), result=parsed)
    request = parsed if isinstance(parsed, TrainRequest) else parsed.unwrap()
    timings: list[tuple[str, float]] = []
    step_names: list[str] = []
    state_id: str | None = None
    workdir: Path | None = None
    result: Result[RoundContext, RoundError]
    try:
        state_id = f"node_state_{ports.new_id()}" if request.training else None
        start = ports.clock.perf_counter()
        last = [start]

        def observe(name: str, _result: Result[RoundContext, RoundError]) -> None:
            now = ports.clock.perf_counter()
            timings.append((name, now - last[0]))
            last[0] = now

        limit = settings.max_round_seconds
        deadline = None if limit is None else start + limit
        interrupt = None if limit is None else _overdue(start, limit, last)
        try:
            workdir = Path(tempfile.mkdtemp(prefix="round_", dir=settings.tmp_dir))
        except FileNotFoundError:
            settings.tmp_dir.mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix="round_", dir=settings.tmp_dir))
        steps = rounds(ports, request) if callable(rounds) else rounds
        context = new_context(request, settings, workdir, state_id, deadline=deadline)
        step_names.extend(s.name for s in steps)  # from here on, an exception is a step's
        result = run_steps(context, steps, observe, interrupt=interrupt)
    except Exception as exc:  # the one last-resort boundary of the steps: the node always replies
        # the step that raised is the one after the last that completed
        failed = step_names[len(timings)] if len(timings) < len(step_names) else "(setup)"
        result = Failure(_bug(failed, exc))
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    match result:
        case Failure(error):
            log.error("round failed for job %s: %s", request.job_id, error.log_line())
        case _:
            for note in result.unwrap().notes:
                log.warning("job %s: %s", request.job_id, note)
    header = header_of(request, settings.node_id, state_id)
    return RoundRun(reply=to_reply(result, header), result=result, step_seconds=tuple(timings))


def run_round(
    raw_request: Mapping[str, Any] | TrainRequest,
    ports: Ports,
    settings: NodeSettings,
    rounds: Sequence[NamedStep] | RoundSelector = default_round,
) -> TrainReply:
    """Run one round and return its reply (see ``execute_round``)."""
    return execute_round(raw_request, ports, settings, rounds).reply
