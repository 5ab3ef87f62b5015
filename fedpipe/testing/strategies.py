"""Hypothesis strategies for fedpipe values: valid and arbitrary requests, errors, JSON-like data."""

import string
from typing import Any

from hypothesis import strategies as st

from fedpipe.errors import ErrorCode, RoundError
from fedpipe.request import REQUEST_FIELDS

__all__ = ["json_values", "round_errors", "step_names", "train_requests", "valid_request_dicts"]

_ident = st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=1, max_size=24)
_urls = st.builds(
    lambda host, path: f"http://{host}.example/{path}",
    st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=10),
    st.text(alphabet=string.ascii_lowercase + string.digits + "/_-", max_size=20),
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
"""Arbitrary JSON-like values (what a decoded JSON message can hold)."""

step_names = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=20)


def valid_request_dicts() -> st.SearchStrategy[dict[str, Any]]:
    """Train requests that ``parse_request`` must accept."""
    optional_id = st.none() | _ident
    secagg: st.SearchStrategy[dict[str, Any]] = st.one_of(
        st.just({}),
        st.fixed_dictionaries(
            {
                "secagg_servkey_id": _ident,
                "secagg_biprime_id": _ident,
                "secagg_random": st.floats(0, 1),
                "secagg_clipping_range": st.none() | st.integers(1, 10),
            }
        ),
        st.fixed_dictionaries(
            {
                "secagg_scheme": st.just("lom"),
                "secagg_dh_id": _ident,
                "secagg_parties": st.lists(_ident, min_size=2, max_size=5, unique=True),
                "secagg_random": st.floats(0, 1),
                "secagg_clipping_range": st.none() | st.integers(1, 10),
            }
        ),
    )
    base = st.fixed_dictionaries(
        {
            "researcher_id": _ident,
            "job_id": _ident,
            "params_url": _urls,
            "dataset_id": _ident,
            "training_plan_url": _urls,
            "training_plan_class": st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,15}\Z"),
            "training": st.booleans(),
        },
        optional={
            "state_id": optional_id,
            "training_args": st.dictionaries(st.text(max_size=8), json_values, max_size=3),
            "model_args": st.dictionaries(st.text(max_size=8), json_values, max_size=3),
            "aggregator_args": st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=3),
            "aux_var_urls": st.none() | st.lists(_urls, max_size=3),
            "round": st.integers(0, 10_000),
            "command": st.just("train"),
        },
    )
    return st.tuples(base, secagg).map(lambda pair: {**pair[0], **pair[1]})


def train_requests() -> st.SearchStrategy[Any]:
    """Arbitrary JSON-like inputs that look more or less like train requests (for totality tests)."""
    near = st.dictionaries(
        st.sampled_from([*REQUEST_FIELDS, "command", "extra"]), json_values, max_size=len(REQUEST_FIELDS)
    )
    mutated = st.tuples(valid_request_dicts(), st.sampled_from(REQUEST_FIELDS), json_values).map(
        lambda t: {**t[0], t[1]: t[2]}
    )
    dropped = st.tuples(valid_request_dicts(), st.sampled_from(REQUEST_FIELDS)).map(
        lambda t: {k: v for k, v in t[0].items() if k != t[1]}
    )
    return st.one_of(json_values, near, mutated, dropped)


_leaky_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "/etc/passwd",
            "cannot open /home/node/data/patients.csv",
            'Traceback (most recent call last):\n  File "/srv/x.py", line 3',
            "ValueError('secret')",
            "<fedpipe.plan.Plan object at 0x7f3a2b>",
            "C:\\Users\\node\\db.sqlite",
        ]
    ),
)

round_errors = st.builds(
    RoundError,
    code=st.sampled_from(ErrorCode),
    step=step_names,
    detail=_leaky_text,
    public=_leaky_text,
    retryable=st.booleans(),
)
"""RoundErrors whose texts may try to leak paths, traces and reprs."""
