"""Fed-BioMed 6.4.1 TrainRequest -> fedpipe's round, and fedpipe's results -> 6.4.1's replies."""

from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import torch
from attrs import evolve
from hypothesis import given, settings
from hypothesis import strategies as st
from returns.result import Failure, Result, Success

from fedpipe.context import RoundContext, TrainingOutcome, Update, new_context
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.fedbiomed.mapping import (
    APPROVAL_OFF_TEXT,
    TRAINING_ARGS_DEFAULTS,
    approval_reply,
    error_message,
    fedbiomed_update,
    list_reply,
    ping_reply,
    refusal_reply,
    round_reply,
    scalar_of,
    search_reply,
    status_reply,
    train_reply,
    train_request_of,
    translate_training_args,
)
from fedpipe.fedbiomed.messages import (
    MESSAGE_FIELDS,
    Message,
    MessageError,
    decode_message,
    encode_message,
    field_problem,
)
from fedpipe.fedbiomed.secure import FedbiomedSecagg, Scheme
from fedpipe.plan import DatasetRecord
from fedpipe.ports import Approval, MetricEvent, NodeState
from fedpipe.reply import header_of, to_reply
from fedpipe.request import TrainRequest
from fedpipe.runner import RoundRun
from fedpipe.settings import NodeSettings
from tests.fedbiomed.vectors import IDS, VECTORS, params

MAX = 64 * 1024**2
NODE = {"node_id": IDS["node_id"], "node_name": IDS["node_name"]}


def fields_of(kind: str) -> list[str]:
    return [spec.name for spec in MESSAGE_FIELDS[kind]]


def assert_sendable(kind: str, fields: dict[str, Any]) -> None:
    """``fields`` are exactly ``kind``'s, each of a type 6.4.1 takes, and they survive the wire."""
    assert sorted(fields) == sorted(fields_of(kind))
    assert field_problem(kind, fields, sending=True) is None
    decoded = decode_message(encode_message(kind, fields), max_bytes=MAX).unwrap()
    assert decoded.kind == kind


def fedbiomed_train_request() -> Message:
    return decode_message(VECTORS["TrainRequest"], max_bytes=MAX).unwrap()


def train_message(**changes: Any) -> Message:
    fields = dict(fedbiomed_train_request().fields)
    fields.update(changes)
    return Message(kind="TrainRequest", fields=MappingProxyType(fields))


# --- train_request_of -------------------------------------------------------------------------


def test_maps_fedbiomeds_train_request() -> None:
    request, inline = train_request_of(fedbiomed_train_request()).unwrap()
    assert (request.researcher_id, request.job_id, request.dataset_id) == (
        "RESEARCHER_0b7f",
        "exper_77",
        "dataset_3c2d",
    )
    assert (request.params_url, request.training_plan_url, request.training_plan_class) == (
        "",
        "",
        "BreastCancerPlan",
    )
    assert (request.training, request.round, request.state_id, request.secagg_requested) == (
        True,
        0,
        None,
        False,
    )
    assert dict(request.model_args) == {"in_features": 3, "hidden": 2}
    assert dict(request.training_args) == {
        "loader_args": {"batch_size": 16},
        "optimizer_args": {"lr": 0.01},
        "epochs": 2,
        "test_ratio": 0.2,
        "test_on_global_updates": True,
        "test_on_local_updates": True,
        "random_seed": 0,
        "log_interval": 5,
        "num_updates": None,
        "dry_run": False,
        "batch_maxnum": None,
        "shuffle_testing_dataset": False,
        "test_batch_size": 0,
        "test_metric": "ACCURACY",
        "test_metric_args": {},
        "fedprox_mu": None,
        "use_gpu": False,
        "dp": None,
        "share_persistent_buffers": True,
    }
    assert (inline.request_id, inline.researcher_id, inline.experiment_id) == (
        "request_12",
        "RESEARCHER_0b7f",
        "exper_77",
    )
    assert inline.plan_source.startswith("import torch\n")
    assert sorted(inline.params) == sorted(params(torch.float32))
    assert all(torch.equal(inline.params[k], v) for k, v in params(torch.float32).items())
    assert (dict(inline.aggregator_args), dict(inline.aux_vars), inline.secagg_arguments) == ({}, {}, {})


def test_the_translated_arguments_pass_fedpipes_own_parser() -> None:
    from fedpipe.args import parse_training_args_mapping

    request, _ = train_request_of(fedbiomed_train_request()).unwrap()
    args = parse_training_args_mapping(request.training_args).unwrap()
    assert (args.epochs, args.test_ratio, args.log_interval, args.batch_size) == (2, 0.2, 5, 16)
    assert args.test_metric is not None and args.test_metric.value == "ACCURACY"


@pytest.mark.parametrize(
    ("args", "training", "expected"),
    [
        ({"epochs": 1}, True, {"epochs": 1}),
        ({"num_updates": 7, "epochs": None}, True, {"num_updates": 7, "epochs": None}),
        ({}, False, {}),  # a validation-only request trains nothing: no epochs needed
        ({"epochs": 1, "dp_args": {"type": "local", "sigma": 1.0, "clip": 2.0}}, True,
         {"epochs": 1, "dp": {"type": "local", "sigma": 1.0, "clip": 2.0}}),
        ({"epochs": 1, "test_batch_size": None}, True, {"epochs": 1}),
        ({"epochs": 1, "test_batch_size": 0}, True, {"epochs": 1, "test_batch_size": 0}),
        ({"epochs": 1, "test_batch_size": 8}, True, {"epochs": 1, "test_batch_size": 8}),
        ({"epochs": 1, "test_metric": "f1_score"}, True, {"epochs": 1, "test_metric": "f1_score"}),
        ({"epochs": 2.0}, True, {"epochs": 2.0}),  # 6.4.1 takes an integral float; so does fedpipe
    ],
)  # fmt: skip
def test_training_args_kept(args: dict[str, Any], training: bool, expected: dict[str, Any]) -> None:
    assert translate_training_args(args, training=training).unwrap() == expected


@pytest.mark.parametrize(
    ("args", "public"),
    [
        ({"loader_args": {"batch_size": 4}}, "training argument `epochs` or `num_updates` is required to train"),
        ({"epochs": 1, "test_batch_size": True}, "training argument `test_batch_size` must be a non-negative integer"),
        ({"epochs": 1, "lr": 0.1}, "training argument `lr` is not a Fed-BioMed training argument"),
        ({"epochs": 1, "dp": None}, "training argument `dp` is not a Fed-BioMed training argument"),
        ({"epochs": True}, "training argument `epochs` must be a non-negative integer or null"),
        ({"epochs": 1, "test_ratio": 1.5}, "training argument `test_ratio` must lie in [0.0, 1.0]"),
        ({"epochs": 1, "test_metric": "gini"}, "training argument `test_metric` must name a supported metric"),
        ({"epochs": 1, "dp_args": {"sigma": 1.0}}, "training argument `dp.clip` is required"),
        ({"epochs": 1, "random_seed": -1}, "training argument `random_seed` must be a non-negative integer"),
        ({"epochs": 1, "loader_args": {"batch_size": float("nan")}},
         "training argument `loader_args.batch_size` must be a finite number"),
    ],
)  # fmt: skip
def test_training_args_refused(args: dict[str, Any], public: str) -> None:
    error = translate_training_args(args, training=True).failure()
    assert error.code is ErrorCode.BAD_TRAINING_ARGS
    assert public in error.public


def test_every_fedbiomed_training_argument_is_accepted_at_its_default() -> None:
    defaults = {**TRAINING_ARGS_DEFAULTS, "epochs": 1}
    translated = translate_training_args(defaults, training=True).unwrap()
    assert translated["test_batch_size"] == 0 and "dp_args" not in translated
    assert translated["dp"] is None


def test_metric_types_extension_becomes_its_name() -> None:
    args = {"epochs": 1, "test_metric": {"__type__": "MetricTypes", "value": "MEAN_SQUARE_ERROR"}}
    assert translate_training_args(args, training=True).unwrap()["test_metric"] == "MEAN_SQUARE_ERROR"


@pytest.mark.parametrize("secagg", [None, {}])
def test_plain_rounds_have_no_secagg_arguments(secagg: Any) -> None:
    _, inline = train_request_of(train_message(secagg_arguments=secagg)).unwrap()
    assert not inline.secagg_arguments


SECURE = {
    "secagg_random": 0.844,
    "secagg_clipping_range": None,
    "secagg_scheme": 2,
    "parties": ["a", "b"],
    "secagg_dh_id": "secagg_1",
}


def test_secure_arguments_are_checked_and_kept() -> None:
    _, inline = train_request_of(train_message(secagg_arguments=SECURE)).unwrap()
    assert inline.secagg == FedbiomedSecagg(
        scheme=Scheme.LOM, context_id="secagg_1", parties=("a", "b"), random=0.844, clipping_range=None
    )
    jl = {**SECURE, "secagg_scheme": 1, "secagg_servkey_id": "k", "secagg_random": None}
    del jl["secagg_dh_id"]
    _, inline = train_request_of(train_message(secagg_arguments=jl)).unwrap()
    assert inline.secagg is not None
    assert (inline.secagg.scheme, inline.secagg.context_id, inline.secagg.random) == (
        Scheme.JOYE_LIBERT,
        "k",
        None,
    )


@pytest.mark.parametrize(
    ("change", "public"),
    [
        ({"secagg_scheme": 0}, "Bad secure-aggregation scheme in the request: 0."),
        ({"secagg_scheme": "2"}, "Bad secure-aggregation scheme in the request: '2'."),
        ({"secagg_clipping_range": 2.5}, "`secagg_clipping_range` must be a positive integer or null."),
        ({"parties": ["a"]}, "The secure-aggregation parties must be at least two distinct node ids."),
        ({"parties": ["a", "a"]}, "The secure-aggregation parties must be at least two distinct node ids."),
        ({"secagg_dh_id": None}, "The request names no `secagg_dh_id`."),
        (
            {"secagg_random": float("nan")},
            "`secagg_random` must be a finite number within the clipping range.",
        ),
        ({"secagg_random": 7.0}, "`secagg_random` must be a finite number within the clipping range."),
    ],
)
def test_bad_secure_arguments_are_refused_clearly(change: dict[str, Any], public: str) -> None:
    error = train_request_of(train_message(secagg_arguments={**SECURE, **change})).failure()
    assert (error.code, error.public) == (ErrorCode.SECAGG_CONFIG, public)
    # as 6.4.1's round: a failed TrainReply, not an ErrorMessage
    reply = refusal_reply(train_message(), error, **NODE)
    assert reply.kind == "TrainReply"
    assert (reply.fields["success"], reply.fields["msg"]) == (False, public)
    assert_sendable(reply.kind, reply.fields)


@pytest.mark.parametrize(
    ("changes", "code", "public"),
    [
        ({"params": {"w": [1.0]}}, ErrorCode.BAD_REQUEST, "field `params.w` must be a tensor"),
        ({"params": {1: torch.zeros(1)}}, ErrorCode.BAD_REQUEST, "field `params` must be named by strings"),
        ({"params": None}, ErrorCode.BAD_REQUEST, "field `params` must be an object"),
        ({"model_args": {"mean": [1.0, float("nan")]}}, ErrorCode.BAD_REQUEST, "field `model_args.mean[1]` must be a finite number"),
        ({"model_args": {"t": torch.zeros(1)}}, ErrorCode.BAD_REQUEST, "field `model_args.t` must be a JSON value"),
        ({"request_id": None}, ErrorCode.BAD_REQUEST, "field `request_id` must be a non-empty printable string"),
        ({"experiment_id": "e\nx"}, ErrorCode.BAD_REQUEST, "field `experiment_id`"),
        ({"state_id": ""}, ErrorCode.BAD_REQUEST, "field `state_id`"),
        ({"training_plan_class": "os.system"}, ErrorCode.BAD_REQUEST, "must be a Python class name"),
        ({"round": -1}, ErrorCode.BAD_REQUEST, "field `round` must be a non-negative integer"),
        ({"round": True}, ErrorCode.BAD_REQUEST, "field `round`"),
        ({"training": 1}, ErrorCode.BAD_REQUEST, "field `training` must be a boolean"),
        ({"training_args": []}, ErrorCode.BAD_REQUEST, "field `training_args` must be an object"),
        ({"aggregator_args": {"x": b"raw"}}, ErrorCode.BAD_REQUEST, "field `aggregator_args`"),
        ({"optim_aux_var": [1]}, ErrorCode.BAD_REQUEST, "field `optim_aux_var` must be an object"),
    ],
)  # fmt: skip
def test_bad_fields_are_named(changes: dict[str, Any], code: ErrorCode, public: str) -> None:
    error = train_request_of(train_message(**changes)).failure()
    assert error.code is code
    assert public in error.public


def test_not_a_train_request() -> None:
    message = Message(kind="PingRequest", fields=MappingProxyType({"researcher_id": "R"}))
    assert train_request_of(message).failure().code is ErrorCode.BAD_REQUEST


def test_scaffold_corrections_stay_inline_and_json_goes_to_the_request() -> None:
    correction = {"fc1.bias": torch.ones(2)}
    aggregator_args = {"aggregator_name": "scaffold", "aggregator_correction": correction}
    request, inline = train_request_of(train_message(aggregator_args=aggregator_args)).unwrap()
    assert dict(request.aggregator_args) == {"aggregator_name": "scaffold"}
    assert inline.aggregator_args["aggregator_correction"] is correction


def test_aux_vars_are_passed_on_inline() -> None:
    aux = {"scaffold": {"__type__": "AuxVar>ScaffoldAuxVar", "value": {"state": 1}}}
    _, inline = train_request_of(train_message(optim_aux_var=aux)).unwrap()
    assert dict(inline.aux_vars) == aux


def test_validation_only_request() -> None:
    message = train_message(training=False, round=3, state_id="node_state_1", training_args={})
    request, _ = train_request_of(message).unwrap()
    assert (request.training, request.round, request.state_id) == (False, 3, "node_state_1")


_ANY = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(max_size=8),
        st.binary(max_size=4),
        st.just(torch.zeros(2)),
        st.just({"__type__": "MetricTypes", "value": "ACCURACY"}),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(0, 3)), inner, max_size=3),
    ),
    max_leaves=10,
)
_ARG_NAMES = st.sampled_from([*TRAINING_ARGS_DEFAULTS, "dp", "lr"])


@st.composite
def mangled_train_messages(draw: st.DrawFn) -> Message:
    fields = dict(fedbiomed_train_request().fields)
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=4, unique=True)):
        fields[name] = draw(_ANY)
    if draw(st.booleans()):
        fields["training_args"] = draw(st.dictionaries(_ARG_NAMES, _ANY, max_size=5))
    if draw(st.booleans()):
        fields.pop(draw(st.sampled_from(sorted(fields))))
    return Message(kind="TrainRequest", fields=MappingProxyType(fields))


@settings(max_examples=200)
@given(mangled_train_messages())
def test_train_request_of_never_raises(message: Message) -> None:
    result = train_request_of(message)
    assert isinstance(result, Success | Failure)
    if isinstance(result, Failure):
        error = result.failure()
        assert isinstance(error, RoundError)
        assert error.code in (ErrorCode.BAD_REQUEST, ErrorCode.BAD_TRAINING_ARGS, ErrorCode.SECAGG_CONFIG)
        assert error.public and "\n" not in error.public
    else:
        request, inline = result.unwrap()
        assert isinstance(request, TrainRequest)
        assert all(isinstance(v, torch.Tensor) for v in inline.params.values())


# --- the update -------------------------------------------------------------------------------


def test_bfloat16_goes_out_as_float32_with_a_note() -> None:
    weights = {"a": torch.tensor([1.5, -2.0], dtype=torch.bfloat16), "b": torch.ones(1)}
    out, notes = fedbiomed_update(weights)
    assert out["a"].dtype == torch.float32 and torch.equal(out["a"], torch.tensor([1.5, -2.0]))
    assert out["b"] is weights["b"]
    assert notes == ("1 bfloat16 tensor(s) sent as float32 (Fed-BioMed cannot read bfloat16): a",)
    assert fedbiomed_update(out)[1] == ()  # idempotent


def test_unreadable_updates_raise() -> None:
    with pytest.raises(TypeError):
        fedbiomed_update([torch.ones(1)])
    with pytest.raises(TypeError):
        fedbiomed_update({"a": [1.0]})
    if hasattr(torch, "float8_e4m3fn"):
        with pytest.raises(ValueError, match="Fed-BioMed cannot read"):
            fedbiomed_update({"a": torch.zeros(2, dtype=torch.float8_e4m3fn)})


# --- train_reply ------------------------------------------------------------------------------

SETTINGS = NodeSettings(node_id="NODE_5e1a", root="/nonexistent/fedpipe-test")


def a_run(
    message: Message,
    *,
    weights: Any = None,
    error: RoundError | None = None,
    optimizer_args: Any = None,
    aux_vars: Any = None,
    encrypted: bool = False,
    timing: tuple[float, float] = (2.4565, 1.2729),
    sample_size: int = 228,
    state_id: str = "node_state_9f",
) -> RoundRun:
    """A finished round as the runner makes it (``to_reply`` of the final context)."""
    request, _ = train_request_of(message).unwrap()
    saved = state_id if request.training else None
    ctx: RoundContext = new_context(request, SETTINGS, Path("/nonexistent"), saved)
    result: Result[RoundContext, RoundError]
    if error is not None:
        result = Failure(error)
    else:
        if request.training:
            ctx = evolve(
                ctx,
                training=TrainingOutcome(
                    samples_seen=sample_size * 2,
                    sample_size=sample_size,
                    rtime_training=timing[0],
                    ptime_training=timing[1],
                ),
                update=Update(
                    model_weights=weights if weights is not None else params(torch.float32),
                    optimizer_args=MappingProxyType(optimizer_args or {"lr": 0.01}),
                    aux_vars=MappingProxyType(aux_vars or {}),
                    encrypted=encrypted,
                ),
                saved_state=NodeState(state_id=state_id, job_id=request.job_id, round=request.round),
            )
        result = Success(ctx)
    return RoundRun(reply=to_reply(result, header_of(request, SETTINGS.node_id, saved)), result=result)


def reply_message(request_id: str, **changes: Any) -> Message:
    return train_message(request_id=request_id, **changes)


def test_training_reply_is_byte_for_byte_fedbiomeds() -> None:
    message = reply_message("request_5")
    fields = train_reply(message, a_run(message), **NODE)
    assert encode_message("TrainReply", fields) == VECTORS["TrainReply"]


def test_validation_reply_is_byte_for_byte_fedbiomeds() -> None:
    message = reply_message("request_7", training=False, training_args={})
    fields = train_reply(message, a_run(message), **NODE)
    assert encode_message("TrainReply", fields) == VECTORS["TrainReply_validation"]


def test_failure_reply_is_fedbiomeds_and_public_only() -> None:
    message = reply_message("request_8")
    error = RoundError(
        code=ErrorCode.TRAINING_FAILED,
        step="train_model",
        detail="RuntimeError: secret detail at /home/owner/data.csv",
        public="Training failed on the node.",
    )
    run = a_run(message, error=error, state_id="node_state_b1")
    fields = train_reply(message, run, **NODE)
    assert encode_message("TrainReply", fields) == VECTORS["TrainReply_failure"]
    assert "secret" not in str(fields)
    reply = round_reply(message, run, **NODE)
    assert (reply.kind, reply.fields) == ("TrainReply", fields)


@pytest.mark.parametrize(
    ("code", "errnum"),
    [
        (ErrorCode.DATASET_NOT_FOUND, "FB313"),
        (ErrorCode.BAD_TRAINING_ARGS, "FB300"),
        (ErrorCode.INTERNAL, "FB300"),
    ],
)
def test_failures_before_the_round_are_error_messages_as_in_fedbiomed(code: ErrorCode, errnum: str) -> None:
    message = reply_message("request_8")
    error = RoundError(code=code, step="s", detail="hidden detail", public="What the researcher may read.")
    reply = round_reply(message, a_run(message, error=error), **NODE)
    assert reply.kind == "ErrorMessage"
    assert (reply.fields["errnum"], reply.fields["extra_msg"], reply.fields["request_id"]) == (
        errnum,
        "What the researcher may read.",
        "request_8",
    )
    assert_sendable(reply.kind, reply.fields)


def test_bfloat16_update_is_sent_as_float32_with_a_note() -> None:
    message = reply_message("request_5")
    run = a_run(message, weights=params(torch.bfloat16))
    reply = round_reply(message, run, **NODE)
    assert reply.kind == "TrainReply" and reply.fields["success"] is True
    sent = reply.fields["params"]
    assert {t.dtype for t in sent.values()} == {torch.float32}
    assert all(torch.equal(sent[k], v.float()) for k, v in params(torch.bfloat16).items())
    assert len(reply.notes) == 1 and "bfloat16" in reply.notes[0]
    assert_sendable(reply.kind, reply.fields)


def test_parameters_the_researcher_did_not_send_stay_local() -> None:
    message = reply_message("request_5")
    weights = {**params(torch.float32), "private.local": torch.ones(3)}
    reply = round_reply(message, a_run(message, weights=weights), **NODE)
    assert sorted(reply.fields["params"]) == sorted(params(torch.float32))
    assert "kept local: private.local" in reply.notes[0]


def test_an_update_missing_requested_parameters_is_a_failure() -> None:
    message = reply_message("request_5")
    weights = {k: v for k, v in params(torch.float32).items() if k != "fc2.bias"}
    reply = round_reply(message, a_run(message, weights=weights), **NODE)
    assert (reply.fields["success"], reply.fields["msg"]) == (
        False,
        "The model update lacks parameters that the request sent.",
    )
    assert "fc2.bias" in reply.notes[0]
    assert_sendable(reply.kind, reply.fields)


def test_an_encrypted_update_is_sent_as_6_4_1_sends_it() -> None:
    message = reply_message("request_5")
    cipher = [3, 2**64 - 1, 2**2047 + 5]
    reply = round_reply(message, a_run(message, weights=cipher, encrypted=True), **NODE)
    fields = reply.fields
    assert (fields["success"], fields["encrypted"], fields["params"]) == (True, True, cipher)
    assert fields["sample_size"] == 228 and fields["encryption_factor"] is None
    assert_sendable(reply.kind, fields)


def test_an_encrypted_update_that_is_not_ciphertexts_is_never_sent() -> None:
    message = reply_message("request_5")
    reply = round_reply(message, a_run(message, encrypted=True), **NODE)
    assert (reply.fields["success"], reply.fields["params"]) == (False, None)


_DTYPES = st.sampled_from(
    [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool]
)


@st.composite
def runs(draw: st.DrawFn) -> tuple[Message, RoundRun]:
    names = draw(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4, unique=True))
    sent = {name: torch.zeros(2) for name in names}
    training = draw(st.booleans())
    message = train_message(
        request_id=draw(st.sampled_from(["request_1", "r" * 256])),
        params=sent,
        training=training,
        state_id=draw(st.one_of(st.none(), st.just("node_state_0"))),
    )
    kept = draw(st.lists(st.sampled_from(names), unique=True)) if draw(st.booleans()) else names
    extra = draw(st.lists(st.text(min_size=1, max_size=4), max_size=2))
    weights = {name: torch.ones(3).to(draw(_DTYPES)) for name in [*kept, *extra]}
    error = (
        RoundError(
            code=draw(st.sampled_from(list(ErrorCode))),
            step="s",
            detail="d",
            public=draw(st.text(max_size=40)),
        )
        if draw(st.booleans())
        else None
    )
    timing = (draw(st.floats(0, 1e6)), draw(st.floats(0, 1e6)))
    run = a_run(
        message,
        weights=weights,
        error=error,
        timing=timing,
        sample_size=draw(st.integers(0, 2**40)),
        aux_vars=draw(st.one_of(st.just({}), st.just({"c": torch.zeros(1)}))),
    )
    return message, run


@settings(max_examples=150)
@given(runs())
def test_replies_always_carry_exactly_fedbiomeds_fields_and_types(case: tuple[Message, RoundRun]) -> None:
    message, run = case
    fields = train_reply(message, run, **NODE)
    assert_sendable("TrainReply", fields)
    assert fields["request_id"] == message.fields["request_id"]
    if fields["success"]:
        assert fields["msg"] == ""
        if message.fields["training"]:
            assert type(fields["sample_size"]) is int
            assert set(fields["timing"]) == {"rtime_training", "ptime_training"}
            assert all(type(v) is float for v in fields["timing"].values())
            assert list(fields["params"]) == list(message.fields["params"])
            assert all(t.dtype != torch.bfloat16 for t in fields["params"].values())
            assert isinstance(fields["optimizer_args"], dict) and isinstance(fields["optim_aux_var"], dict)
        else:
            assert fields["params"] is None and fields["sample_size"] is None and fields["timing"] == {}
    else:
        assert fields["dataset_id"] == "" and fields["params"] is None
        assert run.reply.error is None or fields["msg"] in (
            run.reply.error.public,
            "The model update lacks parameters that the request sent.",
            "The model update cannot be expressed in a Fed-BioMed reply.",
        )
    reply = round_reply(message, run, **NODE)
    assert_sendable(reply.kind, reply.fields)


# --- management replies -----------------------------------------------------------------------


def message_of(kind: str, **fields: Any) -> Message:
    return Message(kind=kind, fields=MappingProxyType({"protocol_version": "7", **fields}))


RECORD = DatasetRecord(
    dataset_id="dataset_3c2d",
    name="bc-part1",
    path="/srv/private/bc1.csv",
    data_type="csv",
    shape=(285, 31),
    description="shard 1",
    tags=("breast-cancer",),
)
OTHER = DatasetRecord(
    dataset_id="dataset_9", name="mnist", path="/srv/m", data_type="images", tags=("mnist", "x")
)


def test_ping_reply_is_byte_for_byte_fedbiomeds() -> None:
    message = message_of("PingRequest", request_id="request_1", researcher_id=IDS["researcher_id"])
    assert encode_message("PingReply", ping_reply(message, **NODE)) == VECTORS["PingReply"]


def test_search_reply_is_fedbiomeds_without_the_path() -> None:
    message = message_of(
        "SearchRequest", request_id="request_2", researcher_id=IDS["researcher_id"], tags=["breast-cancer"]
    )
    fields = search_reply(message, [RECORD, OTHER], **NODE)
    assert encode_message("SearchReply", fields) == VECTORS["SearchReply_nodtypes"]
    assert "/srv" not in str(fields)


@pytest.mark.parametrize(
    ("tags", "found"),
    [([], ["dataset_3c2d", "dataset_9"]), (["mnist"], ["dataset_9"]), (["mnist", "x"], ["dataset_9"]),
     (["mnist", "breast-cancer"], []), (["nothing"], []), ([3], [])],
)  # fmt: skip
def test_search_matches_datasets_holding_every_tag(tags: list[Any], found: list[str]) -> None:
    message = message_of("SearchRequest", request_id="r", researcher_id="R", tags=tags)
    fields = search_reply(message, [RECORD, OTHER], **NODE)
    assert [d["dataset_id"] for d in fields["databases"]] == found
    assert fields["count"] == len(found)
    assert_sendable("SearchReply", fields)


def test_list_reply_shows_every_dataset_without_dtypes_or_path() -> None:
    message = message_of("ListRequest", request_id="request_3", researcher_id=IDS["researcher_id"])
    fields = list_reply(message, [RECORD], **NODE)
    assert encode_message("ListReply", fields) == VECTORS["ListReply"]
    assert [d["dataset_id"] for d in list_reply(message, [RECORD, OTHER], **NODE)["databases"]] == [
        "dataset_3c2d",
        "dataset_9",
    ]


def test_status_reply_with_approval_off_is_byte_for_byte_fedbiomeds() -> None:
    message = message_of(
        "TrainingPlanStatusRequest",
        request_id="request_9",
        researcher_id=IDS["researcher_id"],
        experiment_id="exper_77",
        training_plan="class P:\n    pass\n",
    )
    fields = status_reply(message, **NODE, approval_obligation=False, status=None, plan_id=None)
    assert encode_message("TrainingPlanStatusReply", fields) == VECTORS["TrainingPlanStatusReply"]
    assert fields["msg"] == APPROVAL_OFF_TEXT


@pytest.mark.parametrize(
    ("status", "shown", "text"),
    [
        (Approval.APPROVED, "Approved", "Training plan has been approved by the node, training can start"),
        (Approval.PENDING, "Pending", "Training plan is pending: waiting for a review"),
        (
            Approval.REJECTED,
            "Rejected",
            "Training plan has been rejected by the node, training is not possible",
        ),
        (None, "Not Registered", "Unknown training plan not in database (status Not Registered)"),
    ],
)
def test_status_texts_with_approval_on_are_fedbiomeds(status: Approval | None, shown: str, text: str) -> None:
    message = message_of(
        "TrainingPlanStatusRequest", request_id="r", researcher_id="R", experiment_id="e", training_plan="x"
    )
    fields = status_reply(message, **NODE, approval_obligation=True, status=status, plan_id="training_plan_1")
    assert (fields["success"], fields["approval_obligation"], fields["status"], fields["msg"]) == (
        True,
        True,
        shown,
        text,
    )
    assert_sendable("TrainingPlanStatusReply", fields)


def test_status_reply_when_the_registry_cannot_be_read() -> None:
    message = message_of(
        "TrainingPlanStatusRequest", request_id="r", researcher_id="R", experiment_id="e", training_plan="x"
    )
    fields = status_reply(
        message, **NODE, approval_obligation=True, status=None, plan_id=None, error="db locked"
    )
    assert (fields["success"], fields["status"]) == (False, "Error")
    assert fields["msg"].startswith("FB606")
    assert_sendable("TrainingPlanStatusReply", fields)


def test_approval_reply_is_byte_for_byte_fedbiomeds() -> None:
    message = message_of(
        "ApprovalRequest",
        request_id="request_10",
        researcher_id=IDS["researcher_id"],
        description="d",
        training_plan="x",
    )
    fields = approval_reply(message, **NODE, success=True, plan_id="training_plan_42", text="")
    assert encode_message("ApprovalReply", fields) == VECTORS["ApprovalReply"]


def test_error_message_is_byte_for_byte_fedbiomeds() -> None:
    message = message_of("FARequest", request_id="request_4", researcher_id=IDS["researcher_id"])
    fields = error_message(message, **NODE, extra_msg="This node does not handle `FARequest` requests.")
    assert encode_message("ErrorMessage", fields) == VECTORS["ErrorMessage"]


def test_error_message_for_a_message_that_did_not_decode() -> None:
    fields = error_message(
        MessageError(reason="x", request_id="r", researcher_id=None),
        **NODE,
        extra_msg="bad\nline",
        errnum=None,
    )
    assert (fields["request_id"], fields["researcher_id"], fields["extra_msg"]) == (
        "r",
        "<unknown>",
        "bad\\nline",
    )
    assert_sendable("ErrorMessage", fields)
    assert_sendable("ErrorMessage", error_message(None, **NODE, extra_msg=""))


@given(
    st.dictionaries(
        st.sampled_from(["request_id", "researcher_id", "tags", "experiment_id"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=300), st.lists(st.text(max_size=3), max_size=2)),
    )
)
def test_management_replies_are_sendable_whatever_the_message_held(fields: dict[str, Any]) -> None:
    message = Message(kind="X", fields=MappingProxyType(fields))
    for kind, reply in [
        ("PingReply", ping_reply(message, **NODE)),
        ("SearchReply", search_reply(message, [RECORD, OTHER], **NODE)),
        ("ListReply", list_reply(message, [RECORD], **NODE)),
        ("ApprovalReply", approval_reply(message, **NODE, success=False, plan_id=None, text="t")),
        (
            "TrainingPlanStatusReply",
            status_reply(message, **NODE, approval_obligation=True, status=None, plan_id=None),
        ),
        ("ErrorMessage", error_message(message, **NODE, extra_msg="e")),
    ]:
        assert_sendable(kind, reply)


# --- scalar feedback --------------------------------------------------------------------------


def test_scalar_of_a_validation_report() -> None:
    event = MetricEvent(
        node_id="NODE_5e1a",
        job_id="exper_77",
        researcher_id="R",
        round=2,
        metric={"ACCURACY": 0.2857143, "loss": 1},
        iteration=1,
        test=True,
        test_on_global_updates=True,
        total_samples=56,
        batch_samples=56,
        num_batches=1,
    )
    scalar = scalar_of(event, node_name="node1")
    assert (scalar.node_id, scalar.experiment_id, scalar.node_name) == ("NODE_5e1a", "exper_77", "node1")
    assert (scalar.train, scalar.test, scalar.test_on_global_updates, scalar.test_on_local_updates) == (
        False,
        True,
        True,
        False,
    )
    assert scalar.metric == {"ACCURACY": 0.2857143, "loss": 1.0}
    assert all(type(v) is float for v in scalar.metric.values())
    assert (scalar.total_samples, scalar.batch_samples, scalar.num_batches, scalar.iteration) == (
        56,
        56,
        1,
        1,
    )
    assert (scalar.epoch, scalar.num_samples_trained) == (None, None)


def test_scalar_counts_fit_int32() -> None:
    event = MetricEvent(
        node_id="N",
        job_id="e",
        researcher_id="R",
        round=0,
        metric={},
        iteration=2**40,
        epoch=3,
        num_samples_trained=2**33,
    )
    scalar = scalar_of(event, node_name="n")
    assert (scalar.iteration, scalar.num_samples_trained, scalar.epoch) == (2**31 - 1, 2**31 - 1, 3)
    assert (scalar.total_samples, scalar.batch_samples, scalar.num_batches) == (0, 0, 0)
