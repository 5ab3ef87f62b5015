"""Adversarial parsing: any value in any request field gives a typed failure that names the field."""

import copy
import json
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from returns.result import Failure, Success

from fedpipe.args import TrainingArgs, parse_training_args_mapping
from fedpipe.errors import ErrorCode, is_public_safe
from fedpipe.request import (
    MAX_DEPTH,
    REQUEST_FIELDS,
    TrainRequest,
    freeze_mapping,
    json_problem,
    parse_request,
    thaw,
)

# --- what an adversary sends ----------------------------------------------------------------

surrogates = st.integers(0xD800, 0xDFFF).map(chr)
nasty_chars = st.sampled_from(["\n", "\r", "\x00", "\x1b[31m", "\x7f", "\x85", "\u2028", "\u2029", "\u202e"])
hostile_text = st.one_of(
    st.text(max_size=12),
    st.lists(st.one_of(st.characters(), surrogates, nasty_chars), max_size=8).map("".join),
    st.sampled_from(["", " /etc/passwd/", "C:\\x\\", "Traceback (most recent call last)", "a.b"]),
)
hostile_ints = st.one_of(st.integers(), st.sampled_from([10**400, -(10**400), 2**63, 2**64, -(2**63) - 1]))
json_leaves = st.one_of(
    st.none(), st.booleans(), hostile_ints, st.floats(), hostile_text
)  # st.floats() draws NaN and infinities too
json_like: st.SearchStrategy[Any] = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(hostile_text, inner, max_size=4),
    ),
    max_leaves=12,
)
"""What JSON (and a careless in-process caller) can put in a field, NaN and surrogates included."""


class Opaque:
    """An in-process value that JSON cannot hold."""


non_json = st.one_of(
    st.sampled_from([b"bytes", bytearray(b"x"), {1, 2}, frozenset({"a"}), Opaque(), 1j, Ellipsis]),
    st.dictionaries(st.one_of(st.integers(), st.none(), st.tuples(st.integers())), json_leaves, min_size=1),
)
anything = st.one_of(
    json_like,
    non_json,
    st.recursive(
        non_json, lambda inner: st.lists(inner, max_size=2) | st.dictionaries(hostile_text, inner, max_size=2)
    ),
)


def sent_as_json(value: Any) -> bytes:
    """``value`` encoded as the node's HTTP client sends it: strict JSON in UTF-8, non-ASCII as is.

    Not ``json.dumps``'s default, which escapes a lone surrogate to ASCII and so never fails on one.
    """
    return json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")


def valid_request() -> dict[str, Any]:
    """A request that parses, with every optional field and every training argument present."""
    return {
        "researcher_id": "researcher-1",
        "job_id": "job-1",
        "params_url": "http://exchange.example/params",
        "dataset_id": "ds-1",
        "training_plan_url": "http://exchange.example/plan",
        "training_plan_class": "Plan",
        "training": True,
        "state_id": "node_state_1",
        "training_args": {
            "optimizer_args": {"lr": 0.01},
            "loader_args": {"batch_size": 8, "shuffle": True},
            "epochs": 1,
            "num_updates": None,
            "dry_run": False,
            "batch_maxnum": 2,
            "test_ratio": 0.2,
            "test_on_local_updates": True,
            "test_on_global_updates": True,
            "test_metric": "accuracy",
            "test_metric_args": {"average": "macro"},
            "shuffle_testing_dataset": False,
            "log_interval": 10,
            "fedprox_mu": 0.1,
            "use_gpu": False,
            "dp": {"type": "local", "sigma": 1.0, "clip": 1.0},
            "share_persistent_buffers": True,
            "random_seed": 7,
        },
        "model_args": {"hidden": 4, "layers": [8, 4]},
        "aggregator_args": {"aggregator_name": "fedavg", "extra": {"k": [1, 2.5, None]}},
        "aux_var_urls": ["http://exchange.example/aux"],
        "round": 1,
        "secagg_servkey_id": "servkey-1",
        "secagg_biprime_id": "biprime-1",
        "secagg_random": 0.5,
        "secagg_clipping_range": 3,
        "command": "train",
        "protocol_version": "1",
        "request_id": "req-1",
    }


TRAINING_ARGUMENTS = tuple(a.name for a in attrs.fields(TrainingArgs))
# Every place a value can be substituted: each top-level field, each training argument, and
# the nested places whose parsers the adversary found fragile.
FIELD_PATHS: tuple[tuple[str | int, ...], ...] = (
    *((name,) for name in (*REQUEST_FIELDS, "command", "protocol_version", "request_id")),
    *(("training_args", name) for name in TRAINING_ARGUMENTS),
    ("training_args", "dp", "type"),
    ("training_args", "dp", "sigma"),
    ("training_args", "dp", "clip"),
    ("training_args", "loader_args", "batch_size"),
    ("training_args", "optimizer_args", "lr"),
    ("training_args", "test_metric_args", "average"),
    ("model_args", "hidden"),
    ("model_args", "layers", 1),
    ("aggregator_args", "extra", "k"),
    ("aux_var_urls", 0),
)


def dotted(path: tuple[str | int, ...]) -> str:
    out = str(path[0])
    for part in path[1:]:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def substituted(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    request = valid_request()
    target: Any = request
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return request


def names(public: str, path: str, top: str) -> bool:
    """True when ``public`` names ``path`` (or a place inside it), or its top field for a hidden key."""
    return f"`{path}" in public or (f"`{top}` " in public and public.endswith("(at a nested key)."))


def assert_clean_failure(result: Any, code: ErrorCode) -> str:
    assert isinstance(result, Failure), result
    error = result.failure()
    assert error.code is code, error
    assert is_public_safe(error.public) and "\n" not in error.public and "\n" not in error.log_line()
    error.public.encode("utf-8")
    error.detail.encode("utf-8")
    return str(error.public)


def test_the_valid_request_parses_with_its_training_args() -> None:
    """The base of every substitution is valid, so a failure can only come from the substitution."""
    request = parse_request(valid_request()).unwrap()
    args = parse_training_args_mapping(request.training_args).unwrap()
    assert args.dp is not None and args.dp.sigma == 1.0 and request.secagg_random == 0.5


@pytest.mark.parametrize("path", FIELD_PATHS, ids=dotted)
@given(value=anything)
def test_any_value_in_any_field_is_refused_by_name_or_parsed(path: tuple[str | int, ...], value: Any) -> None:
    """parse_request (and then parse_training_args) never raises; a failure names the dotted field."""
    where = dotted(path)
    result = parse_request(substituted(path, value))
    if isinstance(result, Failure):
        public = assert_clean_failure(result, ErrorCode.BAD_REQUEST)
        assert names(public, where, str(path[0])), public
        return
    request = result.unwrap()
    assert isinstance(request, TrainRequest)
    sent_as_json(request.to_dict())  # what it holds can be sent on
    if path[0] != "training_args":
        return
    args = parse_training_args_mapping(request.training_args)
    if isinstance(args, Failure):
        public = assert_clean_failure(args, ErrorCode.BAD_TRAINING_ARGS)
        assert public.startswith("Invalid training arguments: ")
        if len(path) > 1:
            assert names(public, dotted(path[1:]), str(path[1])), public
    else:
        assert isinstance(args.unwrap(), TrainingArgs)


@pytest.mark.parametrize(
    ("parse", "known", "code", "prefix", "parsed"),
    [
        (
            parse_request,
            REQUEST_FIELDS,
            ErrorCode.BAD_REQUEST,
            "Invalid train request: field `",
            TrainRequest,
        ),
        (
            parse_training_args_mapping,
            TRAINING_ARGUMENTS,
            ErrorCode.BAD_TRAINING_ARGS,
            "Invalid training arguments: training argument",
            TrainingArgs,
        ),
    ],
    ids=["parse_request", "parse_training_args_mapping"],
)
@given(data=st.data())
def test_a_parser_is_total_on_any_top_level_value(
    parse: Any, known: tuple[str, ...], code: ErrorCode, prefix: str, parsed: type, data: st.DataObject
) -> None:
    """Called in-process on anything (or on a map of known and hostile names), a parser gives its value or its failure."""
    raw = data.draw(
        st.one_of(anything, st.dictionaries(st.one_of(hostile_text, st.sampled_from(known)), anything))
    )
    result = parse(raw)
    if isinstance(result, Failure):
        assert assert_clean_failure(result, code).startswith(prefix)
    else:
        assert isinstance(result.unwrap(), parsed)


@given(name=st.sampled_from(TRAINING_ARGUMENTS), value=anything)
def test_a_bad_training_argument_is_named(name: str, value: Any) -> None:
    """A failure for a single argument names that argument (or a place inside it)."""
    result = parse_training_args_mapping({name: value})
    if isinstance(result, Failure):
        public = assert_clean_failure(result, ErrorCode.BAD_TRAINING_ARGS)
        assert names(public, name, name), public


# --- the adversary's cases, as regression examples --------------------------------------------

HUGE = json.loads("1" + "0" * 400)  # how `1e400` written as a JSON integer arrives


def test_a_json_integer_of_401_digits_is_the_huge_int() -> None:
    assert HUGE == 10**400 and isinstance(HUGE, int)


@pytest.mark.parametrize(
    "path",
    [
        ("secagg_random",),
        ("training_args", "test_ratio"),
        ("training_args", "fedprox_mu"),
        ("training_args", "dp", "sigma"),
        ("training_args", "dp", "clip"),
        ("model_args", "hidden"),
    ],
    ids=dotted,
)
@pytest.mark.parametrize("value", [HUGE, -HUGE, float("nan"), float("inf"), float("-inf")], ids=repr)
def test_huge_ints_and_non_finite_numbers_are_refused_by_name(path: tuple[str, ...], value: Any) -> None:
    """10**400, NaN and infinities: a bad_request naming the field, never OverflowError."""
    public = assert_clean_failure(parse_request(substituted(path, value)), ErrorCode.BAD_REQUEST)
    assert public == f"Invalid train request: field `{dotted(path)}` must be a finite number." or (
        path == ("secagg_random",)
        and public == "Invalid train request: field `secagg_random` must be a finite number or null."
    )


@pytest.mark.parametrize("name", ["test_ratio", "fedprox_mu", "dp.sigma", "dp.clip"])
@pytest.mark.parametrize("value", [HUGE, -HUGE, float("nan"), float("inf")], ids=repr)
def test_training_args_parser_refuses_huge_and_non_finite_numbers(name: str, value: Any) -> None:
    """The training-args parser called directly: bad_training_args in its usual shape."""
    raw: dict[str, Any] = {"dp": {"type": "local", "sigma": 1.0, "clip": 1.0}}
    if name.startswith("dp."):
        raw["dp"][name[3:]] = value
    else:
        raw[name] = value
    public = assert_clean_failure(parse_training_args_mapping(raw), ErrorCode.BAD_TRAINING_ARGS)
    assert public == f"Invalid training arguments: training argument `{name}` must be a finite number."


def test_numbers_that_a_float_can_hold_are_accepted() -> None:
    """Ints with a finite float value are fine where a float is natural, huge ones are not."""
    args = parse_training_args_mapping({"test_ratio": 1, "fedprox_mu": 10**30}).unwrap()
    assert args.test_ratio == 1.0 and args.fedprox_mu == 1e30
    assert parse_training_args_mapping({"test_ratio": 0}).unwrap().test_ratio == 0.0
    assert parse_request(substituted(("secagg_random",), 1)).unwrap().secagg_random == 1.0


@pytest.mark.parametrize("name", ["epochs", "num_updates", "batch_maxnum", "log_interval", "random_seed"])
def test_counts_are_capped_below_2_63(name: str) -> None:
    """Absurd counts are refused by name; the largest 64-bit one is accepted."""
    assert parse_training_args_mapping({name: 2**63 - 1}).unwrap().to_dict()[name] == 2**63 - 1
    for absurd in (2**63, HUGE, 1e300):
        public = assert_clean_failure(
            parse_training_args_mapping({name: absurd}), ErrorCode.BAD_TRAINING_ARGS
        )
        assert f"`{name}`" in public


@pytest.mark.parametrize("name", ["round", "secagg_clipping_range"])
def test_request_integers_are_capped(name: str) -> None:
    for absurd in (2**63, 2**70):
        public = assert_clean_failure(parse_request(substituted((name,), absurd)), ErrorCode.BAD_REQUEST)
        assert f"field `{name}`" in public


@pytest.mark.parametrize(
    "path",
    [
        ("researcher_id",),
        ("job_id",),
        ("dataset_id",),
        ("state_id",),
        ("params_url",),
        ("training_plan_url",),
        ("training_plan_class",),
        ("secagg_servkey_id",),
        ("aux_var_urls", 0),
        ("request_id",),
        ("model_args", "hidden"),
        ("aggregator_args", "extra", "k", 0),
        ("training_args", "test_metric"),
        ("training_args", "loader_args", "sampler"),
    ],
    ids=dotted,
)
def test_lone_surrogates_are_refused_by_name(path: tuple[str | int, ...]) -> None:
    """ "\\ud800" (what json.loads makes of "\\\\ud800") cannot be encoded later: refused where it is."""
    lone = json.loads('"id-\\ud800"')
    public = assert_clean_failure(parse_request(substituted(path, lone)), ErrorCode.BAD_REQUEST)
    assert f"field `{dotted(path)}`" in public


@pytest.mark.parametrize("where", ["model_args", "aggregator_args", "training_args"])
def test_lone_surrogates_in_keys_are_refused_and_escaped(where: str) -> None:
    request = valid_request()
    request[where] = {"ok": {"\udc80bad": 1}}
    public = assert_clean_failure(parse_request(request), ErrorCode.BAD_REQUEST)
    assert f"field `{where}.ok.\\udc80bad` must be named in valid Unicode text" in public


@pytest.mark.parametrize("name", ["researcher_id", "job_id", "dataset_id", "state_id"])
@pytest.mark.parametrize("bad", ["a\nb", "a\x1b[31m", "a\u2028b", "a\x85b", "x" * 257])
def test_ids_must_be_short_and_printable(name: str, bad: str) -> None:
    public = assert_clean_failure(parse_request(substituted((name,), bad)), ErrorCode.BAD_REQUEST)
    assert public == f"Invalid train request: field `{name}` must be at most 256 printable characters."


@pytest.mark.parametrize("bad", ["Plan\n", "Plan\u2028", "9Plan", "Pl an", "P" * 257])
def test_class_names_must_be_exact_identifiers(bad: str) -> None:
    public = assert_clean_failure(
        parse_request(substituted(("training_plan_class",), bad)), ErrorCode.BAD_REQUEST
    )
    assert "field `training_plan_class` must be a Python class name" in public


def deep(levels: int, leaf: Any = 0, kind: str = "list") -> Any:
    value = leaf
    for _ in range(levels):
        value = [value] if kind == "list" else {"a": value}
    return value


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize(
    "path",
    [
        ("model_args",),
        ("aggregator_args", "extra"),
        ("training_args", "loader_args"),
        ("request_id",),
        ("job_id",),
    ],
    ids=dotted,
)
def test_nesting_100000_deep_fails_cleanly(kind: str, path: tuple[str, ...]) -> None:
    """Far past the recursion limit: a bad_request, never RecursionError."""
    value = deep(100_000, kind=kind)
    public = assert_clean_failure(parse_request(substituted(path, value)), ErrorCode.BAD_REQUEST)
    assert f"field `{dotted(path)}" in public
    assert f"must nest at most {MAX_DEPTH} deep" in public or "must be" in public


def test_nesting_limits_the_whole_request() -> None:
    """MAX_DEPTH counts from the request object: a value just inside passes, one more level fails."""
    inside = substituted(("model_args",), {"k": deep(MAX_DEPTH - 2)})
    assert isinstance(parse_request(inside), Success)
    beyond = substituted(("model_args",), {"k": deep(MAX_DEPTH - 1)})
    public = assert_clean_failure(parse_request(beyond), ErrorCode.BAD_REQUEST)
    assert public.startswith("Invalid train request: field `model_args.k[0][0]") and "nest at most" in public


def test_deep_values_in_training_args_and_at_top_level() -> None:
    value = deep(100_000, kind="dict")
    public = assert_clean_failure(
        parse_training_args_mapping({"loader_args": value}), ErrorCode.BAD_TRAINING_ARGS
    )
    assert "training argument `loader_args.a.a" in public and "nest at most" in public
    assert_clean_failure(parse_request(deep(100_000)), ErrorCode.BAD_REQUEST)
    assert_clean_failure(parse_request({"unknown": value}), ErrorCode.BAD_REQUEST)
    assert_clean_failure(parse_training_args_mapping(deep(100_000)), ErrorCode.BAD_TRAINING_ARGS)


def test_too_many_values_in_all_is_refused() -> None:
    """The element budget spans the whole request, so it is not multiplied by the number of fields."""
    request = substituted(("model_args",), {"big": [0] * 60_000})
    request["aggregator_args"] = {"big": [0] * 60_000}
    public = assert_clean_failure(parse_request(request), ErrorCode.BAD_REQUEST)
    assert public == "Invalid train request: field `aggregator_args` must hold at most 100000 values in all."


@pytest.mark.parametrize(
    "value",
    [b"bytes", bytearray(b"x"), {1, 2}, frozenset(), Opaque(), 1j, {1: "int key"}, {None: 1}, {("t",): 1}],
    ids=lambda v: type(v).__name__,
)
@pytest.mark.parametrize(
    "path",
    [
        ("model_args", "hidden"),
        ("training_args", "loader_args", "x"),
        ("aggregator_args", "extra"),
        ("request_id",),
    ],
    ids=dotted,
)
def test_in_process_values_json_cannot_hold_are_refused(path: tuple[str, ...], value: Any) -> None:
    public = assert_clean_failure(parse_request(substituted(path, value)), ErrorCode.BAD_REQUEST)
    assert f"field `{dotted(path)}` must be" in public


def test_non_string_keys_at_the_top_and_in_training_args() -> None:
    public = assert_clean_failure(parse_request({**valid_request(), 1: "x"}), ErrorCode.BAD_REQUEST)
    assert public == "Invalid train request: field `<request>` must be an object with string keys."
    public = assert_clean_failure(parse_training_args_mapping({1: 2}), ErrorCode.BAD_TRAINING_ARGS)
    assert public == "Invalid training arguments: training arguments must be named by strings."
    public = assert_clean_failure(parse_training_args_mapping(["epochs"]), ErrorCode.BAD_TRAINING_ARGS)  # type: ignore[arg-type]
    assert public == "Invalid training arguments: training arguments must be an object."


def test_tuples_are_fine_as_lists() -> None:
    request = parse_request(substituted(("model_args", "layers"), (8, (4, 2)))).unwrap()
    assert request.model_args["layers"] == (8, (4, 2))
    assert parse_request(substituted(("aux_var_urls",), ("http://x.example/a",))).unwrap().aux_var_urls == (
        "http://x.example/a",
    )


def test_a_path_like_key_names_the_top_field_instead() -> None:
    """A key that would trip the leak check is not echoed; the researcher still learns the field."""
    public = assert_clean_failure(
        parse_request(substituted(("model_args",), {" /srv/data/": float("nan")})), ErrorCode.BAD_REQUEST
    )
    assert public == "Invalid train request: field `model_args` must be a finite number (at a nested key)."


def test_unknown_names_are_escaped() -> None:
    request = {**valid_request(), "evil\n[info] forged": 1}
    result = parse_request(request)
    public = assert_clean_failure(result, ErrorCode.BAD_REQUEST)
    assert public == "Invalid train request: field `evil\\n[info] forged` is not a train request field."
    public = assert_clean_failure(parse_training_args_mapping({"x\x1b[31m": 1}), ErrorCode.BAD_TRAINING_ARGS)
    assert "training argument `x\\x1b[31m` is not a known training argument" in public
    public = assert_clean_failure(
        parse_training_args_mapping({"dp": {"sigma": 1, "clip": 1, "e\u2028": 0}}),
        ErrorCode.BAD_TRAINING_ARGS,
    )
    assert "training argument `dp.e\\u2028` is not a DP argument" in public


# --- freezing and thawing: any depth ------------------------------------------------------------


def descend(value: Any, levels: int) -> Any:
    for _ in range(levels):
        value = value["a"] if isinstance(value, Mapping) else value[0]
    return value


def test_freeze_and_thaw_do_not_recurse() -> None:
    """Far past Python's recursion limit, freeze_mapping and thaw still copy (deep trees take an explicit stack)."""
    levels = sys.getrecursionlimit() * 3
    source = {"a": deep(levels, leaf="leaf", kind="dict")}
    frozen_value = freeze_mapping(source)
    assert descend(frozen_value, levels + 1) == "leaf"
    with pytest.raises(TypeError):
        descend(frozen_value, levels)["x"] = 1  # read-only all the way down
    thawed = thaw(frozen_value)
    assert type(descend(thawed, levels)) is dict and descend(thawed, levels + 1) == "leaf"
    assert json_problem(source, "x")[0] is not None  # and the validator refuses such depth


def wrapped_in(value: Any, levels: int) -> dict[str, Any]:
    """``value`` under ``levels`` containers, taking turns: a map, a list, a tuple."""
    for level in range(levels):
        value = ({"k": value}, [value, 1], (value,))[level % 3]
    return {"v": value}


def shape(value: Any, frozen: bool = False) -> Any:
    """``value`` with each container tagged by its type (a map's as freezing makes it, when ``frozen``)."""
    if isinstance(value, Mapping):
        tag = MappingProxyType if frozen else type(value)
        return (tag, {key: shape(item, frozen) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return (type(value), [shape(item, frozen) for item in value])
    return value


@pytest.mark.parametrize("levels", [0, 20], ids=["shallow", "past-the-recursive-copy"])
@given(value=json_like.filter(lambda v: json_problem(v, "v")[0] is None))
def test_thaw_inverts_freeze(levels: int, value: Any) -> None:
    """freeze gives read-only maps and keeps lists and tuples; thaw gives back the plain value, types too.

    At 20 levels the copy goes past the depth that plain recursion handles, so both ways of
    copying are held to the same law.
    """
    source = wrapped_in(copy.deepcopy(value), levels)
    frozen_value = freeze_mapping(source)
    assert shape(frozen_value) == shape(source, frozen=True)
    assert shape(thaw(frozen_value)) == shape(source)
