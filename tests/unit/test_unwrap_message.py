"""``.unwrap()`` of a failed Result says why: the RoundError is the UnwrapFailedError's cause."""

import traceback

import pytest
from hypothesis import given
from hypothesis import strategies as st
from returns.primitives.exceptions import UnwrapFailedError
from returns.result import Failure

from fedpipe.errors import ErrorCode, RoundError


def test_a_failed_upload_unwraps_into_its_message() -> None:
    err = RoundError(code=ErrorCode.UPLOAD_FAILED, step="upload_results", detail="PUT refused: 413")
    with pytest.raises(UnwrapFailedError) as caught:
        Failure(err).unwrap()
    assert caught.value.__cause__ is err
    shown = "".join(traceback.format_exception(caught.value))
    assert "RoundError: [upload_failed] step=upload_results: PUT refused: 413" in shown


@given(
    code=st.sampled_from(list(ErrorCode)),
    step=st.text(max_size=20),
    detail=st.text(max_size=40),
    retryable=st.booleans(),
)
def test_round_errors_stay_values(code: ErrorCode, step: str, detail: str, retryable: bool) -> None:
    # an exception, yet compared and hashed by its fields (results and replies compare errors)
    a = RoundError(code=code, step=step, detail=detail, retryable=retryable)
    b = RoundError(code=code, step=step, detail=detail, retryable=retryable)
    assert a == b and hash(a) == hash(b) and a is not b
    assert str(a) == a.log_line() and "\n" not in str(a)
