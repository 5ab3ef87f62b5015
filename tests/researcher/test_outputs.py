"""What a run leaves behind: safetensors written and read by the format's rules, the model in both
formats, the metrics CSV numbered from round 1, the plot."""

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedpipe.researcher.experiment import ExperimentResult, NodeMetrics, NodeResult, RoundRecord
from fedpipe.researcher.outputs import (
    METRICS_COLUMNS,
    SAFETENSORS_DTYPES,
    SafetensorsError,
    load_model,
    load_safetensors,
    metrics_rows,
    save_model,
    save_outputs,
    save_safetensors,
    write_metrics_csv,
)

shapes = st.lists(st.integers(0, 4), max_size=3).map(tuple)


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(sorted(SAFETENSORS_DTYPES.values(), key=str)))
    shape = draw(shapes)
    count = int(np.prod(shape))
    raw = draw(st.binary(min_size=count * 8, max_size=count * 8))
    # any bit pattern of the dtype's width (NaN payloads included), booleans as 0 or 1
    itemsize = torch.empty((), dtype=dtype).element_size()
    data = (
        torch.frombuffer(bytearray(raw[: count * itemsize]), dtype=torch.uint8)
        if count
        else torch.empty(0, dtype=torch.uint8)
    )
    if dtype == torch.bool:
        return (data % 2).to(torch.bool).reshape(shape)
    return data.view(dtype).reshape(shape).clone()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bits (so NaNs compare by their pattern)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(width), b.contiguous().view(width))


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=10).filter(lambda s: s != "__metadata__"), tensors(), max_size=5
    ),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)
def test_safetensors_roundtrip(
    tmp_path_factory: pytest.TempPathFactory, named: dict[str, torch.Tensor], meta: dict[str, str]
) -> None:
    """Any dtype, shape (empty and 0-d included) and bit pattern reads back as written, in order."""
    path = tmp_path_factory.mktemp("st") / "t.safetensors"
    save_safetensors(named, path, metadata=meta)
    back, metadata = load_safetensors(path)
    assert list(back) == list(named)
    assert all(_same(named[k], back[k]) for k in named)
    assert metadata == meta
    blob = path.read_bytes()
    (size,) = struct.unpack("<Q", blob[:8])
    assert size % 8 == 0  # the header is padded so that the data is aligned


def test_safetensors_layout_is_the_format(tmp_path: Path) -> None:
    """The bytes are the format's: u64 LE header size, JSON header, raw little-endian data in order."""
    path = save_safetensors(
        {"w": torch.tensor([[1.0, 2.0]], dtype=torch.float32), "n": torch.tensor(3, dtype=torch.int64)},
        tmp_path / "m.safetensors",
    )
    blob = path.read_bytes()
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + size])
    assert header == {
        "w": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]},
        "n": {"dtype": "I64", "shape": [], "data_offsets": [8, 16]},
    }
    assert blob[8 + size :] == struct.pack("<2f", 1.0, 2.0) + struct.pack("<q", 3)


def _file(tmp_path: Path, header: object, data: bytes, *, size: int | None = None) -> Path:
    text = json.dumps(header).encode()
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(text) if size is None else size) + text + data)
    return path


def test_another_writers_file_reads(tmp_path: Path) -> None:
    """An unpadded header, metadata, and data in another order than the header's all read right."""
    header = {
        "__metadata__": {"format": "pt"},
        "b": {"dtype": "BF16", "shape": [1], "data_offsets": [4, 6]},
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
    }
    bf16 = torch.tensor([1.5], dtype=torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes()
    tensors, metadata = load_safetensors(_file(tmp_path, header, struct.pack("<f", 2.5) + bf16))
    assert metadata == {"format": "pt"}
    assert tensors["a"].tolist() == [2.5] and tensors["b"].tolist() == [1.5]


@pytest.mark.parametrize(
    ("header", "data", "why"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "do not match its shape"),
        ({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, "unsupported dtype"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "non-negative integers"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 4, "outside the data"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, "does not end"),
        (
            {
                "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            },
            b"\0" * 4,
            "overlap",
        ),
        ({"a": {"dtype": "BOOL", "shape": [1], "data_offsets": [0, 1]}}, b"\x02", "other than 0 or 1"),
        ({"a": {"dtype": "F32", "shape": [1]}}, b"", "exactly dtype, shape and data_offsets"),
        ([1, 2], b"", "not a JSON object"),
        ({"__metadata__": {"a": 1}}, b"", "__metadata__"),
    ],
)
def test_a_damaged_safetensors_file_is_refused(tmp_path: Path, header: object, data: bytes, why: str) -> None:
    """Each broken rule of the format is a SafetensorsError saying which."""
    with pytest.raises(SafetensorsError, match=why):
        load_safetensors(_file(tmp_path, header, data))


@pytest.mark.parametrize(
    "blob", [b"", b"\x01\x00", struct.pack("<Q", 10**9) + b"{}", struct.pack("<Q", 2) + b"[x"]
)
def test_a_truncated_or_garbled_safetensors_file_is_refused(tmp_path: Path, blob: bytes) -> None:
    """Too short for its header length, a length past the end, a header that is not JSON."""
    path = tmp_path / "x.safetensors"
    path.write_bytes(blob)
    with pytest.raises(SafetensorsError):
        load_safetensors(path)


@given(
    st.dictionaries(st.from_regex(r"[a-z][a-z0-9.]{0,8}", fullmatch=True), tensors(), min_size=1, max_size=4)
)
def test_saved_model_loads_back_equal_from_both_files(
    tmp_path_factory: pytest.TempPathFactory, params: dict[str, torch.Tensor]
) -> None:
    """save_model writes the codec and the safetensors file; both load back the same tensors."""
    folder = tmp_path_factory.mktemp("model")
    codec_path, st_path = save_model(params, folder)
    assert (codec_path.name, st_path.name) == ("model.mpk", "model.safetensors")
    for loaded in (load_model(codec_path), load_model(st_path)):
        assert list(loaded) == list(params)
        assert all(_same(params[k], loaded[k]) for k in params)


def test_load_model_refuses_what_is_not_a_model(tmp_path: Path) -> None:
    """A codec file of something else, or garbage, is a ValueError naming the file."""
    from fedpipe.codec import dump_file

    other = tmp_path / "other.mpk"
    dump_file({"a": 1}, other)
    garbage = tmp_path / "garbage.mpk"
    garbage.write_bytes(b"\xc1")
    for path in (other, garbage):
        with pytest.raises(ValueError, match=str(path)):
            load_model(path)


def _record(number: int, *, training: bool = True) -> RoundRecord:
    results = (
        NodeResult(node_id="a", success=True, sample_size=30),
        NodeResult(node_id="b", success=True, sample_size=10),
        NodeResult(node_id="c", success=False, msg="The dataset was not found."),
    )
    metrics = {
        "a": NodeMetrics(
            train_loss=0.2 if training else None, before=0.8, after=0.9 if training else None, test_samples=3
        ),
        "b": NodeMetrics(
            train_loss=0.6 if training else None, before=0.4, after=0.5 if training else None, test_samples=1
        ),
    }
    return RoundRecord(round=number, results=results, metrics=metrics, seconds=1.25, training=training)


def _result() -> ExperimentResult:
    return ExperimentResult(
        rounds=(_record(0), _record(1)),
        params={"w": torch.ones(2)},
        final=_record(2, training=False),
    )


def test_metrics_rows_are_per_round_and_node_then_the_aggregate() -> None:
    """Rounds from 1; the final validation is the last round's "final" phase; aggregates are weighted."""
    rows = metrics_rows(_result())
    assert [(r["round"], r["phase"], r["node"]) for r in rows] == [
        (n, phase, node)
        for n, phase in (("1", "train"), ("2", "train"), ("2", "final"))
        for node in ("a", "b", "c", "aggregate")
    ]
    first = rows[3]
    assert first["status"] == "2/3 ok" and first["samples"] == "40" and first["seconds"] == "1.250"
    assert float(first["train_loss"]) == pytest.approx((0.2 * 30 + 0.6 * 10) / 40)
    assert float(first["metric_global_model"]) == pytest.approx((0.8 * 3 + 0.4 * 1) / 4)
    failed = rows[2]
    assert failed["status"] == "failed" and failed["message"] == "The dataset was not found."
    final = rows[-1]
    assert final["train_loss"] == "" and final["metric_local_model"] == "" and final["samples"] == ""


def test_write_metrics_csv_has_the_documented_columns(tmp_path: Path) -> None:
    """The CSV's header is METRICS_COLUMNS and its rows are metrics_rows."""
    path = write_metrics_csv(_result(), tmp_path / "metrics.csv")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == METRICS_COLUMNS
        assert list(reader) == metrics_rows(_result())


def test_save_outputs_writes_every_file(tmp_path: Path) -> None:
    """Model (both formats), metrics and a PNG plot, into a folder it creates."""
    outputs = save_outputs(_result(), tmp_path / "out" / "deeper")
    assert outputs.plot is not None and outputs.plot.read_bytes().startswith(b"\x89PNG")
    assert load_model(outputs.model_safetensors)["w"].tolist() == [1.0, 1.0]
    assert outputs.metrics.is_file() and outputs.model_codec.is_file()
