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

from fedpipe.compose import NamedStep, run_steps
from fedpipe.context import RoundContext, new_context
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import Ports
from fedpipe.reply import TrainReply, header_of, to_reply
from fedpipe.request import TrainRequest, parse_request
from fedpipe.rounds import standard_round, validation_round
from fedpipe.settings import NodeSettings

__all__ = ["RoundRun", "RoundSelector", "execute_round", "run_round"]

log = logging.getLogger("fedpipe.node")

RoundSelector = Callable[[Ports, TrainRequest], Sequence[NamedStep]]


_BUILT: dict[int, tuple[Ports, Sequence[NamedStep], Sequence[NamedStep]]] = {}


def default_round(ports: Ports, request: TrainRequest) -> Sequence[NamedStep]:
    """The standard round for training requests, the validation round otherwise.

    Both are built once per ports bundle (rounds are immutable data) and reused.
    """
    built = _BUILT.get(id(ports))
    if built is None or built[0] is not ports:
        if len(_BUILT) > 32:
            _BUILT.clear()
        built = (ports, standard_round(ports), validation_round(ports))
        _BUILT[id(ports)] = built
    return built[1] if request.training else built[2]


@frozen(kw_only=True)
class RoundRun:
    """A finished round: the reply, the steps' Result and each completed step's wall time."""

    reply: TrainReply
    result: Result[RoundContext, RoundError] = field(eq=False, repr=False)
    step_seconds: tuple[tuple[str, float], ...] = ()


def execute_round(
    raw_request: Mapping[str, Any] | TrainRequest,
    ports: Ports,
    settings: NodeSettings,
    rounds: Sequence[NamedStep] | RoundSelector = default_round,
) -> RoundRun:
    """Run one round end to end and always return a reply; never raises for a bad request or a bug.

    The round works in a fresh directory under ``settings.tmp_dir`` that is removed whatever
    happens (D9). An exception escaping a step is a bug: it is logged with its traceback and
    answered with an ``internal`` error that names the step but reveals nothing else.
    """
    parsed = raw_request if isinstance(raw_request, TrainRequest) else parse_request(raw_request)
    if isinstance(parsed, Failure):
        error = parsed.failure()
        log.error("%s", error.log_line())
        header = header_of(raw_request if isinstance(raw_request, Mapping) else None, settings.node_id)
        return RoundRun(reply=to_reply(Failure(error), header), result=Failure(error))
    request = parsed if isinstance(parsed, TrainRequest) else parsed.unwrap()
    state_id = f"node_state_{ports.new_id()}" if request.training else None
    header = header_of(request, settings.node_id, state_id)
    timings: list[tuple[str, float]] = []
    step_names: list[str] = []
    last = [ports.clock.perf_counter()]

    def observe(name: str, _result: Result[RoundContext, RoundError]) -> None:
        now = ports.clock.perf_counter()
        timings.append((name, now - last[0]))
        last[0] = now

    workdir: Path | None = None
    result: Result[RoundContext, RoundError]
    try:
        try:
            workdir = Path(tempfile.mkdtemp(prefix="round_", dir=settings.tmp_dir))
        except FileNotFoundError:
            settings.tmp_dir.mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix="round_", dir=settings.tmp_dir))
        steps = rounds(ports, request) if callable(rounds) else rounds
        step_names.extend(s.name for s in steps)
        result = run_steps(new_context(request, settings, workdir, state_id), steps, observe)
    except Exception as exc:  # the one last-resort boundary: the node always replies
        # the step that raised is the one after the last that completed
        failed = step_names[len(timings)] if len(timings) < len(step_names) else "(setup)"
        log.error("bug in step %s:\n%s", failed, traceback.format_exc())
        result = Failure(
            RoundError(
                code=ErrorCode.INTERNAL,
                step=failed,
                detail=f"{type(exc).__name__}: {exc}",
                cause=exc,
            )
        )
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    match result:
        case Failure(error):
            log.error("round failed for job %s: %s", request.job_id, error.log_line())
        case _:
            for note in result.unwrap().notes:
                log.warning("job %s: %s", request.job_id, note)
    return RoundRun(reply=to_reply(result, header), result=result, step_seconds=tuple(timings))


def run_round(
    raw_request: Mapping[str, Any] | TrainRequest,
    ports: Ports,
    settings: NodeSettings,
    rounds: Sequence[NamedStep] | RoundSelector = default_round,
) -> TrainReply:
    """Run one round and return its reply (see ``execute_round``)."""
    return execute_round(raw_request, ports, settings, rounds).reply
