"""The train request: a typed, frozen TrainRequest and a total parser from JSON-like mappings."""

import math
import re
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from attrs import field, frozen
from returns.result import Failure, Result, Success

from fedpipe.errors import ErrorCode, RoundError, is_printable, is_public_safe, printable
from fedpipe.views import ListView, TupleView

__all__ = [
    "REQUEST_FIELDS",
    "SECAGG_SCHEMES",
    "JsonProblem",
    "TrainRequest",
    "finite_float",
    "freeze_mapping",
    "is_identifier_text",
    "json_problem",
    "parse_request",
]

JsonMap = Mapping[str, Any]

MAX_DEPTH = 32
MAX_ELEMENTS = 100_000
MAX_ID_LENGTH = 256
MAX_URL_LENGTH = 4096
MAX_PATH_LENGTH = 200
"""How much of a dotted path an error message echoes."""

_EMPTY: JsonMap = MappingProxyType({})
# what UTF-8 (and so JSON on the wire, msgpack, a log file) cannot encode
_SURROGATE = re.compile("[\ud800-\udfff]")
_LEAVES = frozenset({str, int, float, bool, type(None)})


def _children(value: Any) -> Iterator[Any] | None:
    """The items of a list/tuple or the values of a mapping; None for a leaf."""
    kind = type(value)
    if kind in _LEAVES:  # the common case, without the slower abstract-class check
        return None
    items: Iterator[Any] | None = None
    if kind is dict or isinstance(value, Mapping):
        items = iter(value.values())
    elif isinstance(value, list | tuple | ListView | TupleView):
        items = iter(value)
    return items


# trees at most this deep (nearly every request) are copied by plain recursion, which is faster
_RECURSIVE_DEPTH = 16


class _TooDeep(Exception):
    """The tree is deeper than _RECURSIVE_DEPTH: copy it with the explicit stack instead."""


def _recursive(value: Any, freeze: bool, depth: int) -> Any:
    """Deep copy by recursion (frozen mappings, or plain dicts); _TooDeep past _RECURSIVE_DEPTH."""
    kind = type(value)
    if kind in _LEAVES:
        return value
    if depth >= _RECURSIVE_DEPTH:
        raise _TooDeep
    depth += 1
    if kind is dict or isinstance(value, Mapping):
        if freeze:
            return MappingProxyType({str(k): _recursive(v, True, depth) for k, v in value.items()})
        return {k: _recursive(v, False, depth) for k, v in value.items()}
    if isinstance(value, list | tuple | ListView | TupleView):
        items = [_recursive(v, freeze, depth) for v in value]
        return tuple(items) if isinstance(value, tuple | TupleView) else items
    return value


def _rebuild(root: Any, make_mapping: Callable[[Any, list[Any]], Any]) -> Any:
    """Deep-copy a tree of mappings, lists and tuples (leaves are shared), whatever its depth.

    ``make_mapping(source, values)`` builds the copy of a mapping from its copied values, in the
    source's order. The explicit stack keeps any depth within bounds of memory, not of Python's
    recursion limit (``freeze_mapping`` and ``thaw`` recurse for trees up to ``_RECURSIVE_DEPTH``
    deep, which is faster, and come here for deeper ones).
    """
    top = _children(root)
    if top is None:
        return root
    # frames: (source container, its children, copied children so far)
    stack: list[tuple[Any, Iterator[Any], list[Any]]] = [(root, top, [])]
    while True:
        source, items, done = stack[-1]
        for item in items:
            inner = _children(item)
            if inner is not None:
                stack.append((item, inner, []))
                break
            done.append(item)
        else:
            stack.pop()
            if isinstance(source, Mapping):
                copy = make_mapping(source, done)
            else:
                copy = tuple(done) if isinstance(source, tuple | TupleView) else done
            if not stack:
                return copy
            stack[-1][2].append(copy)


def freeze_mapping(value: Mapping[str, Any]) -> JsonMap:
    """Return a read-only deep copy of a JSON-like mapping (nested dicts become read-only too).

    Keys become ``str``; lists stay lists and tuples tuples (copied); other leaves are shared.

    >>> m = freeze_mapping({"a": {"b": [1, 2]}})
    >>> m["a"]["b"]
    [1, 2]
    >>> isinstance(m, MappingProxyType), isinstance(m["a"], MappingProxyType)
    (True, True)
    """
    try:
        shallow: JsonMap = _recursive(value, True, 0)
        return shallow
    except _TooDeep:
        pass
    frozen_copy: JsonMap = _rebuild(
        value, lambda source, values: MappingProxyType(dict(zip(map(str, source), values, strict=True)))
    )
    return frozen_copy


def thaw(value: Any) -> Any:
    """Return a plain mutable deep copy of a frozen JSON-like value (for user code that mutates).

    >>> thaw(freeze_mapping({"a": {"b": 1}}))
    {'a': {'b': 1}}
    """
    try:
        return _recursive(value, False, 0)
    except _TooDeep:
        return _rebuild(value, lambda source, values: dict(zip(source, values, strict=True)))


def finite_float(value: object) -> float | None:
    """``value`` as a finite float when it is a (non-bool) int or float that has one, else None.

    Total for every Python int: one too large for a float gives None, never ``OverflowError``.

    >>> finite_float(1), finite_float(0.5), finite_float(10**400), finite_float(float("nan"))
    (1.0, 0.5, None, None)
    >>> finite_float(True), finite_float("1")
    (None, None)
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def is_identifier_text(value: object) -> bool:
    r"""Tell whether ``value`` may be an id of a request: a non-empty printable string, short enough.

    Printable as ``fedpipe.errors.is_printable`` says: no control characters, line separators or
    lone surrogates, so the id can be logged on one line and encoded to UTF-8, JSON and msgpack.

    >>> is_identifier_text("job-1"), is_identifier_text(""), is_identifier_text("a\nb")
    (True, False, False)
    """
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and is_printable(value)


@frozen(kw_only=True)
class JsonProblem:
    """Why a value is not JSON-like, and where: ``path`` is dotted (``dp.sigma``, ``layers[2]``)."""

    path: str
    rule: str
    got: str = ""  # the offending type, for the node log


# A path is built only on failure: a trail is the root path, or (parent trail, key or index).
_Trail = tuple[Any, str | int] | str
_TEXT_RULE = "must be valid Unicode text (no lone surrogates)"
_NUMBER_RULE = "must be a finite number"


def _path(trail: _Trail) -> str:
    parts: list[str] = []
    while not isinstance(trail, str):
        trail, key = trail
        if isinstance(key, int):
            parts.append(f"[{key}]")
        else:
            parts.append("." + (printable(key, 32) if key else '""'))
    parts.append(trail)
    path = "".join(reversed(parts))
    return path if len(path) <= MAX_PATH_LENGTH else path[: MAX_PATH_LENGTH - 3] + "..."


_INT_LIMIT = 2**63  # ints inside this range are plain JSON without a float conversion


def _leaf_rule(item: object) -> str | None:
    """Why a non-container is not plain JSON (None when it is)."""
    if item is None or isinstance(item, bool):
        return None
    if isinstance(item, str):
        return _TEXT_RULE if not item.isascii() and _SURROGATE.search(item) else None
    if type(item) is float:
        return None if math.isfinite(item) else _NUMBER_RULE
    if isinstance(item, int | float):
        # an int beyond a double's range is not interoperable JSON, and overflows any consumer
        # that takes the number as a float
        return None if finite_float(item) is not None else _NUMBER_RULE
    return "must be a JSON value"


def json_problem(
    value: object, path: str, *, depth: int = 0, budget: int = MAX_ELEMENTS
) -> tuple[JsonProblem | None, int]:
    r"""Find the first value under ``value`` that is not plain JSON; return it and the budget left.

    Plain JSON here: None, bools, ints that a double can hold (below about 1.8e308), finite
    floats, strings without lone surrogates, lists or tuples of those, and mappings with such
    string keys; ``value`` sits at ``depth`` and nothing may nest deeper than ``MAX_DEPTH``; each
    value spends one of ``budget`` (pass what a previous call left to bound a whole request).
    Iterative, in document order, and total for any input that is not itself hostile code (a
    mapping whose methods raise).

    >>> json_problem({"dp": {"sigma": float("nan")}}, "training_args")[0].path
    'training_args.dp.sigma'
    >>> json_problem([1, "\ud800"], "model_args")[0].rule
    'must be valid Unicode text (no lone surrogates)'
    >>> json_problem({"a": [1, None, 2.5]}, "x")
    (None, 99995)
    """
    stack: list[tuple[Any, int, _Trail]] = [(value, depth, path)]
    while stack:
        item, level, trail = stack.pop()
        budget -= 1
        if budget < 0:
            return JsonProblem(path=path, rule=f"must hold at most {MAX_ELEMENTS} values in all"), budget
        if level > MAX_DEPTH:
            return JsonProblem(path=_path(trail), rule=f"must nest at most {MAX_DEPTH} deep"), budget
        kind = type(item)
        # the common plain leaves first, inline: this loop runs for every value of every request
        if kind is str:
            if item.isascii() or not _SURROGATE.search(item):
                continue
        elif item is None or kind is bool or (kind is int and -_INT_LIMIT < item < _INT_LIMIT):
            continue
        if kind in _LEAVES:
            rule = _leaf_rule(item)
            if rule is not None:
                return JsonProblem(path=_path(trail), rule=rule, got=kind.__name__), budget
        elif kind is dict or isinstance(item, Mapping):
            entries = list(item.items())
            inner = level + 1
            for key, _ in entries:
                if type(key) is not str and not isinstance(key, str):
                    rule = "must be an object with string keys"
                    return JsonProblem(path=_path(trail), rule=rule, got=type(key).__name__), budget
                if not key.isascii() and _SURROGATE.search(key):
                    where = _path((trail, key))
                    return JsonProblem(path=where, rule="must be named in valid Unicode text"), budget
            entries.reverse()
            stack += [(v, inner, (trail, k)) for k, v in entries]
        elif isinstance(item, list | tuple):
            stack.extend((item[i], level + 1, (trail, i)) for i in range(len(item) - 1, -1, -1))
        else:
            rule = _leaf_rule(item)
            if rule is not None:
                return JsonProblem(path=_path(trail), rule=rule, got=kind.__name__), budget
    return None, budget


SECAGG_SCHEMES: tuple[str, ...] = ("joye-libert", "lom")
"""The values of ``TrainRequest.secagg_scheme`` (None stands for Joye-Libert too, as before it)."""
MAX_SECAGG_PARTIES = 1024


@frozen(kw_only=True)
class TrainRequest:
    """A validated train request, with the reference's TrainRequest field names.

    Mappings are read-only deep copies: a step can never alter what the researcher sent.

    ``secagg_scheme``, ``secagg_dh_id`` and ``secagg_parties`` are fedpipe's own, beyond the
    reference: in a fedpipe federation the researcher must tell each node which scheme a secure
    round uses and, for LOM, which context the nodes agree on among themselves and who its
    parties are (with Joye-Libert the node's key share records its parties; LOM has no dealt key
    to record them). All three default to None, so every request valid before them still is and
    means what it meant: ``secagg_servkey_id`` with ``secagg_biprime_id`` is a Joye-Libert round.
    ``check_secagg`` enforces how they combine.
    """

    researcher_id: str
    job_id: str
    params_url: str
    dataset_id: str
    training_plan_url: str
    training_plan_class: str
    training: bool = True
    state_id: str | None = None
    training_args: JsonMap = field(default=_EMPTY)
    model_args: JsonMap = field(default=_EMPTY)
    aggregator_args: JsonMap = field(default=_EMPTY)
    aux_var_urls: tuple[str, ...] = ()
    round: int = 0
    secagg_servkey_id: str | None = None
    secagg_biprime_id: str | None = None
    secagg_random: float | None = None
    secagg_clipping_range: int | None = None
    secagg_scheme: str | None = None
    secagg_dh_id: str | None = None
    secagg_parties: tuple[str, ...] | None = None

    @property
    def secagg_requested(self) -> bool:
        """True when the request names both Joye-Libert secure-aggregation contexts."""
        return self.secagg_servkey_id is not None and self.secagg_biprime_id is not None

    @property
    def lom_requested(self) -> bool:
        """True when the request asks for a LOM round of fedpipe's own federation."""
        return self.secagg_scheme == "lom"

    def to_dict(self) -> dict[str, Any]:
        """The request as a JSON-like dict with the reference field names (``command`` included)."""
        return {
            "researcher_id": self.researcher_id,
            "job_id": self.job_id,
            "state_id": self.state_id,
            "params_url": self.params_url,
            "training_args": thaw(self.training_args),
            "dataset_id": self.dataset_id,
            "training": self.training,
            "model_args": thaw(self.model_args),
            "training_plan_url": self.training_plan_url,
            "training_plan_class": self.training_plan_class,
            "secagg_servkey_id": self.secagg_servkey_id,
            "secagg_biprime_id": self.secagg_biprime_id,
            "secagg_random": self.secagg_random,
            "secagg_clipping_range": self.secagg_clipping_range,
            "round": self.round,
            "aggregator_args": thaw(self.aggregator_args),
            "aux_var_urls": list(self.aux_var_urls) or None,
            "command": "train",
            # fedpipe's own fields only when set: a request without them reads as before
            **({} if self.secagg_scheme is None else {"secagg_scheme": self.secagg_scheme}),
            **({} if self.secagg_dh_id is None else {"secagg_dh_id": self.secagg_dh_id}),
            **({} if self.secagg_parties is None else {"secagg_parties": list(self.secagg_parties)}),
        }


T = TypeVar("T")
Parser = Callable[[str, Any], Result[Any, RoundError]]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _bad(
    name: str, rule: str, got: Any = None, *, field_name: str | None = None, got_type: str = ""
) -> RoundError:
    """A bad_request error naming ``name`` (a dotted path); ``field_name`` is its top-level field.

    When echoing the path would trip the public leak check (a key that looks like a path), the
    researcher is told the top-level field instead; the node log keeps the full path.
    """
    got_type = got_type or type(got).__name__
    public = f"Invalid train request: field `{name}` {rule}."
    if field_name is not None and field_name != name and not is_public_safe(public):
        public = f"Invalid train request: field `{field_name}` {rule} (at a nested key)."
    return RoundError(
        code=ErrorCode.BAD_REQUEST,
        step="parse_request",
        detail=f"field `{name}`: {rule} (got {got_type})",
        public=public,
    )


def _identifier_text(name: str, value: Any) -> Result[Any, RoundError]:
    if not isinstance(value, str) or not value:
        return Failure(_bad(name, "must be a non-empty string", value))
    if not is_identifier_text(value):
        return Failure(_bad(name, f"must be at most {MAX_ID_LENGTH} printable characters", value))
    return Success(value)


def _optional_identifier_text(name: str, value: Any) -> Result[Any, RoundError]:
    return Success(None) if value is None else _identifier_text(name, value)


def _url(name: str, value: Any) -> Result[Any, RoundError]:
    if not isinstance(value, str) or not value or len(value) > MAX_URL_LENGTH or not is_printable(value):
        return Failure(_bad(name, "must be an http(s) URL", value))
    try:
        parts = urlsplit(value)
    except ValueError:
        return Failure(_bad(name, "must be an http(s) URL", value))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return Failure(_bad(name, "must be an http(s) URL", value))
    return Success(value)


def _class_name(name: str, value: Any) -> Result[Any, RoundError]:
    if not isinstance(value, str) or len(value) > MAX_ID_LENGTH or not _IDENTIFIER.fullmatch(value):
        return Failure(_bad(name, "must be a Python class name", value))
    return Success(value)


def _boolean(name: str, value: Any) -> Result[Any, RoundError]:
    return Success(value) if isinstance(value, bool) else Failure(_bad(name, "must be a boolean", value))


def _round_number(name: str, value: Any) -> Result[Any, RoundError]:
    if value is None:
        return Success(0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 2**63:
        return Failure(_bad(name, "must be a non-negative integer", value))
    return Success(value)


def _mapping(name: str, value: Any) -> Result[Any, RoundError]:
    if value is None:
        return Success(_EMPTY)
    if not isinstance(value, Mapping):
        return Failure(_bad(name, "must be an object with string keys", value))
    # string keys and plain JSON inside were checked by json_problem before any parser runs
    return Success(freeze_mapping(value))


def _urls(name: str, value: Any) -> Result[Any, RoundError]:
    if value is None:
        return Success(())
    if not isinstance(value, list | tuple):
        return Failure(_bad(name, "must be a list of http(s) URLs", value))
    out: list[str] = []
    for i, item in enumerate(value):
        checked = _url(f"{name}[{i}]", item)
        if not isinstance(checked, Success):
            return checked
        out.append(item)
    return Success(tuple(out))


def _optional_float(name: str, value: Any) -> Result[Any, RoundError]:
    if value is None:
        return Success(None)
    number = finite_float(value)
    if number is None:
        return Failure(_bad(name, "must be a finite number or null", value))
    return Success(number)


def _optional_int(name: str, value: Any) -> Result[Any, RoundError]:
    if value is None:
        return Success(None)
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 2**63:
        return Failure(_bad(name, "must be an integer or null", value))
    return Success(value)


def _scheme(name: str, value: Any) -> Result[Any, RoundError]:
    if value is None or value in SECAGG_SCHEMES:
        return Success(value)
    return Failure(_bad(name, 'must be "joye-libert", "lom" or null', value))


def _parties(name: str, value: Any) -> Result[Any, RoundError]:
    if value is None:
        return Success(None)
    rule = f"must be a list of 2 to {MAX_SECAGG_PARTIES} distinct node ids"
    if not isinstance(value, list | tuple) or not 2 <= len(value) <= MAX_SECAGG_PARTIES:
        return Failure(_bad(name, rule, value))
    if not all(is_identifier_text(item) for item in value) or len(set(value)) != len(value):
        return Failure(_bad(name, rule, value))
    return Success(tuple(value))


# name -> (parser, required); optional fields take the parser's value for None.
_FIELDS: dict[str, tuple[Parser, bool]] = {
    "researcher_id": (_identifier_text, True),
    "job_id": (_identifier_text, True),
    "params_url": (_url, True),
    "dataset_id": (_identifier_text, True),
    "training_plan_url": (_url, True),
    "training_plan_class": (_class_name, True),
    "training": (_boolean, True),
    "state_id": (_optional_identifier_text, False),
    "training_args": (_mapping, False),
    "model_args": (_mapping, False),
    "aggregator_args": (_mapping, False),
    "aux_var_urls": (_urls, False),
    "round": (_round_number, False),
    "secagg_servkey_id": (_optional_identifier_text, False),
    "secagg_biprime_id": (_optional_identifier_text, False),
    "secagg_random": (_optional_float, False),
    "secagg_clipping_range": (_optional_int, False),
    "secagg_scheme": (_scheme, False),
    "secagg_dh_id": (_optional_identifier_text, False),
    "secagg_parties": (_parties, False),
}

REQUEST_FIELDS: tuple[str, ...] = tuple(_FIELDS)
_ENVELOPE = ("command", "protocol_version", "request_id")


def _unknown_field(name: str) -> RoundError:
    shown = printable(name)
    public = f"Invalid train request: field `{shown}` is not a train request field."
    if not is_public_safe(public):
        public = (
            "Invalid train request: field `(name withheld: see the node log)` is not a train request field."
        )
    return RoundError(
        code=ErrorCode.BAD_REQUEST,
        step="parse_request",
        detail=f"field `{shown}`: is not a train request field",
        public=public,
    )


def parse_request(raw: object) -> Result[TrainRequest, RoundError]:
    """Validate a JSON-like train request into a TrainRequest; never raises.

    Total: any value (in-process values that JSON cannot hold included) gives either a
    TrainRequest or a ``bad_request`` failure whose text names the field, by a dotted path for a
    value nested inside one (``training_args.dp.sigma``). Every field must hold plain JSON (see
    ``json_problem``: no NaN or infinities, no lone surrogates, no bytes or sets, string keys,
    bounded depth and size), then pass its own rule. Unknown top-level fields are refused too, so
    that a misspelt optional field is not silently ignored; the envelope fields ``command``
    (must be "train"), ``protocol_version`` and ``request_id`` are accepted. Echoed names are
    escaped (``fedpipe.errors.printable``).

    >>> r = parse_request({"researcher_id": "r", "job_id": "j", "params_url": "http://x/p",
    ...                    "dataset_id": "d", "training_plan_url": "http://x/tp",
    ...                    "training_plan_class": "Plan", "training": True})
    >>> r.unwrap().round
    0
    >>> parse_request({"researcher_id": "r", "job_id": 3}).failure().public
    'Invalid train request: field `job_id` must be a non-empty string.'
    >>> parse_request({"researcher_id": "r", "job_id": "j", "training_args": {"dp": {"sigma": float("inf")}}}
    ...               ).failure().public
    'Invalid train request: field `training_args.dp.sigma` must be a finite number.'
    """
    if not isinstance(raw, Mapping):
        return Failure(_bad("<request>", "must be an object", raw))
    names = list(raw)
    odd = [k for k in names if not isinstance(k, str)]
    if odd:
        return Failure(_bad("<request>", "must be an object with string keys", odd[0]))
    unknown = sorted(k for k in names if k not in _FIELDS and k not in _ENVELOPE)
    if unknown:
        return Failure(_unknown_field(unknown[0]))
    budget = MAX_ELEMENTS - 1  # the request object itself
    for name in (*_FIELDS, *_ENVELOPE):
        if name in raw:
            problem, budget = json_problem(raw[name], name, depth=1, budget=budget)
            if problem is not None:
                failure = _bad(problem.path, problem.rule, raw[name], field_name=name, got_type=problem.got)
                return Failure(failure)
    command = raw.get("command", "train")
    if command != "train":
        return Failure(_bad("command", 'must be "train"', command))
    values: dict[str, Any] = {}
    # Check in a fixed order so that the error names the first bad field deterministically.
    for name, (parser, required) in _FIELDS.items():
        if name not in raw and required:
            return Failure(_bad(name, "is required", None))
        checked = parser(name, raw.get(name))
        if not isinstance(checked, Success):
            return checked
        values[name] = checked.unwrap()
    return Success(TrainRequest(**values))
