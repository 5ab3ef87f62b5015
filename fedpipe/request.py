"""The train request: a typed, frozen TrainRequest and a total parser from JSON-like mappings."""

import math
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from attrs import field, frozen
from returns.result import Failure, Result, Success

from fedpipe.errors import ErrorCode, RoundError

__all__ = ["REQUEST_FIELDS", "TrainRequest", "freeze_mapping", "parse_request"]

JsonMap = Mapping[str, Any]

MAX_DEPTH = 32
MAX_ELEMENTS = 100_000
MAX_ID_LENGTH = 256
MAX_URL_LENGTH = 4096

_EMPTY: JsonMap = MappingProxyType({})


def freeze_mapping(value: Mapping[str, Any]) -> JsonMap:
    """Return a read-only deep copy of a JSON-like mapping (nested dicts become read-only too).

    >>> m = freeze_mapping({"a": {"b": [1, 2]}})
    >>> m["a"]["b"]
    [1, 2]
    >>> isinstance(m, MappingProxyType)
    True
    """
    return MappingProxyType({str(k): _copy(v) for k, v in value.items()})


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return freeze_mapping(value)
    if isinstance(value, tuple):
        return tuple(_copy(v) for v in value)
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def thaw(value: Any) -> Any:
    """Return a plain mutable deep copy of a frozen JSON-like value (for user code that mutates).

    >>> thaw(freeze_mapping({"a": {"b": 1}}))
    {'a': {'b': 1}}
    """
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(thaw(v) for v in value)
    if isinstance(value, list):
        return [thaw(v) for v in value]
    return value


@frozen(kw_only=True)
class TrainRequest:
    """A validated train request, with the reference's TrainRequest field names.

    Mappings are read-only deep copies: a step can never alter what the researcher sent.
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

    @property
    def secagg_requested(self) -> bool:
        """True when the request names both secure-aggregation contexts."""
        return self.secagg_servkey_id is not None and self.secagg_biprime_id is not None

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
        }


T = TypeVar("T")
Parser = Callable[[str, Any], Result[Any, RoundError]]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _bad(name: str, rule: str, got: Any = None) -> RoundError:
    got_type = type(got).__name__
    return RoundError(
        code=ErrorCode.BAD_REQUEST,
        step="parse_request",
        detail=f"field `{name}`: {rule} (got {got_type})",
        public=f"Invalid train request: field `{name}` {rule}.",
    )


def _identifier_text(name: str, value: Any) -> Result[Any, RoundError]:
    if not isinstance(value, str) or not value:
        return Failure(_bad(name, "must be a non-empty string", value))
    if len(value) > MAX_ID_LENGTH or _CONTROL.search(value):
        return Failure(_bad(name, f"must be at most {MAX_ID_LENGTH} printable characters", value))
    return Success(value)


def _optional_identifier_text(name: str, value: Any) -> Result[Any, RoundError]:
    return Success(None) if value is None else _identifier_text(name, value)


def _url(name: str, value: Any) -> Result[Any, RoundError]:
    if not isinstance(value, str) or not value or len(value) > MAX_URL_LENGTH:
        return Failure(_bad(name, "must be an http(s) URL", value))
    try:
        parts = urlsplit(value)
    except ValueError:
        return Failure(_bad(name, "must be an http(s) URL", value))
    if parts.scheme not in ("http", "https") or not parts.netloc or _CONTROL.search(value):
        return Failure(_bad(name, "must be an http(s) URL", value))
    return Success(value)


def _class_name(name: str, value: Any) -> Result[Any, RoundError]:
    if not isinstance(value, str) or not _IDENTIFIER.match(value) or len(value) > MAX_ID_LENGTH:
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
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        return Failure(_bad(name, "must be an object with string keys", value))
    return Success(freeze_mapping(value))


def _urls(name: str, value: Any) -> Result[Any, RoundError]:
    if value is None:
        return Success(())
    if not isinstance(value, list | tuple):
        return Failure(_bad(name, "must be a list of http(s) URLs", value))
    out: list[str] = []
    for item in value:
        checked = _url(name, item)
        if not isinstance(checked, Success):
            return checked
        out.append(item)
    return Success(tuple(out))


def _optional_float(name: str, value: Any) -> Result[Any, RoundError]:
    if value is None:
        return Success(None)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return Failure(_bad(name, "must be a finite number or null", value))
    return Success(float(value))


def _optional_int(name: str, value: Any) -> Result[Any, RoundError]:
    if value is None:
        return Success(None)
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 2**63:
        return Failure(_bad(name, "must be an integer or null", value))
    return Success(value)


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
}

REQUEST_FIELDS: tuple[str, ...] = tuple(_FIELDS)
_ENVELOPE = frozenset({"command", "protocol_version", "request_id"})


def _size_ok(value: Any) -> bool:
    """True when a JSON-like value stays within MAX_DEPTH nesting and MAX_ELEMENTS elements."""
    budget = MAX_ELEMENTS
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        budget -= 1
        if budget < 0 or depth > MAX_DEPTH:
            return False
        kind = type(item)
        if kind is str or kind is int or kind is float or kind is bool or item is None:
            continue
        if isinstance(item, Mapping):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)
    return True


def parse_request(raw: object) -> Result[TrainRequest, RoundError]:
    """Validate a JSON-like train request into a TrainRequest; never raises.

    A missing or mistyped field gives a ``bad_request`` failure that names the field. Unknown
    top-level fields are refused too, so that a misspelt optional field is not silently ignored;
    the envelope fields ``command`` (must be "train"), ``protocol_version`` and ``request_id``
    are accepted.

    >>> r = parse_request({"researcher_id": "r", "job_id": "j", "params_url": "http://x/p",
    ...                    "dataset_id": "d", "training_plan_url": "http://x/tp",
    ...                    "training_plan_class": "Plan", "training": True})
    >>> r.unwrap().round
    0
    >>> parse_request({"researcher_id": "r", "job_id": 3}).failure().public
    'Invalid train request: field `job_id` must be a non-empty string.'
    """
    if not isinstance(raw, Mapping):
        return Failure(_bad("<request>", "must be an object", raw))
    if not _size_ok(raw):
        return Failure(
            _bad(
                "<request>", f"must nest at most {MAX_DEPTH} deep and hold at most {MAX_ELEMENTS} values", raw
            )
        )
    unknown = sorted(str(k) for k in raw if k not in _FIELDS and k not in _ENVELOPE)
    if unknown:
        name = unknown[0][:64]
        return Failure(_bad(name, "is not a train request field", raw.get(name)))
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
