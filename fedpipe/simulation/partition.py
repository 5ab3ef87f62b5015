"""Dataset partitions for simulated nodes: IID, pathological non-IID by label, and Dirichlet(alpha).

Every scheme first decides, for each row, which node owns it (one vectorised pass over the
labels), then groups rows by node; so 100k rows over 1000 nodes costs a few sorts, not a Python
loop per node. All randomness comes from one ``numpy.random.Generator`` seeded with ``seed``: the
same arguments always give the same partition.
"""

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["SCHEMES", "partition", "partition_sizes_summary"]

SCHEMES = ("iid", "label", "dirichlet")

# Dirichlet draws that leave a node under min_size are drawn again this many times before the
# last draw is rebalanced; with many nodes and a small alpha a draw almost never fits, and
# rebalancing is what makes the scheme total.
_DIRICHLET_TRIES = 10

IndexArray = npt.NDArray[np.int64]


def partition(
    labels: npt.ArrayLike,
    n_nodes: int,
    *,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    min_size: int = 1,
) -> list[IndexArray]:
    """Split the rows of a dataset among ``n_nodes`` simulated nodes.

    ``labels`` is the 1-D array of the dataset's labels (any dtype ``numpy.unique`` can order);
    only its length matters to ``"iid"``. The result holds one array per node of row indices
    into the dataset, int64 and sorted; together they cover every row exactly once, and each
    holds at least ``min_size`` rows.

    - ``"iid"``: a seeded shuffle cut into ``n_nodes`` parts whose sizes differ by at most one.
    - ``"label"``: the classic pathological split: rows sorted by label (shuffled within a
      label), cut into ``n_nodes`` contiguous shards of nearly equal size, dealt to the nodes in
      a seeded order; each node holds one or a few labels (with two labels, all but at most one
      node hold a single label).
    - ``"dirichlet"``: for each label, the shares of the nodes are drawn from
      Dirichlet(``alpha``) and that label's rows are dealt accordingly; a small alpha skews each
      node towards few labels, a large one approaches IID. A draw leaving a node under
      ``min_size`` is drawn again a bounded number of times, then rebalanced by moving randomly
      chosen rows from nodes above ``min_size`` (in proportion to their surplus) to the short ones.

    Raises ``ValueError`` with a one-line message naming the bad argument: ``labels`` not 1-D;
    ``n_nodes`` below 1 or above the number of rows; ``n_nodes * min_size`` above the number of
    rows; an unknown ``scheme``; ``alpha`` not a finite number above 0; a negative ``seed``.

    >>> [p.tolist() for p in partition([0, 0, 1, 1, 1], 2, seed=3)]
    [[1, 2, 4], [0, 3]]
    >>> [p.tolist() for p in partition([0, 0, 0, 1, 1, 1], 2, scheme="label", seed=3)]
    [[3, 4, 5], [0, 1, 2]]
    """
    y = np.asarray(labels)
    _check(y, n_nodes, scheme=scheme, alpha=alpha, seed=seed, min_size=min_size)
    rng = np.random.default_rng(seed)
    rows = y.shape[0]
    if scheme == "iid":
        owner = np.empty(rows, dtype=np.int64)
        owner[rng.permutation(rows)] = np.repeat(
            np.arange(n_nodes, dtype=np.int64), _even_sizes(rows, n_nodes)
        )
    elif scheme == "label":
        owner = _by_label_shards(_label_codes(y), n_nodes, rng)
    else:
        owner = _by_dirichlet(_label_codes(y), n_nodes, alpha, min_size, rng)
    return _group(owner, n_nodes)


def partition_sizes_summary(parts: Sequence[npt.ArrayLike], labels: npt.ArrayLike) -> str:
    """One line for a progress header: node count, rows per node, label count and label skew.

    Label skew is the mean, over nodes, of the total-variation distance between a node's label
    mix and the mix of all the rows the parts cover: 0 when every node mirrors the pooled mix,
    approaching ``1 - (share of the rarest label)`` when each node holds a single label.

    >>> y = np.array([0, 0, 1, 1])
    >>> partition_sizes_summary([[0, 2], [1, 3]], y)
    '2 nodes, rows per node min 2 / median 2 / max 2, 2 labels, label skew 0.00 (0 = IID)'
    >>> partition_sizes_summary([[0, 1], [2, 3]], y)
    '2 nodes, rows per node min 2 / median 2 / max 2, 2 labels, label skew 0.50 (0 = IID)'
    """
    arrays = [np.asarray(p, dtype=np.int64).reshape(-1) for p in parts]
    if not arrays:
        return "0 nodes"
    sizes = np.array([a.size for a in arrays], dtype=np.int64)
    rows = np.concatenate(arrays)
    head = (
        f"{len(arrays)} nodes, rows per node min {sizes.min()} / median {_fmt(float(np.median(sizes)))}"
        f" / max {sizes.max()}"
    )
    if rows.size == 0:
        return head
    codes = _label_codes(np.asarray(labels)[rows])
    n_labels = int(codes.max()) + 1
    owner = np.repeat(np.arange(len(arrays), dtype=np.int64), sizes)
    counts = np.bincount(owner * n_labels + codes, minlength=len(arrays) * n_labels).reshape(
        len(arrays), n_labels
    )
    pooled = counts.sum(axis=0) / rows.size
    filled = sizes > 0
    mix = counts[filled] / sizes[filled, None]
    skew = float(np.abs(mix - pooled).sum(axis=1).mean() / 2)
    return f"{head}, {n_labels} label{'s' if n_labels != 1 else ''}, label skew {skew:.2f} (0 = IID)"


def _check(y: np.ndarray, n_nodes: int, *, scheme: str, alpha: float, seed: int, min_size: int) -> None:
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {y.shape}")
    rows = y.shape[0]
    for name, value, least in (("n_nodes", n_nodes, 1), ("min_size", min_size, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}; got {scheme!r}")
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, int | float | np.integer | np.floating)
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise ValueError(f"alpha must be a finite number above 0, got {alpha!r}")
    if n_nodes > rows:
        raise ValueError(
            f"n_nodes ({n_nodes}) is more than the dataset's {rows} rows: each node needs at least one row"
        )
    if n_nodes * min_size > rows:
        raise ValueError(
            f"n_nodes * min_size ({n_nodes} * {min_size}) is more than the dataset's {rows} rows"
        )


def _label_codes(y: np.ndarray) -> IndexArray:
    """Each label replaced by its rank among the distinct labels (0 .. n_labels - 1)."""
    _, codes = np.unique(y, return_inverse=True)
    return codes.reshape(-1).astype(np.int64)


def _even_sizes(total: int, parts: int) -> IndexArray:
    """``parts`` sizes summing to ``total``, differing by at most one, larger first."""
    sizes = np.full(parts, total // parts, dtype=np.int64)
    sizes[: total % parts] += 1
    return sizes


def _by_label_shards(codes: IndexArray, n_nodes: int, rng: np.random.Generator) -> IndexArray:
    """Owner of each row: contiguous shards of the label-sorted rows, dealt in a seeded order."""
    # ties broken at random so that which rows of a label land in which shard depends on the seed
    order = np.lexsort((rng.random(codes.size), codes))
    shard_owner = rng.permutation(n_nodes).astype(np.int64)
    owner = np.empty(codes.size, dtype=np.int64)
    owner[order] = np.repeat(shard_owner, _even_sizes(codes.size, n_nodes))
    return owner


def _by_dirichlet(
    codes: IndexArray, n_nodes: int, alpha: float, min_size: int, rng: np.random.Generator
) -> IndexArray:
    """Owner of each row: each label's rows split over the nodes by a Dirichlet(alpha) draw."""
    per_label = np.bincount(codes)
    order = np.lexsort((rng.random(codes.size), codes))
    owner = np.empty(codes.size, dtype=np.int64)
    for _ in range(_DIRICHLET_TRIES):
        shares = rng.dirichlet(np.full(n_nodes, float(alpha)), size=per_label.size)
        bounds = np.rint(np.cumsum(shares, axis=1) * per_label[:, None]).astype(np.int64)
        # rounding must not lose or invent rows: each label's last bound is its row count
        bounds[:, -1] = per_label
        counts = np.diff(bounds, axis=1, prepend=0)
        nodes = np.tile(np.arange(n_nodes, dtype=np.int64), per_label.size)
        owner[order] = np.repeat(nodes, counts.reshape(-1))
        if np.bincount(owner, minlength=n_nodes).min() >= min_size:
            return owner
    return _rebalance(owner, n_nodes, min_size, rng)


def _rebalance(owner: IndexArray, n_nodes: int, min_size: int, rng: np.random.Generator) -> IndexArray:
    """Move random rows from nodes above ``min_size`` (in proportion to surplus) to nodes below it.

    The caller has checked ``n_nodes * min_size <= rows``, so the surplus covers the deficit.
    """
    sizes = np.bincount(owner, minlength=n_nodes)
    deficit = np.clip(min_size - sizes, 0, None)
    surplus = np.clip(sizes - min_size, 0, None)
    need, spare = int(deficit.sum()), int(surplus.sum())
    # each donor gives floor(need * surplus / spare), the remainder going to the largest fractions
    exact = surplus * need / spare
    give = np.floor(exact).astype(np.int64)
    short = need - int(give.sum())
    if short:
        give[np.argsort(-(exact - give), kind="stable")[:short]] += 1
    # a random rank within each node picks which of its rows leave, keeping its label mix on average
    shuffled = rng.permutation(owner.size)
    by_node = shuffled[np.argsort(owner[shuffled], kind="stable")]
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    rank = np.arange(owner.size) - np.repeat(starts, sizes)
    leaving = by_node[rank < np.repeat(give, sizes)]
    moved = owner.copy()
    moved[leaving] = np.repeat(np.arange(n_nodes, dtype=np.int64), deficit)
    return moved


def _group(owner: IndexArray, n_nodes: int) -> list[IndexArray]:
    """Row indices of each node, sorted, from the owner of each row."""
    by_node = np.argsort(owner, kind="stable").astype(np.int64)
    ends = np.cumsum(np.bincount(owner, minlength=n_nodes))[:-1]
    return [part.copy() for part in np.split(by_node, ends)]


def _fmt(x: float) -> str:
    return f"{x:.0f}" if x.is_integer() else f"{x:.1f}"
