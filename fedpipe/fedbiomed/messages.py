"""Fed-BioMed 6.4.1's application messages: the class table, a total strict decoder, an exact encoder.

Every researcher -> node message and every node -> researcher reply (not Feedback) is one of
Fed-BioMed's message dataclasses, sent as a msgpack map of its fields, in the dataclass' field
order, followed by ``"__type_message__": {"module": "fedbiomed.common.message", "class": <name>}``.
Fed-BioMed 6.4.1 rebuilds the dataclass from the map, so a reply is read only when its key set is
exactly the class' fields and every value passes the class' ``isinstance`` check; anything else
is refused and the researcher keeps waiting for a reply that never comes.

- ``MESSAGE_FIELDS`` is that table for the classes a node receives or sends (field order, accepted
  kinds, defaults), as Fed-BioMed 6.4.1 declares them.
- ``decode_message`` is total: bytes in, ``Message`` or ``MessageError`` out, never an exception.
  It is stricter than 6.4.1 where 6.4.1 is lax by accident: a bool is not accepted for an int
  field (6.4.1 takes ``True`` since bool subclasses int), and the lists the node reads item by
  item (``SearchRequest.tags``, the secagg ``parties``) must hold strings.
- ``encode_message`` checks what it sends against the same table (a mismatch is a programming
  error: ``ValueError``) and writes the bytes 6.4.1 writes for the same message.
"""

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

from attrs import field, frozen
from returns.result import Failure, Result, Success

from fedpipe.codec import Limits, dumps, loads
from fedpipe.errors import printable
from fedpipe.request import is_identifier_text
from fedpipe.views import ListView, TupleView

__all__ = [
    "ENVELOPE_KEY",
    "KNOWN_REQUESTS",
    "MESSAGE_FIELDS",
    "MESSAGE_MODULE",
    "PROTOCOL_VERSION",
    "REPLIES",
    "SUPPORTED_REQUESTS",
    "FieldSpec",
    "Message",
    "MessageError",
    "decode_message",
    "encode_message",
    "field_problem",
    "is_compatible_version",
]

PROTOCOL_VERSION: Final = "7"
MESSAGE_MODULE: Final = "fedbiomed.common.message"
ENVELOPE_KEY: Final = "__type_message__"


class _Required:
    """The default of a field that has none (a singleton; shown as ``REQUIRED``)."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()

# What each kind of value is once decoded (strict: what the node receives) and what encodes to
# it (what the node may hand the encoder); bool is never an int here, a tuple never a list.
_RECEIVED: Final[dict[str, Callable[[Any], bool]]] = {
    "str": lambda v: type(v) is str,
    "int": lambda v: type(v) is int,
    "bool": lambda v: type(v) is bool,
    "list": lambda v: type(v) is list,
    "tuple": lambda v: type(v) is tuple,
    "dict": lambda v: type(v) is dict,
    "bytes": lambda v: type(v) is bytes,
    "none": lambda v: v is None,
}
_SENT: Final[dict[str, Callable[[Any], bool]]] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list | ListView),
    "tuple": lambda v: isinstance(v, tuple | TupleView),
    "dict": lambda v: isinstance(v, Mapping),
    "bytes": lambda v: isinstance(v, bytes),
    "none": lambda v: v is None,
}


@frozen(kw_only=True)
class FieldSpec:
    """One field of a message class: its name, the kinds of value it takes, its default.

    ``kinds`` name Python types as decoded (``"str"``, ``"int"``, ``"bool"``, ``"list"``,
    ``"tuple"``, ``"dict"``, ``"bytes"``, ``"none"``); ``items`` is the kind every item of a
    list must have, when the node reads the items. ``default`` is ``REQUIRED`` for a field that
    must be present.
    """

    name: str
    kinds: tuple[str, ...]
    default: Any = REQUIRED
    items: str | None = None

    @property
    def required(self) -> bool:
        """True when the field has no default."""
        return self.default is REQUIRED

    def problem(self, value: Any, *, sending: bool = False) -> str | None:
        """Why ``value`` does not fit this field (None when it does).

        >>> FieldSpec(name="count", kinds=("int",)).problem(True)
        'must be int, not bool'
        """
        table = _SENT if sending else _RECEIVED
        if not any(table[kind](value) for kind in self.kinds):
            return f"must be {' or '.join(self.kinds)}, not {type(value).__name__}"
        if self.items is not None and isinstance(value, list | ListView):
            check = table[self.items]
            for item in value:
                if not check(item):
                    return f"must hold only {self.items} items, not {type(item).__name__}"
        return None


def _f(name: str, *kinds: str, default: Any = REQUIRED, items: str | None = None) -> FieldSpec:
    return FieldSpec(name=name, kinds=kinds, default=default, items=items)


_PV = _f("protocol_version", "str", default=PROTOCOL_VERSION)
_RID = _f("request_id", "str", "none", default=None)
_RESEARCHER = _f("researcher_id", "str")
_NODE = (_f("node_id", "str"), _f("node_name", "str"))
_SECAGG_REQUEST = (
    _PV,
    _RID,
    _RESEARCHER,
    _f("secagg_id", "str"),
    _f("element", "int"),
    _f("experiment_id", "str"),
    _f("parties", "list", items="str"),
)
_SECAGG_REPLY = (
    _PV,
    _RID,
    _RESEARCHER,
    _f("secagg_id", "str"),
    _f("success", "bool"),
    *_NODE,
    _f("msg", "str", "none", default=None),
)

MESSAGE_FIELDS: Final[Mapping[str, tuple[FieldSpec, ...]]] = MappingProxyType(
    {
        "SearchRequest": (_PV, _RID, _RESEARCHER, _f("tags", "list", items="str")),
        "SearchReply": (_PV, _RID, _RESEARCHER, _f("databases", "list"), *_NODE, _f("count", "int")),
        "ListRequest": (_PV, _RID, _RESEARCHER),
        "ListReply": (
            _PV,
            _RID,
            _RESEARCHER,
            _f("success", "bool"),
            _f("databases", "list"),
            *_NODE,
            _f("count", "int"),
        ),
        "PingRequest": (_PV, _RID, _RESEARCHER),
        "PingReply": (_PV, _RID, _RESEARCHER, *_NODE),
        "ApprovalRequest": (_PV, _RID, _RESEARCHER, _f("description", "str"), _f("training_plan", "str")),
        "ApprovalReply": (
            _PV,
            _RID,
            _RESEARCHER,
            _f("training_plan_id", "str", "none"),
            _f("message", "str"),
            *_NODE,
            _f("status", "int"),
            _f("success", "bool"),
        ),
        "TrainingPlanStatusRequest": (
            _PV,
            _RID,
            _RESEARCHER,
            _f("experiment_id", "str"),
            _f("training_plan", "str"),
        ),
        "TrainingPlanStatusReply": (
            _PV,
            _RID,
            _RESEARCHER,
            *_NODE,
            _f("experiment_id", "str"),
            _f("success", "bool"),
            _f("approval_obligation", "bool"),
            _f("status", "str"),
            _f("msg", "str"),
            _f("training_plan", "str"),
            _f("training_plan_id", "str", "none"),
        ),
        "TrainRequest": (
            _PV,
            _RID,
            _RESEARCHER,
            _f("experiment_id", "str"),
            _f("state_id", "str", "none"),
            _f("training_args", "dict"),
            _f("dataset_id", "str"),
            _f("training", "bool"),
            _f("model_args", "dict"),
            _f("params", "dict"),
            _f("training_plan", "str"),
            _f("training_plan_class", "str"),
            _f("round", "int"),
            _f("aggregator_args", "dict"),
            _f("secagg_arguments", "dict", "none", default=None),
            _f("optim_aux_var", "dict", "none", default=None),
        ),
        "TrainReply": (
            _PV,
            _RID,
            _RESEARCHER,
            _f("experiment_id", "str"),
            _f("success", "bool"),
            *_NODE,
            _f("dataset_id", "str"),
            _f("timing", "dict"),
            _f("msg", "str"),
            _f("state_id", "str", "none", default=None),
            _f("sample_size", "int", "none", default=None),
            _f("encrypted", "bool", default=False),
            _f("params", "dict", "list", "none", default=None),
            _f("optimizer_args", "dict", "none", default=None),
            _f("optim_aux_var", "dict", "none", default=None),
            _f("encryption_factor", "list", "none", default=None),
        ),
        "SecaggRequest": _SECAGG_REQUEST,
        "SecaggReply": _SECAGG_REPLY,
        "AdditiveSSSetupRequest": _SECAGG_REQUEST,
        "AdditiveSSSetupReply": (*_SECAGG_REPLY, _f("share", "int", "list")),
        "SecaggDeleteRequest": (
            _PV,
            _RID,
            _RESEARCHER,
            _f("secagg_id", "str"),
            _f("element", "int"),
            _f("experiment_id", "str", "none"),
        ),
        "SecaggDeleteReply": _SECAGG_REPLY,
        # relayed node-to-node traffic carries no request_id
        "OverlayMessage": (
            _PV,
            _RESEARCHER,
            _f("node_id", "str"),
            _f("dest_node_id", "str"),
            _f("overlay", "bytes"),
            _f("setup", "bool"),
            _f("salt", "bytes"),
            _f("nonce", "bytes"),
        ),
        "ErrorMessage": (
            _PV,
            _RID,
            _RESEARCHER,
            *_NODE,
            _f("extra_msg", "str"),
            _f("errnum", "str", "none", default=None),
        ),
        "FARequest": (
            _PV,
            _RID,
            _RESEARCHER,
            _f("experiment_id", "str"),
            _f("dataset_id", "str"),
            _f("fa_id", "str"),
            _f("stats", "list", "none", default=None),
            _f("stats_args", "dict", "none", default=None),
            _f("dataset_schema", "list", "tuple", "dict", "none", default=None),
            _f("secagg_arguments", "dict", "none", default=None),
        ),
        "PreprocRequest": (
            _PV,
            _RID,
            _RESEARCHER,
            _f("experiment_id", "str"),
            _f("dataset_id", "str"),
            _f("preproc_type", "int"),
            _f("preproc_step", "int"),
            _f("preproc_id", "str"),
            _f("preproc_args", "dict"),
            _f("state_id", "str", "none", default=None),
        ),
    }
)
"""Each 6.4.1 message class a node receives or sends -> its fields, in 6.4.1's ``to_dict`` order."""

KNOWN_REQUESTS: Final = frozenset(
    {
        "SearchRequest",
        "ListRequest",
        "PingRequest",
        "ApprovalRequest",
        "TrainingPlanStatusRequest",
        "TrainRequest",
        "SecaggRequest",
        "AdditiveSSSetupRequest",
        "SecaggDeleteRequest",
        "OverlayMessage",
        "FARequest",
        "PreprocRequest",
    }
)
"""The classes a 6.4.1 researcher may send a node."""

SUPPORTED_REQUESTS: Final = frozenset(
    {
        "SearchRequest",
        "ListRequest",
        "PingRequest",
        "ApprovalRequest",
        "TrainingPlanStatusRequest",
        "TrainRequest",
    }
)
"""The requests this node answers with their own reply; every other one gets an ``ErrorMessage``."""

REPLIES: Final = frozenset(MESSAGE_FIELDS) - KNOWN_REQUESTS | {"OverlayMessage"}
"""The classes a node may send."""


@frozen(kw_only=True)
class Message:
    """A decoded message: its class name and its fields (every field of the class, defaults filled).

    For a class outside ``MESSAGE_FIELDS`` (a well-formed envelope naming a class this node does
    not know), ``fields`` holds only ``request_id`` and ``researcher_id``, when they were
    printable strings, so the node can answer with an ``ErrorMessage``.
    """

    kind: str
    fields: Mapping[str, Any] = field(eq=False, repr=lambda f: f"<{len(f)} fields>")


@frozen(kw_only=True)
class MessageError:
    """Why bytes are not an acceptable message; the ids are those recovered, for an error reply.

    ``reason`` is one printable line that names no internals (it may be shown to the researcher).
    ``request_id`` and ``researcher_id`` are set only when the message carried them as printable
    strings; without a ``request_id`` no researcher request waits for an answer.
    """

    reason: str
    request_id: str | None = None
    researcher_id: str | None = None


# PEP 440 as packaging.version parses it (an optional "v", a release, then optional pre, post,
# dev and local parts); the epoch is refused, as no Fed-BioMed version has one
_VERSION = re.compile(
    r"v?(?P<release>[0-9]+(?:\.[0-9]+)*)"
    r"(?:[-_.]?(?:a|b|c|rc|alpha|beta|pre|preview)[-_.]?[0-9]*)?"
    r"(?:-[0-9]+|[-_.]?(?:post|rev|r)[-_.]?[0-9]*)?"
    r"(?:[-_.]?dev[-_.]?[0-9]*)?"
    r"(?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?",
    re.IGNORECASE,
)
_MAX_VERSION_TEXT = 64


def is_compatible_version(version: object, ours: str = PROTOCOL_VERSION) -> bool:
    """Tell whether a message of protocol ``version`` may be read by a node of protocol ``ours``.

    Fed-BioMed 6.4.1's rule: the same major version, and no newer minor or micro version than
    ours (pre-, post- and dev-releases of a compatible release pass).

    >>> is_compatible_version("7"), is_compatible_version("7.0.0"), is_compatible_version("7.0.post1")
    (True, True, True)
    >>> is_compatible_version("7.1"), is_compatible_version("6"), is_compatible_version(7)
    (False, False, False)
    """
    if not isinstance(version, str) or len(version) > _MAX_VERSION_TEXT:
        return False
    theirs, mine = _release(version.strip()), _release(ours)
    if theirs is None or mine is None:
        return False
    return theirs[0] == mine[0] and theirs[1:3] <= mine[1:3]


def _release(version: str) -> tuple[int, int, int] | None:
    match = _VERSION.fullmatch(version)
    if match is None:
        return None
    parts = [int(p) for p in match.group("release").split(".")] + [0, 0]
    return parts[0], parts[1], parts[2]


def field_problem(
    kind: str,
    fields: Mapping[Any, Any],
    *,
    sending: bool = False,
    table: Mapping[str, tuple[FieldSpec, ...]] | None = None,
    family: str = "a Fed-BioMed 6.4.1 message class",
) -> str | None:
    """Why ``fields`` are not exactly the fields of class ``kind`` with fitting values (None if they are).

    The key set must equal the class' fields; every value must be of a kind the field takes
    (``FieldSpec.problem``). Names are escaped for the log.

    >>> field_problem("PingRequest", {"protocol_version": "7", "request_id": None, "researcher_id": 3})
    '`PingRequest.researcher_id` must be str, not int'
    """
    specs = (MESSAGE_FIELDS if table is None else table).get(kind)
    if specs is None:
        return f"`{printable(kind)}` is not {family}"
    names = {spec.name for spec in specs}
    for key in fields:
        if not isinstance(key, str):
            return f"`{kind}` field names must be strings, not {type(key).__name__}"
        if key not in names:
            return f"`{kind}` has no field `{printable(key)}`"
    for spec in specs:
        if spec.name not in fields:
            return f"`{kind}` lacks field `{spec.name}`"
        problem = spec.problem(fields[spec.name], sending=sending)
        if problem is not None:
            return f"`{kind}.{spec.name}` {problem}"
    return None


_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _recovered(raw: Mapping[Any, Any], key: str) -> str | None:
    value = raw.get(key)
    return value if isinstance(value, str) and is_identifier_text(value) else None


def decode_message(data: bytes | bytearray | memoryview, *, max_bytes: int) -> Result[Message, MessageError]:
    """Decode one message as a 6.4.1 node would, more strictly; never raises.

    The bytes must be msgpack (``fedpipe.codec.loads`` with ``max_bytes``, extension dicts
    decoded) of a map with string keys, holding ``__type_message__`` = a map of exactly the
    strings ``class`` and ``module``, and a ``protocol_version`` compatible with ours
    (``is_compatible_version``). For a class of ``MESSAGE_FIELDS`` the other keys must be fields
    of the class, every field without a default present, and every value of a kind the field
    takes (``field_problem``); absent fields with a default take it, as 6.4.1's constructor does.
    A well-formed envelope naming another class decodes to a ``Message`` of that kind whose fields
    are only the ids (the node answers it with an ``ErrorMessage``).

    >>> decode_message(b"\\x90", max_bytes=10).failure().reason
    'the message is not a map'
    """
    if not isinstance(max_bytes, int) or max_bytes < 0:
        return Failure(MessageError(reason="the node's message size limit is invalid"))
    decoded = loads(data, Limits(max_bytes=max_bytes))
    if isinstance(decoded, Failure):
        return Failure(
            MessageError(reason=f"not a readable message: {printable(decoded.failure().reason, 200)}")
        )
    raw = decoded.unwrap()
    if type(raw) is not dict:
        return Failure(MessageError(reason="the message is not a map"))
    ids = {"request_id": _recovered(raw, "request_id"), "researcher_id": _recovered(raw, "researcher_id")}

    def refuse(reason: str) -> Result[Message, MessageError]:
        return Failure(MessageError(reason=reason, **ids))

    if any(not isinstance(key, str) for key in raw):
        return refuse("the message's field names are not all strings")
    envelope = raw.get(ENVELOPE_KEY)
    if (
        type(envelope) is not dict
        or set(envelope) != {"class", "module"}
        or not isinstance(envelope["class"], str)
        or not isinstance(envelope["module"], str)
    ):
        return refuse(f"the message has no valid `{ENVELOPE_KEY}` entry")
    kind = envelope["class"]
    if not _CLASS_NAME.fullmatch(kind):
        return refuse(f"`{printable(kind, 64)}` is not a message class name")
    if "protocol_version" not in raw:
        return refuse("the message has no `protocol_version`")
    version = raw["protocol_version"]
    if not is_compatible_version(version):
        shown = printable(version, 32) if isinstance(version, str) else type(version).__name__
        return refuse(f"protocol version `{shown}` is not compatible with this node's ({PROTOCOL_VERSION})")
    specs = MESSAGE_FIELDS.get(kind)
    if specs is None:
        known = {key: value for key, value in ids.items() if value is not None}
        return Success(Message(kind=kind, fields=MappingProxyType(known)))
    values = {key: value for key, value in raw.items() if key != ENVELOPE_KEY}
    names = {spec.name for spec in specs}
    extra = sorted(key for key in values if key not in names)
    if extra:
        return refuse(f"`{kind}` has no field `{printable(extra[0])}`")
    for spec in specs:
        if spec.required and spec.name not in values:
            return refuse(f"`{kind}` lacks field `{spec.name}`")
    filled = {spec.name: values.get(spec.name, spec.default) for spec in specs}
    problem = field_problem(kind, filled)
    if problem is not None:
        return refuse(problem)
    return Success(Message(kind=kind, fields=MappingProxyType(filled)))


def encode_message(kind: str, fields: Mapping[str, Any]) -> bytes:
    """Encode one message as Fed-BioMed 6.4.1 does: its fields in class order, then the envelope.

    ``fields`` must hold exactly the fields of class ``kind`` (``protocol_version`` may be left
    out: it is then ``"7"``), each of a kind 6.4.1 accepts once decoded: a tuple is not a list
    and a bool is not an int. Anything else raises ``ValueError`` (a bug of the caller: the
    researcher would refuse the message and keep waiting); a value the codec cannot encode raises
    ``fedpipe.codec.CodecError`` (a ``TypeError``).

    >>> data = encode_message("PingReply", {"request_id": "r", "researcher_id": "R", "node_id": "N",
    ...                                     "node_name": "n"})
    >>> data[-41:]
    b'\xb8fedbiomed.common.message\xa5class\xa9PingReply'
    """
    specs = MESSAGE_FIELDS.get(kind)
    if specs is None:
        raise ValueError(f"{kind!r} is not a Fed-BioMed 6.4.1 message class")
    complete = fields if "protocol_version" in fields else {"protocol_version": PROTOCOL_VERSION, **fields}
    problem = field_problem(kind, complete, sending=True)
    if problem is not None:
        raise ValueError(f"cannot send this {kind}: {problem}")
    ordered: dict[str, Any] = {spec.name: complete[spec.name] for spec in specs}
    ordered[ENVELOPE_KEY] = {"module": MESSAGE_MODULE, "class": kind}
    return dumps(ordered)
