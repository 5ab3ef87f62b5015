"""Fed-BioMed 6.4.1 messages <-> fedpipe's round: TrainRequest in, replies out (pure, no I/O).

``train_request_of`` turns a decoded 6.x ``TrainRequest`` into fedpipe's ``TrainRequest`` (the
ids, the JSON-like arguments, the training arguments translated to fedpipe's names with 6.4.1's
defaults) and an ``InlineRound`` (what the 6.x request carries inline: plan source, parameters,
aggregator arguments, auxiliary variables). The reply builders make dicts with exactly the fields
of the 6.4.1 class they answer with, each of the type 6.4.1 checks; ``fedpipe.fedbiomed.messages.
encode_message`` sends them.

What 6.4.1's node answers, and so this node, when a round cannot run or fails
(``round_reply``): an ``ErrorMessage`` when the request is refused before the round starts
(unknown dataset: FB313; training arguments or request it cannot take, or a node bug: FB300),
a ``TrainReply`` with ``success`` false and the error's public text otherwise (secure
aggregation refused, plan not approved or not loadable, data, training, state ...). Either way
the researcher drops the node from the round; only the error's public text is ever sent.
"""

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import torch
from attrs import field, frozen
from returns.result import Failure, Result, Success

from fedpipe.args import parse_training_args_mapping
from fedpipe.codec.dtypes import ALLOWED_DTYPES, BFLOAT16
from fedpipe.context import TrainingOutcome, Update
from fedpipe.errors import ErrorCode, RoundError, printable
from fedpipe.fedbiomed.messages import PROTOCOL_VERSION, Message, MessageError
from fedpipe.fedbiomed.secure import FedbiomedSecagg, secagg_of
from fedpipe.fedbiomed.wire import ScalarFeedback
from fedpipe.plan import DatasetRecord
from fedpipe.ports import Approval, MetricEvent
from fedpipe.request import (
    MAX_DEPTH,
    MAX_ELEMENTS,
    MAX_ID_LENGTH,
    TrainRequest,
    freeze_mapping,
    is_identifier_text,
    json_problem,
    thaw,
)
from fedpipe.runner import RoundRun

__all__ = [
    "APPROVAL_OFF_TEXT",
    "TRAINING_ARGS_DEFAULTS",
    "InlineRound",
    "OutgoingReply",
    "approval_reply",
    "error_message",
    "fedbiomed_update",
    "list_reply",
    "ping_reply",
    "refusal_reply",
    "round_reply",
    "scalar_of",
    "search_reply",
    "status_reply",
    "train_reply",
    "train_request_of",
    "translate_training_args",
]

APPROVAL_OFF_TEXT: Final = "This node does not require training plan approval (maybe for debugging purposes)."
_UNKNOWN_RESEARCHER: Final = "<unknown>"  # what 6.4.1's node names an unknown researcher

# 6.4.1's TrainingArgs scheme: every key and its default (what its node fills in)
TRAINING_ARGS_DEFAULTS: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "optimizer_args": {},
        "loader_args": {},
        "epochs": None,
        "num_updates": None,
        "dry_run": False,
        "batch_maxnum": None,
        "test_ratio": 0.0,
        "test_batch_size": 0,
        "test_on_local_updates": False,
        "test_on_global_updates": False,
        "shuffle_testing_dataset": False,
        "test_metric": None,
        "test_metric_args": {},
        "log_interval": 10,
        "fedprox_mu": None,
        "use_gpu": False,
        "dp_args": None,
        "share_persistent_buffers": True,
        "random_seed": None,
    }
)
"""Fed-BioMed 6.4.1's training arguments and their defaults, in its scheme's order."""

# 6.4.1 name -> fedpipe name, where they differ; test_batch_size is handled on its own
_RENAMED: Final = {"dp_args": "dp"}


@frozen(kw_only=True)
class InlineRound:
    """What a 6.x TrainRequest carries inline, for the round's ``take_*`` steps.

    ``params`` maps names to tensors; ``aggregator_args`` and ``aux_vars`` are the researcher's
    as decoded (they may hold tensors: 6.4.1's SCAFFOLD correction states travel in the
    aggregator arguments); ``secagg_arguments`` is None or empty for a plain round, and
    ``secagg`` holds them checked for a secure one.
    """

    request_id: str
    researcher_id: str
    experiment_id: str
    plan_source: str = field(repr=False)
    params: Mapping[str, Any] = field(eq=False, repr=False)
    aggregator_args: Mapping[str, Any] = field(eq=False, repr=False)
    aux_vars: Mapping[str, Any] = field(eq=False, repr=False)
    secagg_arguments: Mapping[str, Any] | None = field(eq=False, repr=False)
    secagg: FedbiomedSecagg | None = None


@frozen(kw_only=True)
class OutgoingReply:
    """A reply to send (``encode_message(kind, fields)``) and notes for the node log."""

    kind: str
    fields: dict[str, Any] = field(eq=False, repr=False)
    notes: tuple[str, ...] = ()


# --- the train request ----------------------------------------------------------------------


def _bad(name: str, rule: str, got: object = None) -> RoundError:
    return RoundError(
        code=ErrorCode.BAD_REQUEST,
        step="parse_request",
        detail=f"TrainRequest field `{name}`: {rule} (got {type(got).__name__})",
        public=f"Invalid train request: field `{name}` {rule}.",
    )


def _bad_args(name: str, rule: str, got: object = None) -> RoundError:
    return RoundError(
        code=ErrorCode.BAD_TRAINING_ARGS,
        step="parse_training_args",
        detail=f"training argument `{name}` {rule} (got {type(got).__name__})",
        public=f"Invalid training arguments: training argument `{name}` {rule}.",
    )


def _text_id(fields: Mapping[str, Any], name: str) -> Result[str, RoundError]:
    value = fields.get(name)
    if not is_identifier_text(value):
        return Failure(
            _bad(name, f"must be a non-empty printable string of at most {MAX_ID_LENGTH} characters", value)
        )
    return Success(str(value))


def _class_name(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_ID_LENGTH and value.isidentifier() and value.isascii()


def _metric_name(value: Any) -> Any:
    """6.4.1 sends a ``MetricTypes`` member as ``{"__type__": "MetricTypes", "value": NAME}``."""
    if (
        isinstance(value, Mapping)
        and set(value) == {"__type__", "value"}
        and value["__type__"] == "MetricTypes"
    ):
        return value["value"]
    return value


def translate_training_args(raw: object, *, training: bool) -> Result[dict[str, Any], RoundError]:
    """6.4.1's ``training_args`` as fedpipe's, with 6.4.1's defaults; or the error naming the argument.

    Every key of 6.4.1's scheme is accepted, under its own name (``dp_args`` becomes ``dp``);
    an unknown key is refused, as 6.4.1 refuses it. Defaults are 6.4.1's (``TRAINING_ARGS_DEFAULTS``;
    they are fedpipe's too). ``test_metric`` may be a name or 6.4.1's encoded ``MetricTypes``.
    ``test_batch_size`` passes through (0, 6.4.1's default: the whole testing subset as one
    batch; null is dropped). A training request must give ``epochs`` or ``num_updates`` (6.4.1 refuses to train without
    either; fedpipe alone would default to one epoch). The result is then validated by
    ``fedpipe.args.parse_training_args_mapping``, so a value fedpipe cannot honour is refused here,
    before the round, naming the argument.

    >>> translate_training_args({"epochs": 2, "dp_args": None, "test_batch_size": 0}, training=True).unwrap()
    {'epochs': 2, 'dp': None, 'test_batch_size': 0}
    >>> translate_training_args({"loader_args": {}}, training=True).failure().public
    'Invalid training arguments: training argument `epochs` or `num_updates` is required to train (Fed-BioMed 6.4.1 needs one).'
    """
    if not isinstance(raw, Mapping):
        return Failure(_bad("training_args", "must be an object", raw))
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            return Failure(_bad("training_args", "must be named by strings", key))
        if key not in TRAINING_ARGS_DEFAULTS:
            return Failure(_bad_args(printable(key), "is not a Fed-BioMed training argument"))
        if key == "test_batch_size" and value is None:
            continue
        out[_RENAMED.get(key, key)] = _metric_name(value) if key == "test_metric" else value
    if training and out.get("epochs") is None and out.get("num_updates") is None:
        return Failure(
            _bad_args("epochs` or `num_updates", "is required to train (Fed-BioMed 6.4.1 needs one)", None)
        )
    checked = parse_training_args_mapping(out, "parse_training_args")
    if isinstance(checked, Failure):
        return Failure(checked.failure())
    return Success(out)


def _tensor_tree_problem(value: object, path: str) -> str | None:
    """Why ``value`` is neither plain JSON nor JSON with tensor leaves (None when it is one of them).

    Bounded like ``fedpipe.request.json_problem`` (depth, number of values); iterative.
    """
    stack: list[tuple[Any, int, str]] = [(value, 0, path)]
    budget = MAX_ELEMENTS
    while stack:
        item, depth, where = stack.pop()
        budget -= 1
        if budget < 0:
            return f"`{path}` must hold at most {MAX_ELEMENTS} values"
        if depth > MAX_DEPTH:
            return f"`{where}` must nest at most {MAX_DEPTH} deep"
        if isinstance(item, torch.Tensor):
            continue
        if type(item) is dict:
            for key, inner in item.items():
                if not isinstance(key, str):
                    return f"`{where}` must be an object with string keys"
                stack.append((inner, depth + 1, f"{where}.{printable(key, 32)}"))
        elif type(item) in (list, tuple):
            stack.extend((inner, depth + 1, f"{where}[{i}]") for i, inner in enumerate(item))
        else:
            problem, _ = json_problem(item, where)
            if problem is not None:
                return f"`{problem.path}` {problem.rule}"
    return None


def _json_field(fields: Mapping[str, Any], name: str) -> Result[Mapping[str, Any], RoundError]:
    value = fields.get(name)
    if not isinstance(value, Mapping):
        return Failure(_bad(name, "must be an object with string keys", value))
    problem, _ = json_problem(value, name)
    if problem is not None:
        return Failure(
            RoundError(
                code=ErrorCode.BAD_REQUEST,
                step="parse_request",
                detail=f"field `{problem.path}`: {problem.rule} (got {problem.got})",
                public=f"Invalid train request: field `{problem.path}` {problem.rule}.",
            )
        )
    return Success(freeze_mapping(value))


def _tree_field(
    fields: Mapping[str, Any], name: str, *, optional: bool
) -> Result[dict[str, Any], RoundError]:
    value = fields.get(name)
    if value is None and optional:
        return Success({})
    if type(value) is not dict:
        return Failure(
            _bad(name, "must be an object with string keys" + (" or null" if optional else ""), value)
        )
    problem = _tensor_tree_problem(value, name)
    if problem is not None:
        return Failure(_bad(name, f"is not valid here: {problem}", value))
    return Success(value)


def _params(fields: Mapping[str, Any]) -> Result[dict[str, Any], RoundError]:
    value = fields.get("params")
    if type(value) is not dict:
        return Failure(_bad("params", "must be an object mapping parameter names to tensors", value))
    for name, tensor in value.items():
        if not isinstance(name, str):
            return Failure(_bad("params", "must be named by strings", name))
        if not isinstance(tensor, torch.Tensor):
            return Failure(_bad(f"params.{printable(name, 64)}", "must be a tensor", tensor))
    return Success(value)


def train_request_of(message: Message) -> Result[tuple[TrainRequest, InlineRound], RoundError]:
    """fedpipe's TrainRequest and the inline parts of a 6.x ``TrainRequest``; never raises.

    Total over any ``fields`` values: a value 6.4.1 or fedpipe cannot take gives a
    ``bad_request`` failure naming the field (``bad_training_args`` for a training argument,
    ``secagg_config`` for a secure-aggregation request). The ids must be printable strings of at
    most 256 characters; ``training_plan_class`` a Python class name; ``round`` a non-negative
    int; ``model_args`` plain JSON (``fedpipe.request.json_problem``); ``params`` names ->
    tensors; ``aggregator_args`` and ``optim_aux_var`` JSON that may hold tensors. The request
    gets ``job_id`` = ``experiment_id`` and empty URLs (nothing is downloaded); its
    ``aggregator_args`` are the plain-JSON entries, the full ones are in the ``InlineRound``.
    A non-empty ``secagg_arguments`` must pass ``fedpipe.fedbiomed.secure.secagg_of``.
    """
    if message.kind != "TrainRequest":
        return Failure(_bad("__type_message__", "must name a TrainRequest", message.kind))
    fields = message.fields
    ids: dict[str, str] = {}
    for name in ("request_id", "researcher_id", "experiment_id", "dataset_id"):
        checked = _text_id(fields, name)
        if isinstance(checked, Failure):
            return Failure(checked.failure())
        ids[name] = checked.unwrap()
    state_id = fields.get("state_id")
    if state_id is not None and not is_identifier_text(state_id):
        return Failure(
            _bad("state_id", "must be null or a printable string of at most 256 characters", state_id)
        )
    training = fields.get("training")
    if not isinstance(training, bool):
        return Failure(_bad("training", "must be a boolean", training))
    class_name = fields.get("training_plan_class")
    if not _class_name(class_name):
        return Failure(_bad("training_plan_class", "must be a Python class name", class_name))
    number = fields.get("round")
    if type(number) is not int or not 0 <= number < 2**63:
        return Failure(_bad("round", "must be a non-negative integer", number))
    source = fields.get("training_plan")
    if not isinstance(source, str):
        return Failure(_bad("training_plan", "must be the plan's source text", source))
    secagg = fields.get("secagg_arguments")
    if secagg is not None and not isinstance(secagg, Mapping):
        return Failure(_bad("secagg_arguments", "must be an object or null", secagg))
    checked_secagg = secagg_of(secagg)
    if isinstance(checked_secagg, Failure):
        return Failure(checked_secagg.failure())
    model_args = _json_field(fields, "model_args")
    if isinstance(model_args, Failure):
        return Failure(model_args.failure())
    aggregator_args = _tree_field(fields, "aggregator_args", optional=False)
    if isinstance(aggregator_args, Failure):
        return Failure(aggregator_args.failure())
    aux_vars = _tree_field(fields, "optim_aux_var", optional=True)
    if isinstance(aux_vars, Failure):
        return Failure(aux_vars.failure())
    params = _params(fields)
    if isinstance(params, Failure):
        return Failure(params.failure())
    args = translate_training_args(fields.get("training_args"), training=training)
    if isinstance(args, Failure):
        return Failure(args.failure())
    plain_aggregator_args = {
        key: value for key, value in aggregator_args.unwrap().items() if json_problem(value, key)[0] is None
    }
    request = TrainRequest(
        researcher_id=ids["researcher_id"],
        job_id=ids["experiment_id"],
        params_url="",
        dataset_id=ids["dataset_id"],
        training_plan_url="",
        training_plan_class=str(class_name),
        training=training,
        state_id=state_id,
        training_args=freeze_mapping(args.unwrap()),
        model_args=model_args.unwrap(),
        aggregator_args=freeze_mapping(plain_aggregator_args),
        round=number,
    )
    inline = InlineRound(
        request_id=ids["request_id"],
        researcher_id=ids["researcher_id"],
        experiment_id=ids["experiment_id"],
        plan_source=source,
        params=MappingProxyType(params.unwrap()),
        aggregator_args=MappingProxyType(aggregator_args.unwrap()),
        aux_vars=MappingProxyType(aux_vars.unwrap()),
        secagg_arguments=None if secagg is None else MappingProxyType(dict(secagg)),
        secagg=checked_secagg.unwrap(),
    )
    return Success((request, inline))


# --- the update -----------------------------------------------------------------------------

_READABLE_DTYPES: Final = ALLOWED_DTYPES - {BFLOAT16}
_NAMES_SHOWN = 8


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(printable(n, 64) for n in names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")


def fedbiomed_update(weights: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The update as a Fed-BioMed 6.4.1 researcher can read it, and notes on what was converted.

    ``weights`` must map names to tensors (else ``TypeError``). A bfloat16 tensor becomes
    float32 (numpy, through which 6.4.1 reads tensors, has no bfloat16), which holds every
    bfloat16 value exactly, with a note naming the tensors; a tensor of a dtype numpy has no
    equivalent for (float8 kinds, quantized ...) raises ``ValueError``. Idempotent.

    >>> weights, notes = fedbiomed_update({"w": torch.ones(2, dtype=torch.bfloat16)})
    >>> weights["w"].dtype, notes
    (torch.float32, ('1 bfloat16 tensor(s) sent as float32 (Fed-BioMed cannot read bfloat16): w',))
    """
    if not isinstance(weights, Mapping):
        raise TypeError(f"the update must map parameter names to tensors, not {type(weights).__name__}")
    out: dict[str, Any] = {}
    converted: list[str] = []
    for name, tensor in weights.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError("the update must map parameter names (strings) to tensors")
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.detach().to(torch.float32)
            converted.append(name)
        elif str(tensor.dtype).removeprefix("torch.") not in _READABLE_DTYPES:
            raise ValueError(
                f"parameter {printable(name, 64)} has dtype {tensor.dtype}, which Fed-BioMed cannot read"
            )
        out[name] = tensor
    notes = (
        (
            f"{len(converted)} bfloat16 tensor(s) sent as float32 (Fed-BioMed cannot read bfloat16): {_names(converted)}",
        )
        if converted
        else ()
    )
    return out, notes


# --- replies --------------------------------------------------------------------------------


def _ids(source: Message | MessageError | None) -> tuple[str | None, str | None]:
    """(request_id, researcher_id) of a message or a decoding failure, when printable strings."""
    if isinstance(source, MessageError):
        return source.request_id, source.researcher_id
    if isinstance(source, Message):
        request_id, researcher_id = source.fields.get("request_id"), source.fields.get("researcher_id")
        return (
            request_id if is_identifier_text(request_id) else None,
            researcher_id if is_identifier_text(researcher_id) else None,
        )
    return None, None


def _header(message: Message, node_id: str, node_name: str) -> dict[str, Any]:
    request_id, researcher_id = _ids(message)
    return {
        "protocol_version": PROTOCOL_VERSION,
        "request_id": request_id,
        "researcher_id": researcher_id or _UNKNOWN_RESEARCHER,
        "node_id": node_id,
        "node_name": node_name,
    }


def _echo(message: Message, name: str) -> str:
    value = message.fields.get(name)
    return value if isinstance(value, str) else ""


def error_message(
    message: Message | MessageError | None,
    *,
    node_id: str,
    node_name: str,
    extra_msg: str,
    errnum: str | None = "FB301",
) -> dict[str, Any]:
    """An ``ErrorMessage`` answering ``message`` (or a message that did not decode).

    ``request_id`` and ``researcher_id`` are the message's when it carried them as printable
    strings (else None and 6.4.1's ``"<unknown>"``); ``extra_msg`` is escaped to one line of at
    most 2000 characters. ``errnum`` is 6.4.1's error number: FB301 for a protocol error (a
    message it cannot read or does not handle), FB300 for a round that could not start, FB313
    for an unknown dataset.
    """
    request_id, researcher_id = _ids(message)
    return {
        "protocol_version": PROTOCOL_VERSION,
        "request_id": request_id,
        "researcher_id": researcher_id or _UNKNOWN_RESEARCHER,
        "node_id": node_id,
        "node_name": node_name,
        "extra_msg": printable(extra_msg, 2000),
        "errnum": errnum,
    }


def ping_reply(message: Message, *, node_id: str, node_name: str) -> dict[str, Any]:
    """The ``PingReply`` to a ``PingRequest``."""
    return _header(message, node_id, node_name)


def _shown_dataset(record: DatasetRecord, *, with_dtypes: bool) -> dict[str, Any]:
    """A dataset as 6.4.1's node shows it: its registry entry without ``path``."""
    shown: dict[str, Any] = {
        "name": record.name,
        "data_type": record.data_type,
        "tags": list(record.tags),
        "description": record.description,
        "shape": {record.data_type: [int(n) for n in record.shape]},
    }
    if with_dtypes:
        shown["dtypes"] = {}  # fedpipe's registry keeps no column types; the researcher reads none
    shown["dataset_id"] = record.dataset_id
    shown["dataset_parameters"] = thaw(record.dataset_parameters)
    return shown


def search_reply(
    message: Message,
    datasets: Iterable[DatasetRecord],
    *,
    node_id: str,
    node_name: str,
) -> dict[str, Any]:
    """The ``SearchReply``: the datasets whose tags include every requested tag (all for none).

    Each dataset is shown as 6.4.1's node shows it: ``name``, ``data_type``, ``tags``,
    ``description``, ``shape`` (``{data_type: [rows, columns]}``), ``dtypes`` (empty: fedpipe's
    registry keeps no column types, and the researcher does not read them), ``dataset_id`` and
    ``dataset_parameters``; never its path. Tags that are not all strings match nothing.
    """
    tags = message.fields.get("tags")
    wanted = set(tags) if isinstance(tags, list) and all(isinstance(t, str) for t in tags) else None
    found = [
        _shown_dataset(record, with_dtypes=True)
        for record in datasets
        if wanted is not None and wanted.issubset(record.tags)
    ]
    header = _header(message, node_id, node_name)
    return {
        "protocol_version": header["protocol_version"],
        "request_id": header["request_id"],
        "researcher_id": header["researcher_id"],
        "databases": found,
        "node_id": node_id,
        "node_name": node_name,
        "count": len(found),
    }


def list_reply(
    message: Message, datasets: Iterable[DatasetRecord], *, node_id: str, node_name: str
) -> dict[str, Any]:
    """The ``ListReply``: every dataset, shown as in a search but without ``dtypes`` (as 6.4.1)."""
    shown = [_shown_dataset(record, with_dtypes=False) for record in datasets]
    header = _header(message, node_id, node_name)
    return {
        "protocol_version": header["protocol_version"],
        "request_id": header["request_id"],
        "researcher_id": header["researcher_id"],
        "success": True,
        "databases": shown,
        "node_id": node_id,
        "node_name": node_name,
        "count": len(shown),
    }


def approval_reply(
    message: Message,
    *,
    node_id: str,
    node_name: str,
    success: bool,
    plan_id: str | None,
    text: str,
) -> dict[str, Any]:
    """The ``ApprovalReply``: ``success`` true when the plan is registered for review (or was already).

    ``message`` carries ``text`` (6.4.1 sends ``""`` for a new registration); ``status`` is
    always 0, as in 6.4.1.
    """
    header = _header(message, node_id, node_name)
    return {
        "protocol_version": header["protocol_version"],
        "request_id": header["request_id"],
        "researcher_id": header["researcher_id"],
        "training_plan_id": plan_id,
        "message": printable(text, 2000),
        "node_id": node_id,
        "node_name": node_name,
        "status": 0,
        "success": success,
    }


_STATUS_TEXT: Final = {
    Approval.APPROVED: "Training plan has been approved by the node, training can start",
    Approval.PENDING: "Training plan is pending: waiting for a review",
    Approval.REJECTED: "Training plan has been rejected by the node, training is not possible",
}
_STATUS_ERROR: Final = (
    "FB606: model manager error: Cannot check if training plan has been registered due to an internal error"
)


def status_reply(
    message: Message,
    *,
    node_id: str,
    node_name: str,
    approval_obligation: bool,
    status: Approval | None,
    plan_id: str | None,
    error: str | None = None,
) -> dict[str, Any]:
    """The ``TrainingPlanStatusReply``, with 6.4.1's texts.

    ``status`` is the plan's status in the registry (None: not registered). With approval off
    6.4.1 still reports the status but says that approval is not required; with it on, ``msg``
    tells what the status means. ``error`` (any text: the failure is logged by the caller)
    marks a registry that could not be read: ``success`` false, status ``"Error"`` and 6.4.1's
    FB606 text.
    """
    header = _header(message, node_id, node_name)
    state = status or Approval.NOT_REGISTERED
    if error is not None:
        success, shown, text = False, "Error", _STATUS_ERROR
    elif not approval_obligation:
        success, shown, text = True, state.value, APPROVAL_OFF_TEXT
    else:
        success, shown = True, state.value
        text = _STATUS_TEXT.get(state, f"Unknown training plan not in database (status {state.value})")
    return {
        "protocol_version": header["protocol_version"],
        "request_id": header["request_id"],
        "researcher_id": header["researcher_id"],
        "node_id": node_id,
        "node_name": node_name,
        "experiment_id": _echo(message, "experiment_id"),
        "success": success,
        "approval_obligation": approval_obligation,
        "status": shown,
        "msg": text,
        "training_plan": _echo(message, "training_plan"),
        "training_plan_id": plan_id if error is None else None,
    }


def _train_header(message: Message, node_id: str, node_name: str) -> dict[str, Any]:
    header = _header(message, node_id, node_name)
    return {
        "protocol_version": header["protocol_version"],
        "request_id": header["request_id"],
        "researcher_id": header["researcher_id"],
        "experiment_id": _echo(message, "experiment_id"),
    }


def _failed_train_reply(
    message: Message, node_id: str, node_name: str, public: str, state_id: str | None
) -> dict[str, Any]:
    """6.4.1's reply of a failed round: ``success`` false, its text, the state id it would have saved."""
    return {
        **_train_header(message, node_id, node_name),
        "success": False,
        "node_id": node_id,
        "node_name": node_name,
        "dataset_id": "",
        "timing": {},
        "msg": public,
        "state_id": state_id,
        "sample_size": None,
        "encrypted": False,
        "params": None,
        "optimizer_args": None,
        "optim_aux_var": None,
        "encryption_factor": None,
    }


_UPDATE_REFUSED: Final = "The model update cannot be expressed in a Fed-BioMed reply."
_UPDATE_INCOMPLETE: Final = "The model update lacks parameters that the request sent."


def _success_train_reply(
    message: Message, run: RoundRun, node_id: str, node_name: str
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The TrainReply of a round that succeeded, and notes; a failed reply if the update cannot go."""
    ctx = run.result.unwrap()
    base = {
        **_train_header(message, node_id, node_name),
        "success": True,
        "node_id": node_id,
        "node_name": node_name,
        "dataset_id": run.reply.dataset_id,
        "msg": "",
    }
    if not ctx.request.training:
        return base | {
            "timing": {},
            "state_id": None,
            "sample_size": None,
            "encrypted": False,
            "params": None,
            "optimizer_args": None,
            "optim_aux_var": None,
            "encryption_factor": None,
        }, ()
    state_id = run.reply.state_id

    def failed(public: str, note: str) -> tuple[dict[str, Any], tuple[str, ...]]:
        return _failed_train_reply(message, node_id, node_name, public, state_id), (note,)

    update, outcome = ctx.update, ctx.training
    if update is None or outcome is None:
        return failed(_UPDATE_REFUSED, "the round succeeded without an update or a training outcome")
    if update.encrypted:
        cipher, factor = update.model_weights, update.encryption_factor
        if not _ints(cipher) or not (factor is None or _ints(factor)):
            return failed(_UPDATE_REFUSED, "an encrypted update that is not a list of ints was not sent")
        return _encrypted_train_reply(base, update, outcome, state_id)
    try:
        weights, notes = fedbiomed_update(update.model_weights)
    except (TypeError, ValueError) as err:
        return failed(_UPDATE_REFUSED, f"update not sent: {err}")
    sent = message.fields.get("params")
    requested = (
        [name for name in sent if isinstance(name, str)] if isinstance(sent, Mapping) else list(weights)
    )
    missing = [name for name in requested if name not in weights]
    if missing:
        return failed(
            _UPDATE_INCOMPLETE, f"the update lacks {len(missing)} requested parameter(s): {_names(missing)}"
        )
    wanted = set(requested)
    extra = [name for name in weights if name not in wanted]
    if extra:
        notes += (f"{len(extra)} parameter(s) the researcher did not send were kept local: {_names(extra)}",)
    return base | {
        "timing": {
            "rtime_training": float(outcome.rtime_training),
            "ptime_training": float(outcome.ptime_training),
        },
        "state_id": state_id,
        "sample_size": int(outcome.sample_size),
        "encrypted": False,
        "params": {name: weights[name] for name in requested},
        "optimizer_args": thaw(update.optimizer_args),
        "optim_aux_var": thaw(update.aux_vars),
        "encryption_factor": None,
    }, notes


def _ints(values: Any) -> bool:
    return (
        isinstance(values, list | tuple) and bool(values) and all(type(v) is int and v >= 0 for v in values)
    )


def _encrypted_train_reply(
    base: dict[str, Any], update: Update, outcome: TrainingOutcome, state_id: str | None
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A secure round's TrainReply: the flat ciphertexts and the factor as lists of ints, as 6.4.1."""
    factor = update.encryption_factor
    return base | {
        "timing": {
            "rtime_training": float(outcome.rtime_training),
            "ptime_training": float(outcome.ptime_training),
        },
        "state_id": state_id,
        "sample_size": int(outcome.sample_size),
        "encrypted": True,
        "params": [int(c) for c in update.model_weights],
        "optimizer_args": thaw(update.optimizer_args),
        "optim_aux_var": thaw(update.aux_vars),
        "encryption_factor": None if factor is None else [int(c) for c in factor],
    }, ()


def _train_reply(
    message: Message, run: RoundRun, node_id: str, node_name: str
) -> tuple[dict[str, Any], tuple[str, ...]]:
    match run.result:
        case Success(_):
            return _success_train_reply(message, run, node_id, node_name)
        case Failure(error):
            return _failed_train_reply(message, node_id, node_name, error.public, run.reply.state_id), ()
    raise AssertionError("unreachable: a Result is a Success or a Failure")


def train_reply(message: Message, run: RoundRun, *, node_id: str, node_name: str) -> dict[str, Any]:
    """The ``TrainReply`` of a finished round, with exactly 6.4.1's fields and types.

    Success, training: ``params`` the update under the request's parameter names (as float32
    where the plan had bfloat16, see ``fedbiomed_update``; names the request did not send stay
    on the node), ``timing`` the wall and CPU seconds of training, ``sample_size`` the training
    samples, ``state_id`` the saved state, ``optimizer_args``, ``optim_aux_var`` (``{}`` unless
    the plan collected some), ``encrypted`` false, ``encryption_factor`` None. Success,
    validation only: ``timing`` ``{}`` and every optional field None, as 6.4.1. Failure (or an
    update that cannot be sent: a missing requested name, an unreadable dtype): ``success`` false,
    ``dataset_id`` ``""``, ``msg`` the error's public text only. See ``round_reply`` for the
    failures that 6.4.1 answers with an ``ErrorMessage`` instead, and for the notes.
    """
    return _train_reply(message, run, node_id, node_name)[0]


# What 6.4.1's node answers with an ErrorMessage rather than a failed TrainReply: the failures
# it meets before its round starts (dataset lookup, argument parsing) and its last-resort catch.
_ERROR_NUMBERS: Final = {
    ErrorCode.DATASET_NOT_FOUND: "FB313",
    ErrorCode.BAD_TRAINING_ARGS: "FB300",
    ErrorCode.BAD_REQUEST: "FB300",
    ErrorCode.INTERNAL: "FB300",
}


def refusal_reply(message: Message, error: RoundError, *, node_id: str, node_name: str) -> OutgoingReply:
    """What 6.4.1's node sends for a train request refused with ``error`` before any round ran.

    An ``ErrorMessage`` (FB313 or FB300, see the module docstring) carrying ``error.public``, or
    for the refusals 6.4.1 meets inside its round (secure aggregation) a failed ``TrainReply``.
    """
    errnum = _ERROR_NUMBERS.get(error.code)
    if errnum is not None:
        return OutgoingReply(
            kind="ErrorMessage",
            fields=error_message(
                message, node_id=node_id, node_name=node_name, extra_msg=error.public, errnum=errnum
            ),
        )
    return OutgoingReply(
        kind="TrainReply", fields=_failed_train_reply(message, node_id, node_name, error.public, None)
    )


def round_reply(message: Message, run: RoundRun, *, node_id: str, node_name: str) -> OutgoingReply:
    """The reply 6.4.1's node would send for this round, and notes for the node log.

    A failure 6.4.1 meets before its round (unknown dataset, arguments) or a node bug is an
    ``ErrorMessage``; everything else is ``train_reply``'s TrainReply, with its notes (tensors
    converted, parameters kept local, an update that could not be sent).
    """
    if isinstance(run.result, Failure) and run.result.failure().code in _ERROR_NUMBERS:
        error = run.result.failure()
        return refusal_reply(message, error, node_id=node_id, node_name=node_name)
    fields, notes = _train_reply(message, run, node_id, node_name)
    return OutgoingReply(kind="TrainReply", fields=fields, notes=notes)


# --- feedback -------------------------------------------------------------------------------

_INT32_MAX: Final = 2**31 - 1


def _int32(value: int | None) -> int:
    """A count for an int32 proto field: None is 0, and values are clamped into int32."""
    if value is None:
        return 0
    return max(-_INT32_MAX - 1, min(_INT32_MAX, int(value)))


def scalar_of(event: MetricEvent, *, node_name: str) -> ScalarFeedback:
    """The Scalar feedback of one metric report, in the shape 6.4.1's monitor shows.

    ``experiment_id`` is the job id (a Fed-BioMed round's job is its experiment); counts absent
    from the event are 0 (proto3's default), and counts beyond int32 are clamped (the field is an
    int32); ``epoch`` and ``num_samples_trained`` stay None when absent (proto3 ``optional``).

    >>> from fedpipe.ports import MetricEvent
    >>> s = scalar_of(MetricEvent(node_id="N", job_id="e", researcher_id="R", round=0,
    ...                           metric={"Loss": 1}, iteration=3, train=True), node_name="n")
    >>> s.metric, s.total_samples, s.epoch
    ({'Loss': 1.0}, 0, None)
    """
    return ScalarFeedback(
        node_id=event.node_id,
        experiment_id=event.job_id,
        train=bool(event.train),
        test=bool(event.test),
        test_on_local_updates=bool(event.test_on_local_updates),
        test_on_global_updates=bool(event.test_on_global_updates),
        metric={str(name): float(value) for name, value in event.metric.items()},
        epoch=None if event.epoch is None else _int32(event.epoch),
        total_samples=_int32(event.total_samples),
        batch_samples=_int32(event.batch_samples),
        num_batches=_int32(event.num_batches),
        num_samples_trained=None if event.num_samples_trained is None else _int32(event.num_samples_trained),
        iteration=_int32(event.iteration),
        node_name=node_name,
    )
