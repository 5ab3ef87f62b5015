"""Codec: the reference's wire format byte for byte, fedpipe's extensions, and round-trip laws."""

import logging
import struct
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedpipe.codec import CodecError, DecodeError, Limits, _decode, dump_file, dumps, load_file, loads
from fedpipe.codec.dtypes import ALLOWED_DTYPES


def fixstr(text: str) -> bytes:
    raw = text.encode()
    assert len(raw) < 32
    return bytes([0xA0 | len(raw)]) + raw


def ext(kind: str, value: bytes) -> bytes:
    """An extension dict as the reference's msgpack writes it: {"__type__": kind, "value": ...}."""
    return b"\x82" + fixstr("__type__") + fixstr(kind) + fixstr("value") + value


def bin8(raw: bytes) -> bytes:
    return b"\xc4" + bytes([len(raw)]) + raw


def array32(n: int, items: bytes) -> bytes:
    """An array32 header for ``n`` items, then ``items``: their msgpack bytes."""
    return b"\xdd" + n.to_bytes(4, "big") + items


# -- golden bytes, written by hand from the documented format -------------------------------------

GOLDEN: list[tuple[str, Any, bytes]] = [
    ("tuple", (1, "a"), ext("tuple", b"\x92\x01" + fixstr("a"))),
    ("big int", 2**64, ext("int", bin8(b"\x00\x01" + b"\x00" * 8))),
    (
        "float32 array",
        np.array([[1.0, 2.0]], dtype=np.float32),
        ext("np.ndarray", b"\x93" + bin8(struct.pack("<2f", 1.0, 2.0)) + fixstr("float32") + b"\x92\x01\x02"),
    ),
    (
        "int64 0-d array",
        np.array(-2, dtype=np.int64),
        ext("np.ndarray", b"\x93" + bin8(struct.pack("<q", -2)) + fixstr("int64") + b"\x90"),
    ),
    (
        "numpy scalar",
        np.float64(0.5),
        ext("np.generic", b"\x92" + bin8(struct.pack("<d", 0.5)) + fixstr("float64")),
    ),
    (
        "torch tensor",
        torch.tensor([3, 4], dtype=torch.int32),
        ext("torch.Tensor", b"\x93" + bin8(struct.pack("<2i", 3, 4)) + fixstr("int32") + b"\x91\x02"),
    ),
    (
        "bfloat16 tensor",
        torch.tensor([1.0, -2.0], dtype=torch.bfloat16),
        ext("fedpipe.tensor", b"\x93" + bin8(b"\x80\x3f\x00\xc0") + fixstr("bfloat16") + b"\x91\x02"),
    ),
    (
        "negative big int",
        -(2**64),
        ext("int", bin8(b"\xff\xff" + b"\x00" * 8)),
    ),
    (
        "nested",
        {"k": [None, True, 1.5]},
        b"\x81" + fixstr("k") + b"\x93\xc0\xc3\xcb" + struct.pack(">d", 1.5),
    ),
]


def same(a: Any, b: Any) -> bool:
    """Structural identity: same types, dtypes, shapes and bytes (NaN-safe)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(
                a.view(-1).view(torch.uint8) if a.numel() else a,
                b.view(-1).view(torch.uint8) if b.numel() else b,
            )
        )
    if isinstance(a, np.ndarray | np.generic):
        return (
            a.dtype == b.dtype
            and np.shape(a) == np.shape(b)
            and np.asarray(a).tobytes() == np.asarray(b).tobytes()
        )
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize(("name", "obj", "wire"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_bytes_encode(name: str, obj: Any, wire: bytes) -> None:
    assert dumps(obj) == wire


@pytest.mark.parametrize(("name", "obj", "wire"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_bytes_decode(name: str, obj: Any, wire: bytes) -> None:
    assert same(loads(wire).unwrap(), obj)


# -- the reference's (de)serializer, rebuilt from its documented behaviour (§9.1) ---------------
# Big ints as Fed-BioMed 6.4.1 writes and reads them (signed, ceil(bits/8) + 1 bytes), the form
# fedpipe now writes; v4.5's unsigned form is read too (tests/properties/test_codec_bigints.py).


def reference_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"__type__": "np.ndarray", "value": [obj.tobytes(), obj.dtype.name, list(obj.shape)]}
    if isinstance(obj, np.generic):
        return {"__type__": "np.generic", "value": [obj.tobytes(), obj.dtype.name]}
    if isinstance(obj, torch.Tensor):
        arr = obj.cpu().numpy()
        return {"__type__": "torch.Tensor", "value": [arr.tobytes(), arr.dtype.name, list(arr.shape)]}
    if isinstance(obj, tuple):
        return {"__type__": "tuple", "value": list(obj)}
    if isinstance(obj, int):
        return {"__type__": "int", "value": obj.to_bytes((obj.bit_length() + 7) // 8 + 1, "big", signed=True)}
    raise TypeError(type(obj))


def reference_hook(obj: dict[Any, Any]) -> Any:
    kind = obj.get("__type__")
    if kind == "np.ndarray":
        data, dtype, shape = obj["value"]
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    if kind == "torch.Tensor":
        data, dtype, shape = obj["value"]
        return torch.from_numpy(np.frombuffer(data, dtype=dtype).reshape(shape).copy())
    if kind == "np.generic":
        data, dtype = obj["value"]
        return np.frombuffer(data, dtype=dtype)[0]
    if kind == "tuple":
        return tuple(obj["value"])
    if kind == "int":
        return int.from_bytes(obj["value"], "big", signed=True)
    return obj  # unknown __type__: kept as a dict


def reference_dumps(obj: Any) -> bytes:
    return msgpack.packb(obj, default=reference_default, strict_types=True, use_bin_type=True)


def reference_loads(data: bytes) -> Any:
    return msgpack.unpackb(data, object_hook=reference_hook, strict_map_key=False)


REFERENCE_PAYLOAD = {
    "researcher_id": "r1",
    "model_weights": {"fc.weight": torch.randn(4, 3), "fc.bias": torch.zeros(4, dtype=torch.float64)},
    "optim_aux_var": {"scaffold": {"n": (1, 2.0), "mask": np.array([True, False])}},
    "sample_size": 12,
    3: np.int64(7),
    "big": 2**100,
    "negative big": -(2**100),
    "large": np.arange(70_000, dtype=np.float32),  # over the threshold where arrays are walked
}


def test_reference_files_are_read_identically() -> None:
    ours = loads(reference_dumps(REFERENCE_PAYLOAD)).unwrap()
    assert same(ours, reference_loads(reference_dumps(REFERENCE_PAYLOAD)))


def test_our_files_are_byte_identical_to_the_reference_for_reference_types() -> None:
    assert dumps(REFERENCE_PAYLOAD) == reference_dumps(REFERENCE_PAYLOAD)


def test_reference_decoder_keeps_fedpipe_extensions_as_dicts_and_reads_negative_big_ints() -> None:
    decoded = reference_loads(dumps({"bf": torch.ones(2, dtype=torch.bfloat16), "neg": -(2**70)}))
    assert decoded["bf"]["__type__"] == "fedpipe.tensor"
    assert decoded["neg"] == -(2**70)


def test_unknown_extension_type_is_kept_as_a_dict_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    wire = reference_dumps([{"__type__": "toto", "value": "mock"}] * 3)
    with caplog.at_level(logging.WARNING, logger="fedpipe.codec"):
        assert loads(wire).unwrap() == [{"__type__": "toto", "value": "mock"}] * 3
    assert len(caplog.records) == 1
    assert "toto" in caplog.records[0].getMessage()


@pytest.mark.parametrize("spelling", ["float32", "<float32", "<f4"])
def test_explicit_little_endian_spellings_are_accepted(spelling: str) -> None:
    wire = ext("np.ndarray", b"\x93" + bin8(struct.pack("<f", 2.5)) + fixstr(spelling) + b"\x91\x01")
    assert loads(wire).unwrap().tolist() == [2.5]


@pytest.mark.parametrize("spelling", [">float32", ">f4"])
def test_big_endian_arrays_decode_to_native_order(spelling: str) -> None:
    wire = ext("np.ndarray", b"\x93" + bin8(struct.pack(">f", 2.5)) + fixstr(spelling) + b"\x91\x01")
    arr = loads(wire).unwrap()
    assert arr.tolist() == [2.5]
    assert arr.dtype.isnative


def test_big_endian_arrays_are_written_little_endian_under_the_plain_name() -> None:
    assert dumps(np.array([1], dtype=">i4")) == dumps(np.array([1], dtype="<i4"))


def test_subclasses_of_native_types_are_encoded_as_their_base() -> None:
    import enum

    class Color(enum.IntEnum):
        RED = 1

    class Name(enum.StrEnum):
        A = "a"

    obj = OrderedDict([("c", Color.RED), ("n", Name.A)])
    assert loads(dumps(obj)).unwrap() == {"c": 1, "n": "a"}
    assert type(loads(dumps(obj)).unwrap()["n"]) is str


@pytest.mark.parametrize(
    "obj",
    [object(), {1, 2}, np.array(["x"]), np.array([object()]), torch.zeros(2, dtype=torch.float8_e4m3fn)],
)
def test_unsupported_objects_raise_codec_error(obj: Any) -> None:
    with pytest.raises(CodecError):
        dumps(obj)


def test_decoded_arrays_and_tensors_are_writable_copies() -> None:
    wire = dumps({"a": np.zeros(3), "t": torch.zeros(100_000)})
    out = loads(wire).unwrap()
    out["a"][0] = 1.0
    out["t"][0] = 1.0
    assert out["a"].flags.writeable
    assert out["a"].flags.aligned


def test_tensors_requiring_grad_or_non_contiguous_are_encoded() -> None:
    t = torch.randn(3, 4, requires_grad=True)
    out = loads(dumps({"w": t, "wt": t.detach().T})).unwrap()
    assert torch.equal(out["w"], t.detach())
    assert torch.equal(out["wt"], t.detach().T)


def test_file_roundtrip_is_atomic_and_leaves_no_temporary(tmp_path: Any) -> None:
    obj = {"w": torch.randn(50_000), "tt": ((1, 2), (3,))}
    dump_file(obj, tmp_path / "p.mpk")
    assert same(load_file(tmp_path / "p.mpk").unwrap(), obj)
    with pytest.raises(CodecError):
        dump_file({"bad": object()}, tmp_path / "q.mpk")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.mpk"]


def test_load_file_failures_are_values(tmp_path: Any) -> None:
    assert isinstance(load_file(tmp_path / "missing").failure(), DecodeError)
    (tmp_path / "big").write_bytes(b"\x00" * 100)
    assert "larger" in load_file(tmp_path / "big", Limits(max_bytes=10)).failure().reason


# -- round-trip law ---------------------------------------------------------------------------

NUMPY_DTYPES = sorted(ALLOWED_DTYPES - {"bfloat16"})
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def numpy_arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(NUMPY_DTYPES)))
    return draw(hnp.arrays(dtype, SHAPES))


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    if draw(st.booleans()):
        return torch.from_numpy(draw(hnp.arrays(np.float32, SHAPES))).to(torch.bfloat16)
    arr = draw(numpy_arrays())
    return torch.from_numpy(arr.copy())


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.binary(max_size=8),
    numpy_arrays().map(lambda a: a.reshape(-1)[0] if a.size else np.float32(0)),
)
leaves = st.one_of(scalars, numpy_arrays(), tensors())
keys = st.one_of(st.text(max_size=6), st.integers(min_value=-5, max_value=2**70))
payloads = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(keys, inner, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(payloads)
def test_codec_roundtrip(obj: Any) -> None:
    assert same(loads(dumps(obj)).unwrap(), obj)


@settings(max_examples=30, deadline=None)
@given(payloads)
def test_file_codec_roundtrip(tmp_path_factory: Any, obj: Any) -> None:
    path = tmp_path_factory.mktemp("rt") / "x.mpk"
    dump_file(obj, path)
    assert same(load_file(path).unwrap(), obj)


def test_large_homogeneous_lists_roundtrip() -> None:
    obj = {
        "floats": [float(i) / 3 for i in range(1000)],
        "ints": list(range(100)) * 10,
        "mixed": [1, 2.5] * 20,
    }
    assert same(loads(dumps(obj)).unwrap(), obj)


def test_dump_file_on_a_full_disk_raises_oserror_and_leaves_nothing(tmp_path: Any) -> None:
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import resource, signal
        from pathlib import Path
        import numpy as np
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        from fedpipe.codec import dump_file
        try:
            dump_file({{"w": np.zeros(1_000_000)}}, Path({str(tmp_path / "state.mpk")!r}))
        except OSError as err:
            print("OSError", err.errno)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.split()[0] == "OSError", out.stderr
    assert list(tmp_path.iterdir()) == []


# -- large buffers: the fast paths for state dicts ------------------------------------------------

TORCH_DTYPES = [getattr(torch, name) for name in sorted(ALLOWED_DTYPES)]


@st.composite
def large_tensors(draw: st.DrawFn) -> Any:
    """A tensor or array over the size where the encoder passes memory through (64 KiB), of any
    allowed dtype and 1 to 3 dims, sometimes non-contiguous or requiring grad."""
    dtype = draw(st.sampled_from(TORCH_DTYPES))
    dims = draw(st.lists(st.integers(1, 40), min_size=0, max_size=2))
    lead = -(-70_000 // max(1, int(np.prod(dims)) * torch.empty(0, dtype=dtype).element_size()))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    base = torch.randint(0, 100, (lead, *dims), generator=gen).to(dtype)
    if draw(st.booleans()) and base.dim() > 1:
        base = base.transpose(0, -1)  # non-contiguous
    if dtype.is_floating_point and draw(st.booleans()):
        base = base.requires_grad_()
    if dtype != torch.bfloat16 and draw(st.booleans()):
        return base.detach().numpy()
    return base


large_payloads = st.one_of(
    st.dictionaries(st.text(min_size=1, max_size=8), large_tensors(), min_size=1, max_size=4),
    st.lists(large_tensors(), max_size=3),
    st.tuples(large_tensors(), st.integers(min_value=-(2**63), max_value=2**64 - 1)),
    st.dictionaries(
        st.sampled_from(["model_weights", "aux"]),
        st.dictionaries(st.text(max_size=5), large_tensors(), max_size=3),
    ),
)


def expected(obj: Any) -> Any:
    """What decoding gives back: tensors detached, arrays and tensors contiguous."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().contiguous()
    if isinstance(obj, np.ndarray):
        return np.ascontiguousarray(obj)
    if isinstance(obj, dict):
        return {k: expected(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(expected(v) for v in obj)
    return obj


@settings(max_examples=40, deadline=None)
@given(large_payloads)
def test_large_buffers_roundtrip_through_bytes_and_files(tmp_path_factory: Any, obj: Any) -> None:
    assert same(loads(dumps(obj)).unwrap(), expected(obj))
    path = tmp_path_factory.mktemp("large") / "p.mpk"
    dump_file(obj, path)
    assert same(load_file(path).unwrap(), expected(obj))


def _reference_typed(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return obj.dtype != torch.bfloat16
    if isinstance(obj, dict):
        return all(_reference_typed(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return all(_reference_typed(v) for v in obj)
    return True


@settings(max_examples=25, deadline=None)
@given(large_payloads.filter(_reference_typed))
def test_large_buffers_are_written_byte_for_byte_as_the_reference_writes_them(obj: Any) -> None:
    assert dumps(obj) == reference_dumps(expected(obj))


def test_a_decoded_state_dict_is_made_of_independent_writable_tensors() -> None:
    # over 4 MiB of layers of at least 64 KiB: decoded into one shared block (see _materialize)
    state: dict[str, Any] = {f"layer{i}.weight": torch.randn(300_000) for i in range(4)}
    state["conv.weight"] = torch.randn(64, 3, 7, 7, dtype=torch.float64)
    state["embed.weight"] = torch.randn(600, 500).to(torch.bfloat16)
    state["table"] = np.arange(20_000, dtype=np.int64).reshape(100, 200)
    state["bias"] = torch.randn(3)
    out = loads(dumps({"model_weights": state})).unwrap()["model_weights"]
    assert same(out, state)
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v.copy() for k, v in out.items()}
    out["layer1.weight"].fill_(7.0)
    out["embed.weight"].fill_(-1.0)
    out["table"][:] = 0
    out["bias"].zero_()
    for name, value in out.items():
        if name not in ("layer1.weight", "embed.weight", "table", "bias"):
            assert same(value, before[name]), name
    assert bool((out["layer1.weight"] == 7.0).all()) and bool((out["embed.weight"] == -1.0).all())
    assert all(t.data_ptr() % 16 == 0 for t in out.values() if isinstance(t, torch.Tensor))
    assert out["table"].flags.aligned and out["table"].flags.writeable


def test_a_duplicate_key_keeps_the_last_value_also_for_buffers() -> None:
    tensor = dumps(torch.arange(20_000, dtype=torch.float32))  # over 64 KiB: the fast path
    first_tensor = b"\x82" + fixstr("a") + tensor + fixstr("a") + b"\x05"
    last_tensor = b"\x82" + fixstr("a") + b"\x05" + fixstr("a") + tensor
    assert loads(first_tensor).unwrap() == {"a": 5}
    assert torch.equal(loads(last_tensor).unwrap()["a"], torch.arange(20_000, dtype=torch.float32))


def test_every_cut_and_header_byte_change_of_a_large_payload_fails_cleanly() -> None:
    wire = dumps({"w": torch.ones(20_000), "b": torch.zeros(20_000, dtype=torch.bfloat16), "n": 3})
    ones = torch.ones(20_000).numpy().tobytes()
    payload = [(wire.find(ones), len(ones)), (wire.find(bytes(40_000)), 40_000)]
    headers = [i for i in range(len(wire)) if not any(p <= i < p + n for p, n in payload)]
    assert len(headers) < 200
    for i in headers:
        assert loads(wire[:i]).failure().reason
        for value in (0x00, 0x7F, 0x91, 0xA5, 0xC6, 0xCE, 0xFF):
            mutated = bytearray(wire)
            mutated[i] = value
            result = loads(bytes(mutated))  # a Result either way, never an exception
            assert result.__class__.__name__ in ("Success", "Failure")


def test_unusual_large_tensors_in_a_state_dict_take_the_general_path() -> None:
    z = torch.randn(20_000, dtype=torch.complex64)
    state = {"conj": z.conj(), "neg": z._neg_view(), "t": torch.randn(300, 300).T}
    out = loads(dumps(state)).unwrap()
    assert torch.equal(out["conj"], z.conj().resolve_conj())
    assert torch.equal(out["neg"], -z)
    assert torch.equal(out["t"], state["t"].contiguous())
    with pytest.raises(CodecError):
        dumps({"sparse": torch.eye(200).to_sparse()})


# -- skeletons: a repeated layout is rebuilt, not parsed again -------------------------------------


@pytest.fixture
def no_skeletons() -> Any:
    _decode._SKELETONS.clear()
    yield _decode._SKELETONS
    _decode._SKELETONS.clear()


def flipped(layer: Any) -> Any:
    """``layer`` with other values: its bits flipped (bools negated)."""
    if isinstance(layer, np.ndarray):
        arr = np.ascontiguousarray(layer).copy()
        if arr.dtype == np.bool_:
            return ~arr
        flat = arr.reshape(-1).view(np.uint8)
        flat ^= 0x01
        return arr
    tensor = layer.detach().contiguous().clone()
    if tensor.dtype == torch.bool:
        return ~tensor
    flat_t = tensor.reshape(-1).view(torch.uint8)
    flat_t ^= 0x01
    return tensor


@st.composite
def same_layout_pairs(draw: st.DrawFn) -> tuple[Any, Any]:
    """Two payloads of one layout (keys, dtypes, shapes, metadata) whose buffers hold other values."""
    names = draw(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=4, unique=True))
    layers = [draw(large_tensors()) for _ in names]
    meta = draw(
        st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=3) | st.none(), max_size=3)
    )

    def payload(offset: int) -> Any:
        weights = {
            name: flipped(layer) if offset else layer for name, layer in zip(names, layers, strict=True)
        }
        return {"model_weights": weights, "meta": dict(meta), "round": (offset, [None, 1.5])}

    return payload(0), payload(1)


@settings(max_examples=30, deadline=None)
@given(same_layout_pairs())
def test_a_repeated_layout_decodes_as_a_fresh_parse_does(pair: tuple[Any, Any]) -> None:
    first, second = pair
    _decode._SKELETONS.clear()
    wire_first, wire_second = dumps(first), dumps(second)
    assert len(wire_first) == len(wire_second)
    out_first = loads(wire_first).unwrap()
    assert _decode._SKELETONS, "the first decode records the layout"
    out_second = loads(wire_second).unwrap()  # rebuilt from the record
    assert same(out_first, expected(first))
    assert same(out_second, expected(second))
    # fresh containers every time: changing one result leaves the other and the record alone
    out_first["meta"]["added"] = 1
    out_first["round"][1].append(2)
    out_third = loads(wire_second).unwrap()
    assert same(out_third, expected(second))


def test_a_same_size_input_with_other_keys_dtypes_or_shapes_is_parsed_again(no_skeletons: Any) -> None:
    base = {"layer0": torch.arange(40_000, dtype=torch.float32).reshape(2, 20_000), "n": 1}
    variants = [
        {"layer1": torch.arange(40_000, dtype=torch.float32).reshape(2, 20_000), "n": 1},
        {"layer0": torch.arange(80_000, dtype=torch.float16).reshape(4, 20_000), "n": 1},
        {"layer0": torch.arange(40_000, dtype=torch.float32).reshape(20_000, 2), "n": 1},
        {"layer0": torch.arange(40_000, dtype=torch.float32).reshape(2, 20_000), "n": 2},
    ]
    wire = dumps(base)
    assert same(loads(wire).unwrap(), base)
    for variant in variants:
        other = dumps(variant)
        assert len(other) == len(wire)
        assert same(loads(other).unwrap(), variant)
        assert same(loads(wire).unwrap(), base)


def test_a_recorded_layout_is_still_checked_against_other_limits(no_skeletons: Any) -> None:
    wire = dumps({f"l{i}": torch.zeros(20_000) for i in range(3)})
    assert loads(wire).unwrap()["l2"].shape == (20_000,)
    assert "elements" in loads(wire, Limits(max_elements=10)).failure().reason
    assert "dtype not allowed" in loads(wire, Limits(dtypes=frozenset({"int32"}))).failure().reason
    assert "nesting" in loads(wire, Limits(max_depth=1)).failure().reason
    assert loads(wire).unwrap()["l0"].shape == (20_000,)


def test_payload_bytes_of_a_recorded_layout_may_be_anything(no_skeletons: Any) -> None:
    wire = dumps({"w": torch.zeros(20_000), "b": torch.zeros(40_000, dtype=torch.bfloat16)})
    assert loads(wire).unwrap()["w"].shape == (20_000,)
    noise = np.random.default_rng(0).integers(0, 256, 80_000, dtype=np.uint8).tobytes()
    mutated = bytearray(wire)
    start = wire.find(bytes(80_000))
    mutated[start : start + 80_000] = noise
    out = loads(bytes(mutated)).unwrap()
    assert out["w"].numpy().tobytes() == noise


def test_skeletons_are_bounded_in_number_and_size(no_skeletons: Any) -> None:
    for i in range(40):
        loads(dumps({"w": torch.zeros(20_000 + i), "note": "x" * (i * 4096)})).unwrap()
    assert 0 < len(no_skeletons) <= 16
    assert all(sum(len(seg) for _, seg in s.segments) <= 64 * 1024 for s in no_skeletons.values())
    many = dumps({"w": torch.zeros(20_000), "many": [None] * 5_000})  # over 4096 elements
    loads(many).unwrap()
    assert all(size != len(many) for size, _ in no_skeletons)


def test_decoding_from_many_threads_gives_each_its_own_result(no_skeletons: Any) -> None:
    layouts = [
        dumps({"a": torch.full((20_000,), float(i)), "k": i})
        if i % 2
        else dumps({"b": torch.full((20_000,), i), "k": i})
        for i in range(8)
    ]
    sizes = {len(w) for w in layouts}
    assert len(sizes) <= 2  # same sizes, other layouts: the threads race on one slot

    def work(i: int) -> bool:
        for _ in range(30):
            out = loads(layouts[i]).unwrap()
            key = "a" if i % 2 else "b"
            if out["k"] != i or not bool((out[key] == i).all()):
                return False
        return True

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(work, range(8)))


def test_a_failed_encode_leaves_nothing_behind_for_the_next_one() -> None:
    for bad in ({"a": [1, 2, object()]}, {"a": (1, {2, 3})}, [np.array(["x"])]):
        with pytest.raises(CodecError):
            dumps(bad)
        assert dumps({"b": (1, [2.5])}) == reference_dumps({"b": (1, [2.5])})


def test_encoding_from_many_threads_gives_each_its_own_bytes() -> None:
    payloads = [
        {"meta": {"round": i, "ids": tuple(range(i)), "x": np.float32(i)}, "w": torch.full((5,), float(i))}
        for i in range(8)
    ]
    expected_wires = [dumps(p) for p in payloads]

    def work(i: int) -> bool:
        return all(dumps(payloads[i]) == expected_wires[i] for _ in range(200))

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(work, range(8)))
    assert [loads(w).unwrap()["meta"]["round"] for w in expected_wires] == list(range(8))


def test_arrays_outside_maps_are_fresh_on_every_decode(no_skeletons: Any) -> None:
    wire = dumps({"w": torch.zeros(20_000), "l": [np.zeros(3), torch.zeros(2)], "s": np.float32(1.5)})
    first = loads(wire).unwrap()
    first["l"][0][:] = 7.0
    first["l"][1].fill_(7.0)
    again = loads(wire).unwrap()
    assert not again["l"][0].any() and not bool(again["l"][1].any())
    assert again["l"][0] is not first["l"][0] and again["s"] == np.float32(1.5)
