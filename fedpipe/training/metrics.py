"""Validation metrics in plain numpy (no scikit-learn at run time), with the reference's defaults.

Classification (ACCURACY, F1_SCORE, PRECISION, RECALL) first turns scores into labels: 1-D
non-integral values are thresholded at 0.5 (``>= 0.5`` is class 1), 2-D values (probabilities or
one-hot) are arg-maxed. With more than two distinct true labels the default ``average`` is
``"weighted"``; otherwise it is ``"binary"`` with ``pos_label`` the smallest true label (the
reference's default). Regression (MEAN_SQUARE_ERROR, MEAN_ABSOLUTE_ERROR, EXPLAINED_VARIANCE)
defaults to ``multioutput="raw_values"`` for 2-D targets. Undefined ratios (0/0) give
``zero_division`` (default 0.0).
"""

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from fedpipe.args import Metric
from fedpipe.training.errors import MetricError

__all__ = ["MetricValue", "evaluate", "metric_values"]

MetricValue = float | list[float]
"""One metric result: a number, or one number per class or output."""

_Array = npt.NDArray[Any]
_AVERAGES = ("binary", "micro", "macro", "weighted", None)
_CLASSIFICATION_ARGS = frozenset({"average", "pos_label", "zero_division"})
_REGRESSION_ARGS = frozenset({"multioutput"})


def _is_text(arr: _Array) -> bool:
    return arr.dtype.kind in "USO"


def _shape(values: Any, what: str) -> _Array:
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    # squeeze every axis but the sample axis, so that one sample stays one row
    extra = tuple(i for i in range(1, arr.ndim) if arr.shape[i] == 1)
    if extra:
        arr = np.squeeze(arr, axis=extra)
    if arr.ndim > 2:
        raise MetricError(f"{what} must be 1-D or 2-D, got {arr.ndim} dimensions")
    if arr.dtype.kind == "O" and not all(isinstance(v, str) for v in arr.ravel()):
        raise MetricError(f"{what} mixes text and numbers")
    if not _is_text(arr) and arr.dtype.kind not in "biuf":
        raise MetricError(f"{what} must hold numbers or text labels")
    return arr


def _prepare(y_true: Any, y_pred: Any) -> tuple[_Array, _Array]:
    true, pred = _shape(y_true, "true values"), _shape(y_pred, "predictions")
    if len(true) != len(pred):
        raise MetricError(f"{len(true)} true values but {len(pred)} predictions")
    if len(true) == 0:
        raise MetricError("no samples to score")
    if _is_text(true) != _is_text(pred):
        raise MetricError("true values and predictions must both be text labels or both be numbers")
    return true, pred


def _threshold(arr: _Array) -> _Array:
    if arr.dtype.kind == "f":
        if np.all(np.mod(arr, 1) == 0):
            return arr.astype(np.int64)
        return (arr >= 0.5).astype(np.int64)
    return arr


def _labels(true: _Array, pred: _Array) -> tuple[_Array, _Array]:
    """Turn scores, probabilities and one-hot rows into label vectors (the reference's rules)."""
    if true.ndim == 2 and pred.ndim == 2 and true.shape[1] != pred.shape[1]:
        raise MetricError(f"true values have {true.shape[1]} columns but predictions {pred.shape[1]}")
    if (true.ndim == 2 or pred.ndim == 2) and (_is_text(true) or _is_text(pred)):
        raise MetricError("2-D text labels are not supported")
    true = np.argmax(true, axis=1) if true.ndim == 2 else _threshold(true)
    pred = np.argmax(pred, axis=1) if pred.ndim == 2 else _threshold(pred)
    return true, pred


def _ratio(num: float, den: float, zero_division: float) -> float:
    return float(num / den) if den else zero_division


def _per_class(true: _Array, pred: _Array, label: Any) -> tuple[int, int, int]:
    hit_pred, hit_true = pred == label, true == label
    tp = int(np.sum(hit_pred & hit_true))
    return tp, int(np.sum(hit_pred)) - tp, int(np.sum(hit_true)) - tp


def _score(kind: Metric, tp: int, fp: int, fn: int, zero_division: float) -> float:
    if kind is Metric.PRECISION:
        return _ratio(tp, tp + fp, zero_division)
    if kind is Metric.RECALL:
        return _ratio(tp, tp + fn, zero_division)
    return _ratio(2 * tp, 2 * tp + fp + fn, zero_division)


def _classification(kind: Metric, true: _Array, pred: _Array, args: Mapping[str, Any]) -> MetricValue:
    true, pred = _labels(true, pred)
    if kind is Metric.ACCURACY:
        return float(np.mean(true == pred))
    zero_division = float(args.get("zero_division", 0.0))
    true_labels = np.unique(true)
    average = args.get("average", "weighted" if len(true_labels) > 2 else "binary")
    if average not in _AVERAGES:
        raise MetricError(f"average must be one of {', '.join(map(repr, _AVERAGES))}, got {average!r}")
    if average == "binary":
        pos_label = args.get("pos_label", true_labels[0])
        return _score(kind, *_per_class(true, pred, pos_label), zero_division)
    labels = np.unique(np.concatenate([true, pred]))
    counts = [_per_class(true, pred, label) for label in labels]
    if average == "micro":
        tp, fp, fn = (sum(c[i] for c in counts) for i in range(3))
        return _score(kind, tp, fp, fn, zero_division)
    scores = [_score(kind, *c, zero_division) for c in counts]
    if average is None:
        return scores
    if average == "macro":
        return float(np.mean(scores))
    support = np.array([tp + fn for tp, _, fn in counts], dtype=np.float64)
    return _ratio(float(np.dot(scores, support)), float(support.sum()), zero_division)


def _explained_variance(true: _Array, pred: _Array) -> _Array:
    num = np.var(true - pred, axis=0)
    den = np.var(true, axis=0)
    safe = np.where(den == 0, 1.0, den)
    return np.where(den == 0, np.where(num == 0, 1.0, 0.0), 1.0 - num / safe)


_REGRESSION: dict[Metric, Callable[[_Array, _Array], _Array]] = {
    Metric.MEAN_SQUARE_ERROR: lambda t, p: np.mean((t - p) ** 2, axis=0),
    Metric.MEAN_ABSOLUTE_ERROR: lambda t, p: np.mean(np.abs(t - p), axis=0),
    Metric.EXPLAINED_VARIANCE: _explained_variance,
}


def _regression(kind: Metric, true: _Array, pred: _Array, args: Mapping[str, Any]) -> MetricValue:
    if _is_text(true):
        raise MetricError(f"{kind.value} needs numbers, not text labels")
    if true.shape != pred.shape:
        raise MetricError(f"true values have shape {true.shape} but predictions {pred.shape}")
    multioutput = args.get("multioutput", "raw_values" if true.ndim == 2 else "uniform_average")
    if multioutput not in ("raw_values", "uniform_average"):
        raise MetricError(f"multioutput must be 'raw_values' or 'uniform_average', got {multioutput!r}")
    per_output = _REGRESSION[kind](true.astype(np.float64), pred.astype(np.float64))
    if multioutput == "raw_values" and true.ndim == 2:
        return [float(v) for v in np.atleast_1d(per_output)]
    return float(np.mean(per_output))


def evaluate(metric: Metric, y_true: Any, y_pred: Any, **metric_args: Any) -> MetricValue:
    """Score predictions against true values; raise MetricError for inputs the metric cannot take.

    ``metric_args`` are ``average``, ``pos_label`` and ``zero_division`` for the label metrics
    and ``multioutput`` for the regression metrics; any other name is an error.

    >>> evaluate(Metric.ACCURACY, [0, 1, 1, 0], [0.2, 0.7, 0.4, 0.1])
    0.75
    >>> evaluate(Metric.RECALL, [0, 0, 1, 1], [0, 1, 1, 1])  # pos_label: the smallest true label
    0.5
    >>> evaluate(Metric.F1_SCORE, [0, 1, 2, 2], [[.9, .1, 0], [.2, .7, .1], [0, .1, .9], [.6, .2, .2]])
    0.75
    >>> evaluate(Metric.MEAN_SQUARE_ERROR, [[1, 2], [3, 4]], [[1, 2], [3, 6]])
    [0.0, 2.0]
    """
    allowed = _CLASSIFICATION_ARGS if metric.is_classification else _REGRESSION_ARGS
    unknown = sorted(set(metric_args) - allowed)
    if unknown:
        raise MetricError(f"{metric.value} takes no argument {unknown[0]!r}")
    true, pred = _prepare(y_true, y_pred)
    if metric.is_classification:
        return _classification(metric, true, pred, metric_args)
    return _regression(metric, true, pred, metric_args)


def metric_values(name: str, value: Any) -> dict[str, float]:
    """The ``{name: float}`` form the monitor and the reply carry (lists become ``name_1 .. name_n``).

    >>> metric_values("ACCURACY", 0.5), metric_values("MSE", [1, 2.5])
    ({'ACCURACY': 0.5}, {'MSE_1': 1.0, 'MSE_2': 2.5})
    """
    if isinstance(value, Mapping):
        return {str(k): _number(v) for k, v in value.items()}
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind == "b" or isinstance(value, bool):
        raise MetricError("a metric value must be a number, not a boolean")
    if arr.ndim == 0:
        return {name: _number(arr.item())}
    return {f"{name}_{i + 1}": _number(v) for i, v in enumerate(arr.ravel().tolist())}


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise MetricError(f"a metric value must be a number, got {type(value).__name__}")
    return float(value)
