"""Laws of the dataset partitions for simulated nodes: a cover, deterministic, balanced or skewed as asked."""

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedpipe.simulation.partition import SCHEMES, partition, partition_sizes_summary


@st.composite
def datasets(draw: st.DrawFn, max_rows: int = 300) -> tuple[np.ndarray, int]:
    """Labels (a few classes, possibly unbalanced) and a node count the rows can serve."""
    n_labels = draw(st.integers(1, 6))
    labels = np.array(draw(st.lists(st.integers(0, n_labels - 1), min_size=1, max_size=max_rows)))
    n_nodes = draw(st.integers(1, labels.size))
    return labels, n_nodes


alphas = st.sampled_from([0.01, 0.05, 0.5, 1.0, 10.0, 1000.0])
seeds = st.integers(0, 2**32)


def _label_skew(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean total-variation distance between each node's label mix and the pooled mix."""
    classes = np.unique(labels)
    pooled = np.array([(labels == c).mean() for c in classes])
    mixes = [np.array([(labels[p] == c).mean() for c in classes]) for p in parts]
    return float(np.mean([np.abs(m - pooled).sum() / 2 for m in mixes]))


@given(data=datasets(), scheme=st.sampled_from(SCHEMES), alpha=alphas, seed=seeds)
def test_parts_cover_every_row_exactly_once_and_none_is_empty(
    data: tuple[np.ndarray, int], scheme: str, alpha: float, seed: int
) -> None:
    labels, n_nodes = data
    parts = partition(labels, n_nodes, scheme=scheme, alpha=alpha, seed=seed)
    assert len(parts) == n_nodes
    assert all(p.dtype == np.int64 and p.ndim == 1 and p.size >= 1 for p in parts)
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, hence no row twice within a part
    joined = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(joined, np.arange(labels.size))  # disjoint and covering


@given(
    data=datasets(), scheme=st.sampled_from(SCHEMES), alpha=alphas, seed=seeds, min_size=st.integers(1, 20)
)
def test_every_part_holds_at_least_min_size_rows(
    data: tuple[np.ndarray, int], scheme: str, alpha: float, seed: int, min_size: int
) -> None:
    labels, n_nodes = data
    n_nodes = max(1, min(n_nodes, labels.size // min_size))
    if n_nodes * min_size > labels.size:
        min_size = 1
    parts = partition(labels, n_nodes, scheme=scheme, alpha=alpha, seed=seed, min_size=min_size)
    assert min(p.size for p in parts) >= min_size
    assert sum(p.size for p in parts) == labels.size


@given(data=datasets(), scheme=st.sampled_from(SCHEMES), alpha=alphas, seed=seeds)
def test_same_seed_gives_the_same_partition(
    data: tuple[np.ndarray, int], scheme: str, alpha: float, seed: int
) -> None:
    labels, n_nodes = data
    first = partition(labels, n_nodes, scheme=scheme, alpha=alpha, seed=seed)
    again = partition(labels.copy(), n_nodes, scheme=scheme, alpha=alpha, seed=seed)
    assert [p.tolist() for p in first] == [p.tolist() for p in again]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_different_seeds_usually_give_different_partitions(scheme: str) -> None:
    # deterministic: fixed seeds over a dataset where a collision would be astronomically unlikely
    labels = np.random.default_rng(7).integers(0, 3, 200)
    outputs = {
        tuple(tuple(p.tolist()) for p in partition(labels, 5, scheme=scheme, seed=s)) for s in range(20)
    }
    assert len(outputs) >= 19


@given(data=datasets(), scheme=st.sampled_from(SCHEMES), alpha=alphas, seed=seeds)
def test_one_node_gets_every_row(data: tuple[np.ndarray, int], scheme: str, alpha: float, seed: int) -> None:
    labels, _ = data
    (only,) = partition(labels, 1, scheme=scheme, alpha=alpha, seed=seed)
    np.testing.assert_array_equal(only, np.arange(labels.size))


@given(data=datasets(), scheme=st.sampled_from(["iid", "label"]), seed=seeds)
def test_iid_and_label_part_sizes_differ_by_at_most_one(
    data: tuple[np.ndarray, int], scheme: str, seed: int
) -> None:
    labels, n_nodes = data
    sizes = [p.size for p in partition(labels, n_nodes, scheme=scheme, seed=seed)]
    assert max(sizes) - min(sizes) <= 1


@given(data=datasets(), seed=seeds)
def test_label_shards_are_contiguous_in_label_order(data: tuple[np.ndarray, int], seed: int) -> None:
    # contiguous shards of the label-sorted rows: n nodes over L labels give at most n + L - 1
    # (node, label) pairs; so with 2 labels all but at most one node hold a single label
    labels, n_nodes = data
    parts = partition(labels, n_nodes, scheme="label", seed=seed)
    pairs = sum(np.unique(labels[p]).size for p in parts)
    assert pairs <= n_nodes + np.unique(labels).size - 1


def test_label_split_of_two_labels_leaves_most_nodes_with_one_label() -> None:
    labels = np.array([0] * 300 + [1] * 269)
    parts = partition(labels, 10, scheme="label", seed=1)
    mixed = [p for p in parts if np.unique(labels[p]).size > 1]
    assert len(mixed) <= 1


@pytest.mark.parametrize("seed", range(5))
def test_dirichlet_with_large_alpha_is_close_to_iid(seed: int) -> None:
    labels = np.random.default_rng(seed).integers(0, 3, 3000)
    parts = partition(labels, 10, scheme="dirichlet", alpha=1000.0, seed=seed)
    assert _label_skew(parts, labels) < 0.05
    iid_like_sizes = [p.size for p in parts]
    assert max(iid_like_sizes) < 2 * min(iid_like_sizes)


@pytest.mark.parametrize("seed", range(5))
def test_dirichlet_with_small_alpha_is_skewed(seed: int) -> None:
    labels = np.random.default_rng(seed).integers(0, 3, 3000)
    skewed = _label_skew(partition(labels, 10, scheme="dirichlet", alpha=0.05, seed=seed), labels)
    iid = _label_skew(partition(labels, 10, scheme="iid", seed=seed), labels)
    # one label per node would give 2/3 here; IID stays near 0
    assert skewed > 0.3
    assert iid < 0.1


def test_dirichlet_rebalances_when_draws_leave_nodes_short() -> None:
    # 1000 nodes at alpha 0.05 leave most nodes with nothing in every draw; rebalancing fills them
    labels = np.random.default_rng(0).integers(0, 2, 5000)
    parts = partition(labels, 1000, scheme="dirichlet", alpha=0.05, seed=0, min_size=3)
    assert min(p.size for p in parts) >= 3
    assert sum(p.size for p in parts) == labels.size


@pytest.mark.parametrize("scheme", SCHEMES)
def test_hundred_thousand_rows_over_a_thousand_nodes(scheme: str) -> None:
    labels = np.random.default_rng(0).integers(0, 10, 100_000)
    parts = partition(labels, 1000, scheme=scheme, alpha=0.5, seed=0)
    assert len(parts) == 1000
    assert sum(p.size for p in parts) == 100_000
    assert min(p.size for p in parts) >= 1


def test_labels_of_any_orderable_dtype() -> None:
    labels = np.array(["benign", "malignant", "benign", "benign", "malignant", "malignant"])
    for scheme in SCHEMES:
        parts = partition(labels, 3, scheme=scheme, seed=0)
        assert sorted(np.concatenate(parts).tolist()) == list(range(6))


def test_a_thousand_nodes_on_569_rows_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^n_nodes \(1000\) is more than the dataset's 569 rows") as err:
        partition(np.zeros(569), 1000)
    assert "\n" not in str(err.value)


BAD: list[tuple[dict[str, Any], str]] = [
    ({"labels": np.zeros((4, 2))}, "labels"),
    ({"labels": np.float64(1.0)}, "labels"),
    ({"n_nodes": 0}, "n_nodes"),
    ({"n_nodes": -3}, "n_nodes"),
    ({"n_nodes": 11}, "n_nodes"),
    ({"n_nodes": 2.0}, "n_nodes"),
    ({"n_nodes": True}, "n_nodes"),
    ({"scheme": "shards"}, "scheme"),
    ({"scheme": "dirichlet", "alpha": 0.0}, "alpha"),
    ({"scheme": "dirichlet", "alpha": -1.0}, "alpha"),
    ({"scheme": "dirichlet", "alpha": math.nan}, "alpha"),
    ({"scheme": "dirichlet", "alpha": math.inf}, "alpha"),
    ({"alpha": "0.5"}, "alpha"),
    ({"seed": -1}, "seed"),
    ({"min_size": 0}, "min_size"),
    ({"n_nodes": 4, "min_size": 3}, "min_size"),
]


@pytest.mark.parametrize(("change", "named"), BAD, ids=[f"{k}" for k, _ in BAD])
def test_bad_input_is_refused_with_one_line_naming_the_argument(change: dict[str, Any], named: str) -> None:
    kwargs: dict[str, Any] = {"labels": np.arange(10) % 2, "n_nodes": 2} | change
    labels, n_nodes = kwargs.pop("labels"), kwargs.pop("n_nodes")
    with pytest.raises(ValueError) as err:
        partition(labels, n_nodes, **kwargs)
    message = str(err.value)
    assert named in message
    assert "\n" not in message


@given(alpha=st.floats(max_value=0.0) | st.sampled_from([math.nan, math.inf, -math.inf]))
def test_any_alpha_not_finite_and_positive_is_refused(alpha: float) -> None:
    with pytest.raises(ValueError, match=r"^alpha "):
        partition(np.arange(10), 2, scheme="dirichlet", alpha=alpha)


def test_summary_is_one_line_with_sizes_and_skew() -> None:
    labels = np.array([0] * 300 + [1] * 269)
    iid = partition_sizes_summary(partition(labels, 10, seed=0), labels)
    by_label = partition_sizes_summary(partition(labels, 10, scheme="label", seed=0), labels)
    assert "\n" not in iid and "\n" not in by_label
    assert iid.startswith("10 nodes, rows per node min 56 / median 57 / max 57, 2 labels, label skew ")
    skew_iid = float(iid.split("label skew ")[1].split()[0])
    skew_label = float(by_label.split("label skew ")[1].split()[0])
    assert skew_iid < 0.1 < 0.4 < skew_label


def test_summary_of_no_parts() -> None:
    assert partition_sizes_summary([], np.array([1, 2])) == "0 nodes"
