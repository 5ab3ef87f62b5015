"""Adversarial messages: echoed names are escaped, log lines stay single, every reply encodes."""

import json
from collections.abc import Mapping
from typing import Any

import pytest
from attrs import evolve
from hypothesis import given
from hypothesis import strategies as st
from returns.result import Failure

from fedpipe.args import parse_training_args_mapping
from fedpipe.errors import ErrorCode, RoundError, is_printable, is_public_safe, printable
from fedpipe.reply import header_of, to_reply
from fedpipe.request import parse_request
from fedpipe.testing.strategies import round_errors
from tests.adversarial.test_parsing import (
    FIELD_PATHS,
    anything,
    deep,
    hostile_text,
    sent_as_json,
    substituted,
    valid_request,
)

FORGERIES = [
    "x\n[ok] job done",
    "x\r[ok] job done",
    "x\x1b[31mred",
    "x\u2028[ok] job done",
    "x\u2029y",
    "x\x85y",
    "x\ud800y",
    "\u202ex",
]
every_text = st.one_of(
    hostile_text, st.text(st.characters(codec=None, categories=["Cc", "Cs", "Zl", "Zp", "Cf"]))
)


def one_line(text: str) -> bool:
    """Single-line in every sense a log reader or terminal knows, and encodable as UTF-8."""
    text.encode("utf-8")
    return len(text.splitlines()) <= 1 and is_printable(text)


def assert_clean(error: RoundError) -> None:
    for text in (error.public, error.detail, error.step, error.log_line()):
        assert one_line(text), repr(text)
    assert is_public_safe(error.public)


def failures_echoing(name: str) -> list[RoundError]:
    """The errors whose texts echo a researcher-chosen name."""
    unknown_field = parse_request({**valid_request(), name: 1})
    unknown_arg = parse_training_args_mapping({name: 1})
    unknown_dp = parse_training_args_mapping({"dp": {"sigma": 1, "clip": 1, name: 0}})
    nested = parse_request(substituted(("model_args",), {name: float("nan")}))
    found = [r.failure() for r in (unknown_field, unknown_arg, unknown_dp, nested) if isinstance(r, Failure)]
    assert len(found) == 4
    return found


@pytest.mark.parametrize("name", FORGERIES, ids=ascii)
def test_echoed_names_are_escaped(name: str) -> None:
    """A name carrying a newline, an escape sequence or a lone surrogate is echoed escaped."""
    escaped = printable(name)
    assert escaped != name and "\\" in escaped
    for error in failures_echoing(name):
        assert_clean(error)
        assert escaped in error.public and escaped in error.detail, error


def test_a_name_that_escapes_into_a_path_look_is_withheld_from_the_researcher() -> None:
    """Two escapes read like a Windows path piece to the leak check: the log has it, the reply not."""
    name = "x\udfffy\u202e"
    for error in failures_echoing(name):
        assert_clean(error)
        assert printable(name) in error.detail
        assert "(name withheld: see the node log)" in error.public or error.public.endswith(
            "(at a nested key)."
        )


def test_echoed_names_are_cut() -> None:
    name = "n" * 1000
    for error in failures_echoing(name):
        assert_clean(error)
        assert name not in error.public and name not in error.detail
        assert len(error.public) < 300


@given(error=round_errors, step=every_text, detail=every_text, public=every_text)
def test_any_round_error_is_one_encodable_line(
    error: RoundError, step: str, detail: str, public: str
) -> None:
    """Whatever a caller passes, public, detail, step and log_line are single-line UTF-8 text."""
    built = RoundError(code=error.code, step=step, detail=detail, public=public)
    assert_clean(built)
    assert_clean(error)
    again = evolve(built, retryable=True).with_step(built.step)
    assert (again.public, again.detail, again.step) == (built.public, built.detail, built.step)  # idempotent


def test_a_leak_hidden_behind_a_control_character_is_still_caught() -> None:
    """Escaping must not hide a path: the leak check sees the raw text too."""
    error = RoundError(code=ErrorCode.UPLOAD_FAILED, step="s", detail="d", public="see\n/etc/node/secret")
    assert error.public == "The results could not be uploaded."


@given(text=every_text, limit=st.none() | st.integers(0, 80))
def test_printable_is_printable_bounded_and_idempotent(text: str, limit: int | None) -> None:
    out = printable(text, limit)
    assert one_line(out)
    assert printable(out, None) == out
    if limit is not None:
        assert len(out) <= 6 * limit + 3  # at most \uXXXX per character, plus the ellipsis
    if is_printable(text) and (limit is None or len(text) <= limit):
        assert out == text


def reply_dict(raw: Any, error: RoundError) -> dict[str, Any]:
    return to_reply(Failure(error), header_of(raw if isinstance(raw, Mapping) else None, "node-1")).to_dict()


ids_strategy = st.one_of(hostile_text, anything)
near_requests = st.one_of(
    anything,
    st.fixed_dictionaries(
        {"researcher_id": ids_strategy, "job_id": ids_strategy, "dataset_id": ids_strategy}
    ),
    st.tuples(st.sampled_from(FIELD_PATHS), anything).map(lambda t: substituted(*t)),
    st.tuples(ids_strategy, ids_strategy).map(
        lambda t: {**substituted(("researcher_id",), t[0]), "job_id": t[1], "model_args": {"x": float("nan")}}
    ),
)


@given(raw=near_requests)
def test_any_request_gets_a_json_encodable_failure_reply(raw: Any) -> None:
    """parse_request on anything, then the reply the runner would send: strict JSON, UTF-8."""
    result = parse_request(raw)
    if isinstance(result, Failure):
        wire = reply_dict(raw, result.failure())
        sent_as_json(wire)
        assert wire["success"] is False and wire["msg"] == result.failure().public


@given(raw=near_requests, error=round_errors, public=every_text, detail=every_text)
def test_any_error_gets_a_json_encodable_failure_reply(
    raw: Any, error: RoundError, public: str, detail: str
) -> None:
    """Any RoundError, built from any text, answered for any raw request: strict JSON, UTF-8."""
    for err in (error, evolve(error, public=public, detail=detail)):
        sent_as_json(reply_dict(raw, err))


@pytest.mark.parametrize(
    "bad", [*FORGERIES, "", "x" * 257, 3, None, ["r"], b"r"], ids=lambda v: ascii(v)[:16]
)
def test_header_copies_only_ids_the_parser_would_accept(bad: Any) -> None:
    """A raw id is copied only when it passes the parser's check, else the header leaves it empty."""
    raw = {"researcher_id": bad, "job_id": "job-1", "dataset_id": bad}
    header = header_of(raw, "node-1")
    assert header.researcher_id == "" and header.dataset_id == "" and header.job_id == "job-1"
    assert header_of({"job_id": "j" * 256}, "n").job_id == "j" * 256
    assert (
        header_of({"job_id": "j\u00e9-\u4e2d"}, "n").job_id == "j\u00e9-\u4e2d"
    )  # printable non-ASCII is kept


ADVERSARY_REQUESTS = {
    "huge secagg_random": substituted(("secagg_random",), json.loads("1" + "0" * 400)),
    "huge dp.sigma": substituted(("training_args", "dp", "sigma"), 10**400),
    "NaN": substituted(("model_args", "hidden"), float("nan")),
    "Infinity": substituted(("training_args", "test_ratio"), float("inf")),
    "surrogate researcher": substituted(("researcher_id",), json.loads('"\\ud800"')),
    "forged field": {**valid_request(), "x\n[INFO] fedpipe.node: round ok": 1},
    "forged job": substituted(("job_id",), "j\r\n[INFO] round ok"),
    "deep": substituted(("model_args",), {"k": deep(100_000)}),
}


@pytest.mark.parametrize("name", ADVERSARY_REQUESTS)
def test_the_adversary_requests_get_one_clean_reply_and_log_line(
    name: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Through run_round: a strict-JSON failure reply and single-line node log records."""
    from fedpipe.runner import run_round
    from fedpipe.settings import NodeSettings
    from fedpipe.testing import FakeNode

    node = FakeNode(settings=NodeSettings(node_id="node-1", root=tmp_path / "node"))
    with caplog.at_level("INFO", logger="fedpipe.node"):
        reply = run_round(ADVERSARY_REQUESTS[name], node.ports, node.settings)
    wire = reply.to_dict()
    sent_as_json(wire)
    assert wire["success"] is False and reply.error is not None
    assert reply.error.code in (ErrorCode.BAD_REQUEST, ErrorCode.BAD_TRAINING_ARGS)
    assert caplog.records and all(one_line(r.getMessage()) for r in caplog.records)
