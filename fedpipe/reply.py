"""The TrainReply sent to the researcher, built from a round's Result (pure)."""

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from attrs import field, frozen
from returns.result import Failure, Result, Success

from fedpipe.context import RoundContext, Update
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.request import TrainRequest, is_identifier_text

__all__ = ["PROTOCOL_VERSION", "REPLY_FIELDS", "ReplyHeader", "TrainReply", "header_of", "to_reply"]

PROTOCOL_VERSION = "1"

REPLY_FIELDS: tuple[str, ...] = (
    "protocol_version",
    "researcher_id",
    "job_id",
    "state_id",
    "success",
    "node_id",
    "dataset_id",
    "params_url",
    "timing",
    "sample_size",
    "msg",
    "command",
)


@frozen(kw_only=True)
class ReplyHeader:
    """What every reply carries, success or failure: who asked, for which job, from which node."""

    researcher_id: str
    job_id: str
    node_id: str
    dataset_id: str = ""
    state_id: str | None = None


def header_of(
    request: TrainRequest | Mapping[str, Any] | None, node_id: str, state_id: str | None = None
) -> ReplyHeader:
    r"""The reply header for a parsed request, or the best that a raw (possibly invalid) one offers.

    A raw id is copied only when it passes the parser's own check (``is_identifier_text``:
    printable, at most 256 characters, UTF-8 encodable), else it is left empty, so a failure
    reply is always JSON-encodable and never echoes a forged log line.

    >>> header_of({"job_id": "j", "researcher_id": 3}, "n").researcher_id
    ''
    >>> header_of({"job_id": "j\ud800", "researcher_id": "r\n"}, "n").job_id
    ''
    """
    if isinstance(request, TrainRequest):
        return ReplyHeader(
            researcher_id=request.researcher_id,
            job_id=request.job_id,
            node_id=node_id,
            dataset_id=request.dataset_id,
            state_id=state_id,
        )
    raw = request if isinstance(request, Mapping) else {}

    def text(key: str) -> str:
        value = raw.get(key)
        return value if isinstance(value, str) and is_identifier_text(value) else ""

    return ReplyHeader(
        researcher_id=text("researcher_id"),
        job_id=text("job_id"),
        node_id=node_id,
        dataset_id=text("dataset_id"),
    )


@frozen(kw_only=True)
class TrainReply:
    """The node's answer to a train request; ``to_dict()`` has exactly the reference TrainReply fields.

    ``error`` and ``metadata`` stay on the node side object (the error code and step are safe to
    show; the detail is not in the wire dict).
    """

    researcher_id: str
    job_id: str
    node_id: str
    success: bool
    state_id: str | None = None
    dataset_id: str = ""
    params_url: str = ""
    timing: Mapping[str, float] = field(factory=lambda: MappingProxyType({}))
    sample_size: int | None = None
    msg: str = ""
    error: RoundError | None = field(default=None, eq=False, repr=False)
    metadata: Mapping[str, Any] = field(factory=lambda: MappingProxyType({}), eq=False, repr=False)

    @property
    def error_code(self) -> ErrorCode | None:
        """The failure's code, or None on success."""
        return None if self.error is None else self.error.code

    def to_dict(self) -> dict[str, Any]:
        """The wire form: the reference TrainReply fields, nothing more."""
        return {
            "protocol_version": PROTOCOL_VERSION,
            "researcher_id": self.researcher_id,
            "job_id": self.job_id,
            "state_id": self.state_id,
            "success": self.success,
            "node_id": self.node_id,
            "dataset_id": self.dataset_id,
            "params_url": self.params_url,
            "timing": dict(self.timing),
            "sample_size": self.sample_size,
            "msg": self.msg,
            "command": "train",
        }


def _metadata(ctx: RoundContext, update: Update | None) -> dict[str, Any]:
    """The update's metadata (or, without one, the validation before training) and every note.

    The notes are read from the final context, so that those of steps after ``make_update``
    (encryption, the reply's conversion, one's own steps) are there too.
    """
    if update is not None:
        base = dict(update.metadata)
    else:
        before = ctx.validation.before
        base = {"validation_before": None if before is None else dict(before)}
    return {**base, "notes": list(ctx.notes)}


def to_reply(result: Result[RoundContext, RoundError], header: ReplyHeader) -> TrainReply:
    """Build the reply: success fields from the final context, or the error's public text.

    A success reply's ``metadata`` is the update's (validation before and after training, the
    secure-aggregation record, what one's own steps added) with ``notes``: every note of the
    round, whichever step added it.

    A failure reply still carries the researcher, job, node and dataset ids and the state id the
    round would have saved, so the researcher can always attribute it (D5).
    """
    match result:
        case Success(ctx):
            training = ctx.training
            update = ctx.update
            return TrainReply(
                researcher_id=header.researcher_id,
                job_id=header.job_id,
                node_id=header.node_id,
                success=True,
                state_id=ctx.saved_state.state_id if ctx.saved_state else None,
                dataset_id=header.dataset_id,
                params_url=ctx.params_url,
                timing=(
                    {}
                    if training is None
                    else {
                        "rtime_training": training.rtime_training,
                        "ptime_training": training.ptime_training,
                    }
                ),
                sample_size=training.sample_size if training is not None and ctx.request.training else None,
                metadata=_metadata(ctx, update),
            )
        case Failure(error):
            return TrainReply(
                researcher_id=header.researcher_id,
                job_id=header.job_id,
                node_id=header.node_id,
                success=False,
                state_id=header.state_id,
                dataset_id=header.dataset_id,
                msg=error.public,
                error=error,
            )
    raise AssertionError("unreachable: a Result is a Success or a Failure")
