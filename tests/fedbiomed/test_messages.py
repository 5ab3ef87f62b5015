"""Fed-BioMed 6.4.1 messages: the class table, the strict total decoder, the byte-exact encoder."""

import re
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from returns.result import Failure, Success

from fedpipe.codec import dumps
from fedpipe.fedbiomed.messages import (
    ENVELOPE_KEY,
    KNOWN_REQUESTS,
    MESSAGE_FIELDS,
    REPLIES,
    SUPPORTED_REQUESTS,
    FieldSpec,
    Message,
    MessageError,
    decode_message,
    encode_message,
    field_problem,
    is_compatible_version,
)
from tests.fedbiomed.vectors import DATASET, IDS, REAL_FIELDS, VECTORS, params

MAX = 64 * 1024**2


def full(kind: str, **fields: Any) -> dict[str, Any]:
    """``fields`` completed with the class' defaults (what 6.4.1's ``to_dict`` holds)."""
    out = {spec.name: spec.default for spec in MESSAGE_FIELDS[kind] if not spec.required}
    out.update(fields)
    return out


SENT: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
    "PingReply": ("PingReply", lambda: full("PingReply", request_id="request_1", **IDS)),
    "SearchReply": (
        "SearchReply",
        lambda: full("SearchReply", request_id="request_2", databases=[DATASET], count=1, **IDS),
    ),
    "ListReply": (
        "ListReply",
        lambda: full(
            "ListReply",
            request_id="request_3",
            success=True,
            databases=[{k: v for k, v in DATASET.items() if k != "dtypes"}],
            count=1,
            **IDS,
        ),
    ),
    "ErrorMessage": (
        "ErrorMessage",
        lambda: full(
            "ErrorMessage",
            request_id="request_4",
            extra_msg="This node does not handle `FARequest` requests.",
            errnum="FB301",
            **IDS,
        ),
    ),
    "ErrorMessage_unattributed": (
        "ErrorMessage",
        lambda: full("ErrorMessage", extra_msg="Message was not properly formatted", **IDS),
    ),
    "TrainReply": (
        "TrainReply",
        lambda: full(
            "TrainReply",
            request_id="request_5",
            experiment_id="exper_77",
            success=True,
            dataset_id="dataset_3c2d",
            timing={"rtime_training": 2.4565, "ptime_training": 1.2729},
            msg="",
            state_id="node_state_9f",
            sample_size=228,
            params=params(torch.float32),
            optimizer_args={"lr": 0.01},
            optim_aux_var={},
            **IDS,
        ),
    ),
    "TrainReply_float64": (
        "TrainReply",
        lambda: full(
            "TrainReply",
            request_id="request_6",
            experiment_id="exper_77",
            success=True,
            dataset_id="dataset_3c2d",
            timing={"rtime_training": 0.5, "ptime_training": 0.25},
            msg="",
            state_id="node_state_a0",
            sample_size=57,
            params=params(torch.float64),
            optimizer_args={},
            optim_aux_var={},
            **IDS,
        ),
    ),
    "TrainReply_validation": (
        "TrainReply",
        lambda: full(
            "TrainReply",
            request_id="request_7",
            experiment_id="exper_77",
            success=True,
            dataset_id="dataset_3c2d",
            timing={},
            msg="",
            **IDS,
        ),
    ),
    "TrainingPlanStatusReply": (
        "TrainingPlanStatusReply",
        lambda: full(
            "TrainingPlanStatusReply",
            request_id="request_9",
            experiment_id="exper_77",
            success=True,
            approval_obligation=False,
            status="Not Registered",
            msg="This node does not require training plan approval (maybe for debugging purposes).",
            training_plan="class P:\n    pass\n",
            training_plan_id=None,
            **IDS,
        ),
    ),
    "ApprovalReply": (
        "ApprovalReply",
        lambda: full(
            "ApprovalReply",
            request_id="request_10",
            training_plan_id="training_plan_42",
            message="",
            status=0,
            success=True,
            **IDS,
        ),
    ),
}


# --- the table matches 6.4.1's dataclasses ----------------------------------------------------

_ANNOTATION_KINDS = {
    "str": "str",
    "int": "int",
    "bool": "bool",
    "list": "list",
    "List": "list",
    "dict": "dict",
    "Dict": "dict",
    "bytes": "bytes",
    "Tuple": "tuple",
    "NoneType": "none",
    "None": "none",
    "Optional": "none",
}


def kinds_of(annotation: str) -> set[str]:
    """Our kind names for a 6.4.1 annotation as ``str(field.type)`` shows it."""
    words = set(re.findall(r"[A-Za-z]+", annotation)) - {"class", "typing", "Union"}
    return {_ANNOTATION_KINDS[w] for w in words}


@pytest.mark.parametrize("kind", sorted(MESSAGE_FIELDS))
def test_field_table_is_fedbiomeds(kind: str) -> None:
    real = REAL_FIELDS[kind]
    ours = MESSAGE_FIELDS[kind]
    assert [spec.name for spec in ours] == [name for name, *_ in real]  # names and to_dict order
    for spec, (name, annotation, has_default, default) in zip(ours, real, strict=True):
        assert set(spec.kinds) == kinds_of(annotation), name
        assert spec.required is not has_default, name
        if has_default:
            assert spec.default == default, name


def test_every_request_class_a_researcher_sends_is_known() -> None:
    # every 6.4.1 class ending in Request (node-to-node inner ones aside) is in the table
    inner = {"ChannelSetupRequest", "KeyRequest", "AdditiveSSharingRequest"}
    real_requests = {name for name in REAL_FIELDS if name.endswith("Request")} - inner - {"TaskRequest"}
    assert real_requests <= KNOWN_REQUESTS
    assert set(MESSAGE_FIELDS) >= KNOWN_REQUESTS
    assert SUPPORTED_REQUESTS <= KNOWN_REQUESTS
    assert {"TrainReply", "ErrorMessage", "OverlayMessage"} <= REPLIES
    assert "TrainRequest" not in REPLIES


# --- encoding: byte for byte what 6.4.1 writes --------------------------------------------------


@pytest.mark.parametrize("vector", sorted(SENT))
def test_encoding_is_byte_for_byte_fedbiomeds(vector: str) -> None:
    kind, build = SENT[vector]
    assert encode_message(kind, build()) == VECTORS[vector]


def test_field_order_of_the_caller_does_not_matter() -> None:
    kind, build = SENT["TrainReply"]
    fields = build()
    assert encode_message(kind, dict(reversed(list(fields.items())))) == VECTORS["TrainReply"]


def test_protocol_version_may_be_left_out() -> None:
    fields = SENT["PingReply"][1]()
    del fields["protocol_version"]
    assert encode_message("PingReply", fields) == VECTORS["PingReply"]


def test_envelope_comes_last_with_module_then_class() -> None:
    raw = msgpack.unpackb(encode_message(*_ping()), strict_map_key=False)
    assert list(raw)[-1] == ENVELOPE_KEY
    assert list(raw[ENVELOPE_KEY].items()) == [("module", "fedbiomed.common.message"), ("class", "PingReply")]


def _ping() -> tuple[str, dict[str, Any]]:
    return "PingReply", SENT["PingReply"][1]()


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda f: f.update(extra=1), "has no field `extra`"),
        (lambda f: f.pop("node_name"), "lacks field `node_name`"),
        (lambda f: f.update(node_id=None), "`PingReply.node_id` must be str, not NoneType"),
        (lambda f: f.update(request_id=3), "must be str or none, not int"),
    ],
)
def test_encoding_refuses_what_fedbiomed_would_refuse(
    change: Callable[[dict[str, Any]], Any], why: str
) -> None:
    kind, fields = _ping()
    change(fields)
    with pytest.raises(ValueError, match=re.escape(why)):
        encode_message(kind, fields)


@pytest.mark.parametrize(
    ("kind", "name", "value"),
    [
        ("SearchReply", "count", True),  # 6.4.1 would take a bool here; never send one
        ("SearchReply", "databases", ({"a": 1},)),  # a tuple arrives as a tuple, not a list
        ("TrainReply", "sample_size", 3.0),
        ("TrainReply", "encryption_factor", (1, 2)),
    ],
)
def test_encoding_refuses_values_that_would_arrive_as_another_type(kind: str, name: str, value: Any) -> None:
    fields = SENT[kind][1]()
    fields[name] = value
    with pytest.raises(ValueError, match=f"`{kind}.{name}`"):
        encode_message(kind, fields)


def test_encoding_an_unknown_class_is_a_bug() -> None:
    with pytest.raises(ValueError, match=re.escape("not a Fed-BioMed 6.4.1 message class")):
        encode_message("FAReply", {})


# --- decoding what 6.4.1 sends ----------------------------------------------------------------


def test_decodes_fedbiomeds_train_request() -> None:
    message = decode_message(VECTORS["TrainRequest"], max_bytes=MAX).unwrap()
    assert message.kind == "TrainRequest"
    fields = message.fields
    assert [spec.name for spec in MESSAGE_FIELDS["TrainRequest"]] == list(fields)
    assert fields["request_id"] == "request_12"
    assert fields["state_id"] is None
    assert fields["secagg_arguments"] == {}
    assert fields["optim_aux_var"] is None
    # 6.4.1 sends its MetricTypes member as an extension dict, which the codec keeps as a dict
    assert fields["training_args"]["test_metric"] == {"__type__": "MetricTypes", "value": "ACCURACY"}
    assert fields["training_args"]["test_batch_size"] == 0
    for name, tensor in params(torch.float32).items():
        assert torch.equal(fields["params"][name], tensor)
        assert fields["params"][name].dtype == torch.float32


def test_decodes_fedbiomeds_search_request() -> None:
    message = decode_message(VECTORS["SearchRequest"], max_bytes=MAX).unwrap()
    assert (message.kind, dict(message.fields)) == (
        "SearchRequest",
        {
            "protocol_version": "7",
            "request_id": "request_11",
            "researcher_id": "RESEARCHER_0b7f",
            "tags": ["breast-cancer"],
        },
    )


@pytest.mark.parametrize("vector", sorted(SENT))
def test_decodes_what_it_encodes(vector: str) -> None:
    kind, build = SENT[vector]
    message = decode_message(VECTORS[vector], max_bytes=MAX).unwrap()
    assert message.kind == kind
    expected = build()
    assert list(message.fields) == [spec.name for spec in MESSAGE_FIELDS[kind]]
    for name, value in expected.items():
        if isinstance(value, dict) and name == "params":
            assert all(torch.equal(message.fields[name][k], v) for k, v in value.items())
        else:
            assert message.fields[name] == value, name


# --- decoding: strict and total ---------------------------------------------------------------


def raw_message(kind: str = "PingRequest", **changes: Any) -> dict[str, Any]:
    """A valid 6.4.1 message map of ``kind`` (a request or ping), with ``changes`` applied."""
    base: dict[str, Any] = {
        "protocol_version": "7",
        "request_id": "request_1",
        "researcher_id": "RESEARCHER_r",
    }
    if kind == "SearchRequest":
        base["tags"] = ["t"]
    base[ENVELOPE_KEY] = {"module": "fedbiomed.common.message", "class": kind}
    for key, value in changes.items():
        if value is _DROP:
            base.pop(key)
        else:
            base[key] = value
    return base


_DROP = object()


def decode(raw: Any) -> Any:
    return decode_message(msgpack.packb(raw, strict_types=False), max_bytes=MAX)


def test_unknown_class_decodes_to_its_name_and_ids() -> None:
    message = decode(
        raw_message(**{ENVELOPE_KEY: {"module": "x", "class": "FooRequest"}}, extra=[1])
    ).unwrap()
    assert message.kind == "FooRequest"
    assert dict(message.fields) == {"request_id": "request_1", "researcher_id": "RESEARCHER_r"}


def test_missing_fields_with_a_default_take_it_as_in_fedbiomed() -> None:
    message = decode(raw_message(request_id=_DROP)).unwrap()
    assert dict(message.fields) == {
        "protocol_version": "7",
        "request_id": None,
        "researcher_id": "RESEARCHER_r",
    }


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (raw_message(**{ENVELOPE_KEY: _DROP}), "no valid `__type_message__`"),
        (raw_message(**{ENVELOPE_KEY: {"class": "PingRequest"}}), "no valid `__type_message__`"),
        (raw_message(**{ENVELOPE_KEY: {"class": 3, "module": "m"}}), "no valid `__type_message__`"),
        (raw_message(**{ENVELOPE_KEY: {"class": "a b", "module": "m"}}), "is not a message class name"),
        (raw_message(protocol_version=_DROP), "no `protocol_version`"),
        (raw_message(protocol_version="8"), "protocol version `8` is not compatible"),
        (raw_message(protocol_version="7.1"), "is not compatible"),
        (raw_message(protocol_version=7), "protocol version `int`"),
        (raw_message(researcher_id=_DROP), "`PingRequest` lacks field `researcher_id`"),
        (raw_message(researcher_id=None), "`PingRequest.researcher_id` must be str, not NoneType"),
        (raw_message(node_id="N"), "`PingRequest` has no field `node_id`"),
        (raw_message("SearchRequest", tags=("t",)), "`SearchRequest.tags` must be list, not tuple"),
        (raw_message("SearchRequest", tags=[1]), "must hold only str items"),
    ],
)
def test_refusals_keep_the_ids_for_an_error_reply(raw: Any, reason: str) -> None:
    packed = dumps(raw)  # fedpipe's codec, so that tuples travel as 6.4.1's tuple extension
    error = decode_message(packed, max_bytes=MAX).failure()
    assert reason in error.reason
    assert error.request_id == "request_1"
    assert (error.researcher_id is None) == ("researcher_id" not in raw or raw["researcher_id"] is None)


def test_bool_is_not_an_int_here() -> None:
    raw = raw_message("SecaggDeleteRequest", secagg_id="s", element=True, experiment_id=None)
    assert "`SecaggDeleteRequest.element` must be int, not bool" in decode(raw).failure().reason
    raw["element"] = 1
    assert decode(raw).unwrap().fields["element"] == 1


def test_ids_are_recovered_only_as_printable_text() -> None:
    error = decode(raw_message(request_id="r\n[forged]", researcher_id=7, protocol_version="9")).failure()
    assert (error.request_id, error.researcher_id) == (None, None)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not a readable message"),
        (b"\x93\x01\x02\x03", "the message is not a map"),
        (msgpack.packb({1: 2}, strict_types=False), "field names are not all strings"),
        (b"\xde\xff\xff", "not a readable message"),
    ],
)
def test_unreadable_bytes_are_refused(data: bytes, reason: str) -> None:
    assert reason in decode_message(data, max_bytes=MAX).failure().reason


def test_size_limit() -> None:
    data = dumps(raw_message(researcher_id="R" * 1000))
    assert "larger than 100 bytes" in decode_message(data, max_bytes=100).failure().reason
    assert isinstance(decode_message(data, max_bytes=len(data)), Success)


@pytest.mark.parametrize(
    ("version", "ok"),
    [("7", True), ("7.0", True), ("7.0.0", True), ("v7", True), ("7.0rc1", True), ("7.0.post2", True),
     ("7.0.1", False), ("7.2", False), ("6", False), ("70", False), ("1!7", False), ("seven", False),
     ("", False), (None, False), ("7" + ".0" * 100, False)],
)  # fmt: skip
def test_protocol_version_compatibility_is_fedbiomeds(version: object, ok: bool) -> None:
    assert is_compatible_version(version) is ok


# --- laws -------------------------------------------------------------------------------------

_TEXT = st.text(max_size=12)
_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), _TEXT)
_JSONISH = st.recursive(
    _LEAF,
    # no "__type__" key: a map of it and "value" is one of the codec's extensions
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(_TEXT.filter(lambda k: k != "__type__"), inner, max_size=3),
    ),
    max_leaves=8,
)


def _value_of(kind: str) -> st.SearchStrategy[Any]:
    return {
        "str": _TEXT,
        "int": st.integers(-(2**80), 2**80),
        "bool": st.booleans(),
        "list": st.lists(_JSONISH, max_size=3),
        "tuple": st.lists(_JSONISH, max_size=3).map(tuple),
        "dict": st.dictionaries(_TEXT, _JSONISH, max_size=3),
        "bytes": st.binary(max_size=16),
        "none": st.none(),
    }[kind]


def _field_value(spec: FieldSpec) -> st.SearchStrategy[Any]:
    options = st.sampled_from(spec.kinds).flatmap(_value_of)
    if spec.items == "str":
        options = options.map(lambda v: [str(x) for x in v] if isinstance(v, list) else v)
    return options


@st.composite
def valid_messages(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from(sorted(MESSAGE_FIELDS)))
    fields = {spec.name: draw(_field_value(spec)) for spec in MESSAGE_FIELDS[kind]}
    fields["protocol_version"] = "7"
    return kind, fields


@given(valid_messages())
def test_decode_encode_round_trip(message: tuple[str, dict[str, Any]]) -> None:
    kind, fields = message
    data = encode_message(kind, fields)
    decoded = decode_message(data, max_bytes=MAX).unwrap()
    assert decoded.kind == kind
    assert dict(decoded.fields) == fields
    assert encode_message(decoded.kind, decoded.fields) == data


_HOSTILE_LEAF = st.one_of(
    _LEAF,
    st.binary(max_size=8),
    st.floats(),
    st.integers(-(2**300), 2**300),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
)
_HOSTILE = st.recursive(
    _HOSTILE_LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.one_of(_TEXT, st.integers(-3, 3)), inner, max_size=4),
    ),
    max_leaves=12,
)


@st.composite
def hostile_messages(draw: st.DrawFn) -> dict[Any, Any]:
    """Message-like maps: a real or invented class, every field kept, dropped or replaced, extras."""
    kind = draw(st.sampled_from([*sorted(MESSAGE_FIELDS), "FooRequest", "", "TrainRequest "]))
    raw: dict[Any, Any] = {}
    for spec in MESSAGE_FIELDS.get(kind, ()):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            raw[spec.name] = draw(_field_value(spec))
        elif choice == 1:
            raw[spec.name] = draw(_HOSTILE)
    raw.update(draw(st.dictionaries(st.one_of(_TEXT, st.integers(-2, 2)), _HOSTILE, max_size=3)))
    envelope = draw(
        st.one_of(
            st.just({"module": "fedbiomed.common.message", "class": kind}),
            _HOSTILE,
            st.dictionaries(st.sampled_from(["class", "module", "x"]), _HOSTILE, max_size=3),
        )
    )
    if draw(st.booleans()):
        raw[ENVELOPE_KEY] = envelope
    if draw(st.booleans()):
        raw["protocol_version"] = draw(st.one_of(st.just("7"), _HOSTILE))
    return raw


def _check_result(result: Any) -> None:
    assert isinstance(result, Success | Failure)
    if isinstance(result, Failure):
        error = result.failure()
        assert isinstance(error, MessageError)
        assert error.reason and "\n" not in error.reason
    else:
        message = result.unwrap()
        assert isinstance(message, Message)
        if message.kind in MESSAGE_FIELDS:
            assert field_problem(message.kind, message.fields) is None


@settings(max_examples=300)
@given(hostile_messages())
def test_decoding_never_raises_on_hostile_maps(raw: dict[Any, Any]) -> None:
    _check_result(decode_message(dumps(raw), max_bytes=MAX))


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_decoding_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    _check_result(decode_message(data, max_bytes=MAX))


@given(hostile_messages())
def test_a_decoded_known_message_can_be_sent_back_unchanged(raw: dict[Any, Any]) -> None:
    # whatever the decoder accepts fits 6.4.1's dataclass: encode_message takes it as is
    decoded = decode_message(dumps(raw), max_bytes=MAX)
    if isinstance(decoded, Success) and decoded.unwrap().kind in MESSAGE_FIELDS:
        message = decoded.unwrap()
        data = encode_message(message.kind, message.fields)
        again = decode_message(data, max_bytes=MAX).unwrap()
        assert encode_message(again.kind, again.fields) == data  # bytes: NaN-safe equality
