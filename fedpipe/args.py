"""Training arguments: the reference schema parsed into a frozen TrainingArgs, or a clear error."""

import enum
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from attrs import frozen
from returns.result import Failure, Result, Success

from fedpipe.errors import ErrorCode, RoundError, is_public_safe, printable
from fedpipe.request import MAX_ELEMENTS, JsonMap, finite_float, freeze_mapping, json_problem, thaw

__all__ = ["DpArgs", "Metric", "TrainingArgs", "parse_metric", "parse_training_args_mapping"]


class Metric(enum.StrEnum):
    """Validation metrics; names are matched case-insensitively, with short aliases."""

    ACCURACY = "ACCURACY"
    F1_SCORE = "F1_SCORE"
    PRECISION = "PRECISION"
    RECALL = "RECALL"
    MEAN_SQUARE_ERROR = "MEAN_SQUARE_ERROR"
    MEAN_ABSOLUTE_ERROR = "MEAN_ABSOLUTE_ERROR"
    EXPLAINED_VARIANCE = "EXPLAINED_VARIANCE"

    @property
    def is_classification(self) -> bool:
        """True for the label metrics (accuracy, F1, precision, recall)."""
        return self in (Metric.ACCURACY, Metric.F1_SCORE, Metric.PRECISION, Metric.RECALL)


_METRIC_ALIASES = {
    "F1": Metric.F1_SCORE,
    "MSE": Metric.MEAN_SQUARE_ERROR,
    "MAE": Metric.MEAN_ABSOLUTE_ERROR,
    "MEAN_SQUARED_ERROR": Metric.MEAN_SQUARE_ERROR,
}


def parse_metric(value: object) -> Metric | None:
    """Return the metric named by ``value`` (any case, aliases allowed), or None if unknown.

    >>> parse_metric("accuracy"), parse_metric("mse"), parse_metric("rule_of_thumb")
    (<Metric.ACCURACY: 'ACCURACY'>, <Metric.MEAN_SQUARE_ERROR: 'MEAN_SQUARE_ERROR'>, None)
    """
    if isinstance(value, Metric):
        return value
    if not isinstance(value, str):
        return None
    name = value.strip().upper().replace("-", "_").replace(" ", "_")
    if name in Metric.__members__:
        return Metric[name]
    return _METRIC_ALIASES.get(name)


@frozen(kw_only=True)
class DpArgs:
    """Differential-privacy arguments: local (DP-SGD during training) or central (noise on the update)."""

    type: str  # "local" | "central"
    sigma: float
    clip: float


@frozen(kw_only=True)
class TrainingArgs:
    """The researcher's training arguments, validated, with every default filled in."""

    optimizer_args: JsonMap = MappingProxyType({})
    loader_args: JsonMap = MappingProxyType({})
    epochs: int | None = None
    num_updates: int | None = None
    dry_run: bool = False
    batch_maxnum: int | None = None
    test_ratio: float = 0.0
    test_on_local_updates: bool = False
    test_on_global_updates: bool = False
    test_metric: Metric | None = None
    test_metric_args: JsonMap = MappingProxyType({})
    shuffle_testing_dataset: bool = False
    test_batch_size: int | None = None
    """Batch size of validation: None, the loader's; 0, the whole testing subset in one batch."""
    log_interval: int = 10
    fedprox_mu: float | None = None
    use_gpu: bool = False
    dp: DpArgs | None = None
    share_persistent_buffers: bool = True
    random_seed: int | None = None

    @property
    def batch_size(self) -> int | None:
        """The researcher's ``loader_args['batch_size']`` when it is a positive integer."""
        value = self.loader_args.get("batch_size")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-like dict of every argument (metric by name, dp as a dict)."""
        return {
            "optimizer_args": thaw(self.optimizer_args),
            "loader_args": thaw(self.loader_args),
            "epochs": self.epochs,
            "num_updates": self.num_updates,
            "dry_run": self.dry_run,
            "batch_maxnum": self.batch_maxnum,
            "test_ratio": self.test_ratio,
            "test_on_local_updates": self.test_on_local_updates,
            "test_on_global_updates": self.test_on_global_updates,
            "test_metric": None if self.test_metric is None else self.test_metric.value,
            "test_metric_args": thaw(self.test_metric_args),
            "shuffle_testing_dataset": self.shuffle_testing_dataset,
            "test_batch_size": self.test_batch_size,
            "log_interval": self.log_interval,
            "fedprox_mu": self.fedprox_mu,
            "use_gpu": self.use_gpu,
            "dp": None
            if self.dp is None
            else {"type": self.dp.type, "sigma": self.dp.sigma, "clip": self.dp.clip},
            "share_persistent_buffers": self.share_persistent_buffers,
            "random_seed": self.random_seed,
        }


class _ArgError(Exception):
    """Internal signal of a schema violation; never escapes this module.

    ``path`` names the argument (dotted inside one; empty for the whole mapping), ``top`` the
    top-level argument to name instead when the path itself cannot be shown to the researcher.
    """

    def __init__(self, path: str, rule: str, top: str | None = None, got: str = "") -> None:
        super().__init__(f"training argument `{path}` {rule}" if path else f"training arguments {rule}")
        self.path, self.rule, self.top, self.got = path, rule, top, got

    def public(self) -> str:
        text = f"Invalid training arguments: {self}."
        if is_public_safe(text):
            return text
        if self.top is None:
            return f"Invalid training arguments: training argument `{_WITHHELD}` {self.rule}."
        return f"Invalid training arguments: training argument `{self.top}` {self.rule} (at a nested key)."


_WITHHELD = "(name withheld: see the node log)"


def _fail(key: str, rule: str, top: str | None = None) -> _ArgError:
    return _ArgError(key, rule, top)


# Counts, intervals and seeds are 64-bit on the node's side (torch, numpy, msgpack).
_INT_LIMIT = 2**63


def _count(key: str, value: Any) -> int | None:
    """None, or a non-negative integer below 2**63; integral floats are accepted, bools are not."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _fail(key, "must be a non-negative integer or null")
    if isinstance(value, float) and finite_float(value) is not None and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise _fail(key, "must be a non-negative integer or null")
    if value >= _INT_LIMIT:
        raise _fail(key, "must be below 2**63")
    return value


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, "must be a boolean")
    return value


def _number(key: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    number = finite_float(value)
    if number is None:
        raise _fail(key, "must be a finite number")
    if (low is not None and number < low) or (high is not None and number > high):
        raise _fail(key, f"must lie in [{low}, {high}]".replace("None", "inf"))
    return number


def _dict(key: str, value: Any) -> JsonMap:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise _fail(key, "must be an object with string keys")
    # string keys and plain JSON inside were checked by json_problem before the schema runs
    return freeze_mapping(value)


def _metric(key: str, value: Any) -> Metric | None:
    if value is None:
        return None
    metric = parse_metric(value)
    if metric is None:
        raise _fail(key, f"must name a supported metric ({', '.join(m.value for m in Metric)})")
    return metric


def _log_interval(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _INT_LIMIT:
        raise _fail(key, "must be a non-negative integer (0 logs only the first and last batch)")
    return value


def _optional_mu(key: str, value: Any) -> float | None:
    return None if value is None else _number(key, value, 0.0, None)


def _seed(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _INT_LIMIT:
        raise _fail(key, "must be a non-negative integer below 2**63 or null")
    return value


def _dp(key: str, value: Any) -> DpArgs | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _fail(key, "must be an object {type, sigma, clip} or null")
    unknown = set(value) - {"type", "sigma", "clip"}
    if unknown:
        raise _fail(f"{key}.{printable(sorted(unknown)[0])}", "is not a DP argument", key)
    kind = value.get("type", "central")
    if kind not in ("central", "local"):
        raise _fail(f"{key}.type", 'must be "central" or "local"')
    for part in ("sigma", "clip"):
        if part not in value:
            raise _fail(f"{key}.{part}", "is required")
    sigma = _number(f"{key}.sigma", value["sigma"], 0.0, None)
    clip = _number(f"{key}.clip", value["clip"], 0.0, None)
    if clip <= 0:
        raise _fail(f"{key}.clip", "must be positive")
    return DpArgs(type=kind, sigma=sigma, clip=clip)


_SCHEMA: dict[str, Callable[[str, Any], Any]] = {
    "optimizer_args": _dict,
    "loader_args": _dict,
    "epochs": _count,
    "num_updates": _count,
    "dry_run": _flag,
    "batch_maxnum": _count,
    "test_ratio": lambda k, v: _number(k, v, 0.0, 1.0),
    "test_on_local_updates": _flag,
    "test_on_global_updates": _flag,
    "test_metric": _metric,
    "test_metric_args": _dict,
    "shuffle_testing_dataset": _flag,
    "test_batch_size": _count,
    "log_interval": _log_interval,
    "fedprox_mu": _optional_mu,
    "use_gpu": _flag,
    "dp": _dp,
    "share_persistent_buffers": _flag,
    "random_seed": _seed,
}
_ALIASES = {"dp_args": "dp"}


def parse_training_args_mapping(
    raw: Mapping[str, Any], step: str = "parse_training_args"
) -> Result[TrainingArgs, RoundError]:
    """Validate the researcher's training_args; the error names the field and the rule.

    Total: any value gives TrainingArgs or a ``bad_training_args`` failure naming the argument,
    by a dotted path inside one (``dp.sigma``, ``loader_args.batch_size``). Every value must be
    plain JSON first (``fedpipe.request.json_problem``: no NaN, infinities, lone surrogates,
    bytes, non-string keys; bounded depth and size), then pass its own rule. Integers are
    accepted where a float is natural (``test_ratio`` 0 or 1, ``fedprox_mu`` 0), as long as
    they have a finite float value; ``dp_args`` is accepted as the reference's name for ``dp``.
    Echoed names are escaped (``fedpipe.errors.printable``).

    >>> parse_training_args_mapping({"epochs": 2, "test_ratio": 1}).unwrap().test_ratio
    1.0
    >>> parse_training_args_mapping({"epochs": "x"}).failure().public
    'Invalid training arguments: training argument `epochs` must be a non-negative integer or null.'
    >>> parse_training_args_mapping({"dp": {"type": "local", "sigma": 10**400, "clip": 1}}).failure().public
    'Invalid training arguments: training argument `dp.sigma` must be a finite number.'
    """
    values: dict[str, Any] = {}
    try:
        if not isinstance(raw, Mapping):
            raise _ArgError("", "must be an object", got=type(raw).__name__)
        budget = MAX_ELEMENTS - 1  # the mapping itself
        for key, value in raw.items():
            if not isinstance(key, str):
                raise _ArgError("", "must be named by strings", got=type(key).__name__)
            name = _ALIASES.get(key, key)
            if name not in _SCHEMA:
                raise _fail(printable(key), "is not a known training argument")
            if name in values:
                raise _fail(name, "is given twice (as `dp` and `dp_args`)")
            problem, budget = json_problem(value, name, depth=1, budget=budget)
            if problem is not None:
                raise _ArgError(problem.path, problem.rule, name, problem.got)
            values[name] = _SCHEMA[name](name, value)
        if (
            values.get("num_updates") is None
            and values.get("epochs") is None
            and not values.get("dry_run", False)
        ):
            values.setdefault("epochs", 1)
    except _ArgError as err:
        return Failure(
            RoundError(
                code=ErrorCode.BAD_TRAINING_ARGS,
                step=step,
                detail=f"{err} (got {err.got})" if err.got else str(err),
                public=err.public(),
            )
        )
    return Success(TrainingArgs(**values))
