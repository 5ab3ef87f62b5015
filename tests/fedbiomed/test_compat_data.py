"""The data half of the surface: TabularDataset over CSV files, CustomDataset, DataManager, 6.4.1's split."""

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedpipe.fedbiomed.compat import CustomDataset, DataManager, FedbiomedError, TabularDataset, draw_split
from fedpipe.fedbiomed.compat.data import build_loaders, n_test_samples
from fedpipe.training.errors import DataError
from tests.fedbiomed.plans.support import CSV


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_tabular_rows_come_out_as_the_stock_node_gives_them():
    dataset = TabularDataset(input_columns=["mean_area", "diagnosis"], target_columns="diagnosis")
    dataset.load(root=CSV)
    data, target = dataset[3]
    # float and integer columns together: the default float dtype; an integer-only target: int64 of shape [1]
    assert data.dtype == torch.float32 and data.tolist() == pytest.approx([386.1, 0.0])
    assert target.dtype == torch.int64 and target.tolist() == [0]
    assert len(dataset) == 569


def test_columns_by_index_without_header_get_polars_names(tmp_path):
    path = _csv(tmp_path, "1;2.5;7\n3;4.5;8\n5;6.5;9\n")
    dataset = TabularDataset(input_columns=[0, 1], target_columns=2)
    dataset.load(root=path)
    assert [dataset[i][0].tolist() for i in range(3)] == [[1.0, 2.5], [3.0, 4.5], [5.0, 6.5]]
    assert dataset[2][1].tolist() == [9]
    named = TabularDataset(input_columns="column_2")
    named.load(root=path)
    assert named[0] == (torch.tensor([2.5]), None)


def test_transforms_see_the_row_and_their_result_is_typed_again():
    seen: list[torch.dtype] = []

    def transform(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.dtype)
        return x.double() * 2

    dataset = TabularDataset(
        input_columns=[0], target_columns=[30], transform=transform, target_transform=lambda y: y + 1
    )
    dataset.load(root=CSV)
    assert seen == [torch.float64]  # load checks the transform on the first row, before the default cast
    data, target = dataset[0]
    assert seen == [torch.float64, torch.float32]
    assert data.dtype == torch.float32 and data.item() == pytest.approx(2 * 17.99)
    assert target.tolist() == [1]


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (["nope"], "cannot read columns ['nope']"),
        ([31], "column index(es) [31] out of range (0 to 30)"),
        ([-1], "out of range"),
        (["mean_area", "mean_area"], "duplicate columns ['mean_area']"),
        ([1.5], "expected all items to be str or int"),
        ({"a": 1}, "invalid type for columns"),
    ],
)
def test_bad_column_selections_are_refused_with_a_clear_message(columns, message):
    dataset = TabularDataset(input_columns=columns)
    with pytest.raises(FedbiomedError, match=None) as caught:
        dataset.load(root=CSV)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,x\n2,y\n3,z\n", "non-numeric values"),  # text: no header detected, as in 6.4.1
        ("a,b\n1,2\n" + "3,4\n" * 4000 + "5\n", "line 4003 has 1 fields, not 2"),
        ("a,b\n1,\n2,3\n4,5\n", "non-numeric values"),  # an empty cell
        ("a,b\n1,2\n3\n", "cannot detect the delimiter or header"),
        ("", "is empty"),
    ],
)
def test_csv_files_that_cannot_be_used_are_refused(tmp_path, text, message):
    dataset = TabularDataset(input_columns=[0, 1])
    with pytest.raises(FedbiomedError) as caught:
        dataset.load(root=_csv(tmp_path, text))
    assert message in str(caught.value)
    assert str(tmp_path) not in str(caught.value)


def test_a_transform_that_does_not_return_a_tensor_is_refused_at_load():
    with pytest.raises(FedbiomedError, match=r"must return a torch\.Tensor"):
        TabularDataset(input_columns=[0], transform=lambda x: x.tolist()).load(root=CSV)
    with pytest.raises(FedbiomedError, match="must be callable"):
        TabularDataset(input_columns=[0], transform="not callable")  # type: ignore[arg-type]


def test_an_unloaded_dataset_says_so_and_a_missing_file_names_no_path(tmp_path):
    dataset = TabularDataset(input_columns=[0])
    with pytest.raises(FedbiomedError, match="has not completed initialization"):
        len(dataset)
    with pytest.raises(FedbiomedError, match="does not exist") as caught:
        dataset.load(root=tmp_path / "missing.csv")
    assert "missing.csv" not in str(caught.value)


class Squares(CustomDataset):
    def read(self) -> None:
        self.n = int(Path(self.path).read_text(encoding="utf-8"))

    def get_item(self, index: int):
        return torch.tensor([float(index)]), torch.tensor([index * index], dtype=torch.int32)

    def __len__(self) -> int:
        return self.n


def test_a_custom_dataset_reads_from_the_node_path_with_default_types(tmp_path):
    path = _csv(tmp_path, "4")
    dataset = Squares()
    dataset.load(root=path)
    assert dataset.path == path and len(dataset) == 4
    data, target = dataset[3]
    assert data.tolist() == [3.0] and target.dtype == torch.int64 and target.tolist() == [9]


def test_custom_datasets_keep_6_4_1_subclassing_rules():
    with pytest.raises(FedbiomedError, match="may not override `__init__`"):

        class WithInit(CustomDataset):
            def __init__(self) -> None:
                pass

    with pytest.raises(FedbiomedError, match="must implement a 'get_item' method"):

        class NoItems(CustomDataset):
            def read(self) -> None:
                pass

            def __len__(self) -> int:
                return 0


def test_a_data_manager_takes_only_fedbiomed_datasets_and_extends_loader_args_without_overriding():
    with pytest.raises(FedbiomedError, match="must be a Fed-BioMed Dataset"):
        DataManager(torch.utils.data.TensorDataset(torch.zeros(2)))  # type: ignore[arg-type]
    manager = DataManager(TabularDataset(input_columns=[0]), batch_size=8)
    manager.extend_loader_args({"batch_size": 32, "shuffle": False})
    assert manager.loader_arguments == {"batch_size": 8, "shuffle": False}
    assert not manager.shuffles
    with pytest.raises(DataError, match="worker_init_fn"):
        manager.extend_loader_args({"worker_init_fn": "os.system"})


@given(
    n=st.integers(min_value=0, max_value=300),
    ratio=st.floats(min_value=0.0, max_value=1.0),
    shuffle=st.booleans(),
)
def test_a_split_partitions_the_samples_with_floor_n_ratio_test_samples(n, ratio, shuffle):
    torch.manual_seed(0)
    split = draw_split(n, ratio, shuffle=shuffle)
    assert sorted(split.train_indices + split.test_indices) == list(range(n))
    assert len(split.test_indices) == n_test_samples(n, ratio) == math.floor(n * ratio)
    if not shuffle:
        assert split.train_indices == tuple(range(n - len(split.test_indices)))


def test_a_shuffled_split_is_the_one_random_split_draws_from_the_seeded_generator():
    torch.manual_seed(7)
    split = draw_split(10, 0.3, shuffle=True)
    torch.manual_seed(7)
    train, test = torch.utils.data.random_split(range(10), [7, 3])  # type: ignore[arg-type]
    assert split.train_indices == tuple(train.indices) and split.test_indices == tuple(test.indices)


def test_loaders_follow_6_4_1_the_test_loader_gets_only_its_batch_size(tmp_path):
    manager = DataManager(
        TabularDataset(input_columns=[0], target_columns=[30]), batch_size=4, drop_last=True
    )
    assert manager.load_dataset(CSV) == 569
    train, test = build_loaders(manager, list(range(10)), [20, 21, 22], 0)
    assert train is not None and test is not None
    assert (train.batch_size, train.drop_last, len(train)) == (4, True, 2)
    assert (test.batch_size, test.drop_last, len(test)) == (3, False, 1)
    ((data, target),) = list(test)
    assert data.shape == (3, 1) and target.shape == (3, 1)
    assert build_loaders(manager, [], [1], 2)[0] is None
    with pytest.raises(FedbiomedError, match="outside the dataset"):
        build_loaders(manager, [569], [], 0)
