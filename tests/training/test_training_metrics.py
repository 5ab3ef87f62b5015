"""Metrics equal a straightforward reference (plain Python loops) and scikit-learn where both are defined."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpipe.args import Metric
from fedpipe.training import MetricError, evaluate, metric_values

LABEL_METRICS = [Metric.F1_SCORE, Metric.PRECISION, Metric.RECALL]


def ref_counts(true: list, pred: list, label: object) -> tuple[int, int, int]:
    tp = sum(1 for t, p in zip(true, pred) if t == label and p == label)
    fp = sum(1 for t, p in zip(true, pred) if t != label and p == label)
    fn = sum(1 for t, p in zip(true, pred) if t == label and p != label)
    return tp, fp, fn


def ref_score(kind: Metric, tp: int, fp: int, fn: int) -> float:
    if kind is Metric.PRECISION:
        return tp / (tp + fp) if tp + fp else 0.0
    if kind is Metric.RECALL:
        return tp / (tp + fn) if tp + fn else 0.0
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def ref_label_metric(kind: Metric, true: list, pred: list, average: str | None, pos_label: object = None):
    if kind is Metric.ACCURACY:
        return sum(t == p for t, p in zip(true, pred)) / len(true)
    if average == "binary":
        label = min(true) if pos_label is None else pos_label
        return ref_score(kind, *ref_counts(true, pred, label))
    labels = sorted(set(true) | set(pred))
    counts = [ref_counts(true, pred, label) for label in labels]
    if average == "micro":
        return ref_score(kind, *(sum(c[i] for c in counts) for i in range(3)))
    scores = [ref_score(kind, *c) for c in counts]
    if average is None:
        return scores
    if average == "macro":
        return sum(scores) / len(scores)
    support = [tp + fn for tp, _, fn in counts]
    return sum(s * w for s, w in zip(scores, support)) / sum(support)


def default_average(true: list) -> str:
    return "weighted" if len(set(true)) > 2 else "binary"


label_pairs = st.integers(1, 5).flatmap(
    lambda k: st.integers(1, 60).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, k - 1), min_size=n, max_size=n),
            st.lists(st.integers(0, k - 1), min_size=n, max_size=n),
        )
    )
)


def close(a, b) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(math.isclose(x, y, abs_tol=1e-12) for x, y in zip(a, b))
    return math.isclose(a, b, abs_tol=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    pair=label_pairs,
    kind=st.sampled_from([*LABEL_METRICS, Metric.ACCURACY]),
    average=st.sampled_from(["default", "micro", "macro", "weighted", None]),
)
def test_label_metrics_equal_reference(pair, kind, average):
    true, pred = pair
    args = {} if average == "default" or kind is Metric.ACCURACY else {"average": average}
    expected = ref_label_metric(kind, true, pred, default_average(true) if average == "default" else average)
    assert close(evaluate(kind, true, pred, **args), expected)


@settings(max_examples=50, deadline=None)
@given(
    pair=label_pairs,
    kind=st.sampled_from(LABEL_METRICS),
    average=st.sampled_from(["micro", "macro", "weighted", "binary"]),
)
def test_label_metrics_equal_sklearn(pair, kind, average):
    sk = pytest.importorskip("sklearn.metrics")
    true, pred = pair
    labels = set(true) | set(pred)
    if average == "binary" and len(labels) > 2:
        return  # scikit-learn refuses binary averaging over more than two labels
    fn = {Metric.F1_SCORE: sk.f1_score, Metric.PRECISION: sk.precision_score, Metric.RECALL: sk.recall_score}[
        kind
    ]
    kwargs = {"average": average, "zero_division": 0.0}
    if average == "binary":
        kwargs["pos_label"] = min(true)
    assert math.isclose(evaluate(kind, true, pred, average=average), fn(true, pred, **kwargs), abs_tol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0, 1)), min_size=1, max_size=50))
def test_scores_are_thresholded_at_one_half(rows):
    true = [t for t, _ in rows]
    scores = [s for _, s in rows]
    labels = (
        [1 if s >= 0.5 else 0 for s in scores] if any(s % 1 for s in scores) else [int(s) for s in scores]
    )
    assert close(
        evaluate(Metric.ACCURACY, true, scores), ref_label_metric(Metric.ACCURACY, true, labels, None)
    )


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 4).flatmap(
        lambda k: st.lists(
            st.tuples(st.integers(0, k - 1), st.lists(st.floats(0, 1), min_size=k, max_size=k)),
            min_size=1,
            max_size=40,
        )
    )
)
def test_probability_rows_are_argmaxed(rows):
    true = [t for t, _ in rows]
    probs = [p for _, p in rows]
    pred = [row.index(max(row)) for row in probs]
    for kind in (Metric.ACCURACY, Metric.F1_SCORE):
        expected = ref_label_metric(kind, true, pred, default_average(true))
        assert close(evaluate(kind, true, probs), expected)
    one_hot = [[1.0 if i == t else 0.0 for i in range(len(probs[0]))] for t in true]
    assert close(
        evaluate(Metric.ACCURACY, one_hot, probs), ref_label_metric(Metric.ACCURACY, true, pred, None)
    )


finite = st.floats(-1e3, 1e3, allow_nan=False)


def ref_regression(kind: Metric, true: list[float], pred: list[float]) -> float:
    n = len(true)
    if kind is Metric.MEAN_SQUARE_ERROR:
        return sum((t - p) ** 2 for t, p in zip(true, pred)) / n
    if kind is Metric.MEAN_ABSOLUTE_ERROR:
        return sum(abs(t - p) for t, p in zip(true, pred)) / n
    err = [t - p for t, p in zip(true, pred)]
    var = lambda xs: sum((x - sum(xs) / n) ** 2 for x in xs) / n  # noqa: E731
    if var(true) == 0:
        return 1.0 if var(err) == 0 else 0.0
    return 1 - var(err) / var(true)


REGRESSION = [Metric.MEAN_SQUARE_ERROR, Metric.MEAN_ABSOLUTE_ERROR, Metric.EXPLAINED_VARIANCE]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=1, max_size=40), st.sampled_from(REGRESSION))
def test_regression_metrics_equal_reference(rows, kind):
    true = [t for t, _ in rows]
    pred = [p for _, p in rows]
    got = evaluate(kind, true, pred)
    expected = ref_regression(kind, true, pred)
    if kind is Metric.EXPLAINED_VARIANCE and abs(expected) > 1e6:
        return  # ill-conditioned variance ratio: both sides are dominated by rounding
    assert math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda k: st.lists(
            st.tuples(st.lists(finite, min_size=k, max_size=k), st.lists(finite, min_size=k, max_size=k)),
            min_size=2,
            max_size=20,
        )
    ),
    st.sampled_from(REGRESSION),
)
def test_two_d_regression_defaults_to_raw_values(rows, kind):
    true = np.array([t for t, _ in rows])
    pred = np.array([p for _, p in rows])
    got = evaluate(kind, true, pred)
    if true.shape[1] == 1:
        assert isinstance(got, float)
        return
    expected = [ref_regression(kind, true[:, j].tolist(), pred[:, j].tolist()) for j in range(true.shape[1])]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if not (kind is Metric.EXPLAINED_VARIANCE and abs(e) > 1e6):
            assert math.isclose(g, e, rel_tol=1e-6, abs_tol=1e-6)
    averaged = evaluate(kind, true, pred, multioutput="uniform_average")
    assert math.isclose(averaged, float(np.mean(got)), rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize(
    ("metric", "true", "pred", "args", "message"),
    [
        (Metric.ACCURACY, [0, 1], [0], {}, "2 true values but 1 predictions"),
        (Metric.ACCURACY, [], [], {}, "no samples"),
        (Metric.ACCURACY, ["a", "b"], [0, 1], {}, "both be text labels or both be numbers"),
        (Metric.MEAN_SQUARE_ERROR, ["a"], ["b"], {}, "needs numbers"),
        (Metric.F1_SCORE, [0, 1], [0, 1], {"average": "samples"}, "average must be one of"),
        (Metric.F1_SCORE, [0, 1], [0, 1], {"multioutput": "raw_values"}, "takes no argument"),
        (Metric.ACCURACY, np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), {}, "1-D or 2-D"),
        (Metric.ACCURACY, [[1, 0], [0, 1]], [[1, 0, 0], [0, 1, 0]], {}, "columns"),
    ],
)
def test_bad_inputs_are_metric_errors(metric, true, pred, args, message):
    with pytest.raises(MetricError, match=message):
        evaluate(metric, true, pred, **args)


def test_text_labels_and_explicit_pos_label():
    true, pred = ["b", "m", "m", "b"], ["b", "m", "b", "b"]
    assert evaluate(Metric.RECALL, true, pred) == 1.0  # pos_label "b", the smallest true label
    assert evaluate(Metric.RECALL, true, pred, pos_label="m") == 0.5


def test_metric_values_naming():
    assert metric_values("F1_SCORE", [0.5, 1]) == {"F1_SCORE_1": 0.5, "F1_SCORE_2": 1.0}
    with pytest.raises(MetricError):
        metric_values("X", True)
