"""Tables for plans and simulations: ``read_table`` (parsed once per unchanged file) and ``enlarge``."""

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpipe.training import DataError, TabularDataset, enlarge, load_breast_cancer, read_table

SHIPPED = load_breast_cancer()


def _write(path: Path, rows: list[list[float]]) -> None:
    path.write_text("a,b,label\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


def test_a_table_is_parsed_once_while_its_file_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    _write(path, [[1, 2, 0], [3, 4, 1]])
    first = read_table(path)
    assert read_table(path) is first  # the same parsed array, not a new parse
    assert not first.flags.writeable  # shared between rounds: nobody may change it in place
    with pytest.raises(ValueError):
        first[0, 0] = 9.0


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    _write(path, [[1, 2, 0], [3, 4, 1]])
    before = read_table(path)
    _write(path, [[5, 6, 1], [7, 8, 0], [9, 10, 1]])
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # even within one clock tick
    after = read_table(path)
    assert after.tolist() == [[5, 6, 1], [7, 8, 0], [9, 10, 1]]
    assert before.tolist() == [[1, 2, 0], [3, 4, 1]]  # what a round already holds stays as it was


def test_a_dataset_over_a_cached_table_owns_its_tensors(tmp_path: Path) -> None:
    """The dataset copies the read-only table, so a plan that scales its tensors in place cannot alter the cache."""
    path = tmp_path / "t.csv"
    _write(path, [[1, 2, 0], [3, 4, 1]])
    table = read_table(path)
    data = TabularDataset(table[:, :-1], table[:, -1])
    data.features.mul_(10)
    assert read_table(path).tolist() == [[1, 2, 0], [3, 4, 1]]


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "No such file"), ("a,b\n1,x\n", "could not convert"), ("a,b\n1,2\n3\n", "columns")],
    ids=["missing", "not-numeric", "ragged"],
)
def test_an_unreadable_table_is_a_data_error_of_one_line(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as caught:
        read_table(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("cannot read the table")
    assert reason.lower() in message.lower()


def test_enlarge_keeps_the_shipped_rows_first_and_their_class_balance() -> None:
    big = enlarge(SHIPPED, 20_000, seed=3)
    assert big.features.shape == (20_000, 30) and big.labels.shape == (20_000,)
    assert np.array_equal(big.features[: len(SHIPPED)], SHIPPED.features)
    assert np.array_equal(big.labels[: len(SHIPPED)], SHIPPED.labels)
    assert (big.features >= 0).all() and np.isfinite(big.features).all()
    # generated rows copy shipped rows of the same label: the benign share stays near 357/569
    assert abs(big.labels.mean() - SHIPPED.labels.mean()) < 0.02
    assert big.feature_names == SHIPPED.feature_names


def test_enlarge_is_seeded_and_leaves_a_large_enough_dataset_alone() -> None:
    assert np.array_equal(enlarge(SHIPPED, 2_000, seed=1).features, enlarge(SHIPPED, 2_000, seed=1).features)
    assert not np.array_equal(
        enlarge(SHIPPED, 2_000, seed=1).features, enlarge(SHIPPED, 2_000, seed=2).features
    )
    assert enlarge(SHIPPED, 569) is SHIPPED and enlarge(SHIPPED, 10) is SHIPPED


@settings(max_examples=25, deadline=None)
@given(rows=st.one_of(st.integers(max_value=0), st.booleans(), st.floats(), st.text(max_size=3)))
def test_enlarge_refuses_a_row_count_that_is_not_a_positive_integer(rows: object) -> None:
    with pytest.raises(DataError, match="rows must be a positive integer"):
        enlarge(SHIPPED, rows)  # type: ignore[arg-type]
