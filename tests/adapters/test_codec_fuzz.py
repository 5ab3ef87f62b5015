"""Decoding untrusted bytes: total (a Result, never an exception), bounded in time and memory."""

import struct
import tracemalloc
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from returns.result import Failure, Result, Success

from fedpipe.codec import DEFAULT_LIMITS, DecodeError, Limits, _decode, dumps, loads
from tests.adapters.test_codec import array32, bin8, ext, fixstr, payloads

SEEDS = [
    dumps(
        {
            "w": torch.randn(3, 2),
            "b": np.arange(4, dtype=np.int16),
            "t": (1, "x", 2**70),
            "bf": torch.ones(2, dtype=torch.bfloat16),
        }
    ),
    dumps([np.float64(1.5), {"k": [None, True, -3, 2.5]}, -(2**90)]),
    dumps({i: [float(i)] * 20 for i in range(3)}),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.one_of(st.sampled_from(SEEDS), payloads.map(dumps))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(
                st.sampled_from([0x00, 0x7F, 0x80, 0x8F, 0x9F, 0xC1, 0xC6, 0xC7, 0xCB, 0xDD, 0xDF, 0xFF])
            )
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=5))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 5))]
        else:
            del data[i:]
    return bytes(data)


def traced(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[Result[Any, DecodeError], int]:
    """What decoding ``data`` gives, and the peak of what it allocates (as tracemalloc sees it)."""
    tracemalloc.start()
    try:
        result = loads(data, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


# A decoded value costs at most a bounded number of bytes per input byte (a 1-byte empty list is
# a 56-byte list object); no header can make the decoder allocate beyond that.
BYTES_PER_INPUT_BYTE = 160
SMALL = Limits(max_bytes=1 << 20, max_elements=20_000)


@pytest.mark.timeout(300)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_decoding_mutated_files_never_raises(data: bytes) -> None:
    loads(data, SMALL)


@pytest.mark.timeout(300)
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256))
def test_decoding_random_bytes_never_raises(data: bytes) -> None:
    loads(data, SMALL)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_decoding_allocates_in_proportion_to_the_input(data: bytes) -> None:
    _, peak = traced(data, SMALL)
    assert peak <= BYTES_PER_INPUT_BYTE * len(data) + 64 * 1024


HOSTILE = {
    "array claims 4G items": b"\xdd\xff\xff\xff\xff\x01",
    "map claims 4G entries": b"\xdf\xff\xff\xff\xff\x01\x01",
    "bin claims 4 GiB": b"\xc6\xff\xff\xff\xff\x00",
    "str claims 4 GiB": b"\xdb\xff\xff\xff\xff\x00",
    "ndarray shape lies": ext(
        "np.ndarray",
        b"\x93" + bin8(b"") + fixstr("float64") + b"\x92\xce\x7f\xff\xff\xff\xce\x7f\xff\xff\xff",
    ),
    "ndarray empty with absurd shape": ext(
        "np.ndarray",
        b"\x93"
        + bin8(b"")
        + fixstr("float64")
        + b"\x93\x00\xcf"
        + struct.pack(">Q", 2**61)
        + b"\xcf"
        + struct.pack(">Q", 2**61),
    ),
    "ndarray negative dim": ext("np.ndarray", b"\x93" + bin8(b"\x00" * 8) + fixstr("float64") + b"\x91\xff"),
    "ndarray bool dim": ext("np.ndarray", b"\x93" + bin8(b"\x00" * 8) + fixstr("float64") + b"\x91\xc3"),
    "ndarray object dtype": ext("np.ndarray", b"\x93" + bin8(b"\x00" * 8) + fixstr("object") + b"\x91\x01"),
    "ndarray pickle dtype": ext("np.ndarray", b"\x93" + bin8(b"\x00" * 8) + fixstr("O") + b"\x91\x01"),
    "ndarray bfloat16 outside fedpipe.tensor": ext(
        "np.ndarray", b"\x93" + bin8(b"\x00" * 2) + fixstr("bfloat16") + b"\x91\x01"
    ),
    "ndarray too many dims": ext(
        "np.ndarray", b"\x93" + bin8(b"\x00") + fixstr("uint8") + b"\xdc\x00\x40" + b"\x01" * 64
    ),
    "generic wrong size": ext("np.generic", b"\x92" + bin8(b"\x00" * 3) + fixstr("float32")),
    "tuple of a map": ext("tuple", b"\x80"),
    "int of a str": ext("int", fixstr("1")),
    "deep nesting": b"\x91" * 100_000 + b"\xc0",
    "msgpack ext type": b"\xd4\x01\x00",
    "timestamp ext": b"\xd6\xff\x00\x00\x00\x00",
    "reserved byte": b"\xc1",
    "bad utf-8": b"\xa2\xff\xfe",
    "unhashable key": b"\x81\x90\x01",
    "array as ext type": b"\x82" + fixstr("__type__") + b"\x92\x01\x02" + fixstr("value") + b"\x01",
    "trailing bytes": b"\x01\x02",
    "ends before the shape": ext("torch.Tensor", b"\x93" + bin8(b"\x00" * 4) + fixstr("float32")),
    "empty": b"",
}


@pytest.mark.parametrize("data", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_headers_fail_cleanly_without_large_allocations(data: bytes) -> None:
    result, peak = traced(data)
    if data == HOSTILE["array as ext type"]:
        assert result.unwrap() == {"__type__": [1, 2], "value": 1}
    else:
        assert result.failure().reason
    assert peak < 8 * 1024 * 1024


def test_int_size_and_element_limits_are_enforced() -> None:
    assert "integer" in loads(dumps(2**10_000), Limits(max_int_bytes=100)).failure().reason
    assert "elements" in loads(dumps(list(range(100))), Limits(max_elements=50)).failure().reason
    assert "elements" in loads(dumps([[1]] * 100), Limits(max_elements=50)).failure().reason
    assert "nesting" in loads(dumps([[[[1]]]]), Limits(max_depth=3)).failure().reason
    assert "string" in loads(dumps("x" * 100), Limits(max_str_bytes=10)).failure().reason
    assert "larger" in loads(dumps(b"x" * 100), Limits(max_bytes=10)).failure().reason


def test_dtype_allow_list_is_a_limit() -> None:
    only_ints = Limits(dtypes=frozenset({"int32"}))
    assert loads(dumps(np.zeros(2, dtype=np.int32)), only_ints).unwrap().tolist() == [0, 0]
    assert "dtype" in loads(dumps(np.zeros(2)), only_ints).failure().reason


def test_non_contiguous_memoryview_input_is_a_failure() -> None:
    view: Any = memoryview(bytes(range(10)))[::2]
    assert loads(view).failure().reason


# -- the memory bound --------------------------------------------------------------------------
#
# Decoding charges each value an upper bound of what it allocates and refuses the input once the
# charges would pass Limits.memory_bound. The law checked here, with tracemalloc (which sees
# Python's and numpy's allocations): an input whose decode peaks at P bytes is refused under any
# bound below P, less the decoder's own fixed working memory (its reader, the input's view, the
# result object), which no value is charged for and the bound's constant covers.
DECODER_OVERHEAD = 4096


def traced_peak(data: bytes) -> int:
    """The peak of what decoding ``data`` allocates, parsed afresh (no recorded layout)."""
    _decode._SKELETONS.clear()
    result, peak = traced(data)
    assert isinstance(result, Success), result
    return peak


def only(constant: int) -> Limits:
    """Limits whose memory bound is ``constant`` bytes whatever the input size."""
    return Limits(memory_factor=0, memory_constant=constant)


def assert_charges_cover_the_allocations(data: bytes) -> None:
    peak = traced_peak(data)
    if peak <= DECODER_OVERHEAD:
        return
    _decode._SKELETONS.clear()
    result = loads(data, only(peak - DECODER_OVERHEAD))
    assert isinstance(result, Failure), f"decoded within a bound below its peak of {peak} bytes"
    assert (
        result.failure().reason == f"decoded payload would exceed {peak - DECODER_OVERHEAD} bytes of memory"
    )


N = 20_000
SHAPES_OF_VALUES = {
    "empty maps": array32(N, b"\x80" * N),
    "empty lists": array32(N, b"\x90" * N),
    "nesting at the depth limit": array32(500, (b"\x91" * 63 + b"\xc0") * 500),
    "negative fixints": array32(N, b"\xe0" * N),
    "float64s (numpy's fast path)": dumps([i + 0.5 for i in range(N)]),
    "float64s and a str (one by one)": dumps([i + 0.5 for i in range(N)] + ["x"]),
    "float32s": array32(N, (b"\xca" + struct.pack(">f", 1.5)) * N),
    "ints of 16 to 64 bits": dumps([(i * 7919) ** (1 + i % 4) for i in range(1, N)]),
    "signed ints": dumps([-(i**3) for i in range(N)]),
    "ascii strs": dumps([f"s{i}" for i in range(N)]),
    "latin-1 strs": dumps([f"é{i}" for i in range(N)]),
    "ucs-4 strs": dumps([f"\U0001f600{i}" for i in range(N)]),
    "ucs-4 strs of ascii but one char": dumps([f"{'x' * 50}\U0001f600{i}" for i in range(N)]),
    "long strs": dumps(["x" * 1000 + str(i) for i in range(200)]),
    "str keys": dumps({f"k{i}": 1 for i in range(N)}),
    "int keys": dumps({i * 1000: None for i in range(N)}),
    "str then int keys": dumps({(i * 1000 if i % 2 else f"k{i}"): None for i in range(N)}),
    "long str keys": dumps({"k" * 40 + str(i): None for i in range(N)}),
    "bins": dumps([b"xyz" * (i % 30) for i in range(N)]),
    "big ints": dumps([2**200 + i for i in range(N // 10)] + [-(2**300)]),
    "tuples": dumps([(i, (i, "t")) for i in range(N // 10)]),
    "tuples of bytes": dumps([(b"b" * 500, i) for i in range(N // 10)]),
    "numpy scalars": dumps([np.float32(i) for i in range(N // 10)]),
    "numpy arrays in a list": dumps([np.arange(i % 7, dtype=np.int16) for i in range(N // 10)]),
    "numpy arrays in a map (the state-dict path)": dumps(
        {f"layer{i}": np.zeros((2, i % 5 + 1)) for i in range(N // 10)}
    ),
    "large numpy layers (one shared block)": dumps(
        {f"w{i}": np.ones(300_000, dtype=np.float32) for i in range(4)}
    ),
    "arrays written out of the reference's key order": array32(
        2000,
        (
            b"\x82"
            + fixstr("value")
            + b"\x93"
            + bin8(b"\x00" * 8)
            + fixstr("float64")
            + b"\x91\x01"
            + fixstr("__type__")
            + fixstr("np.ndarray")
        )
        * 2000,
    ),
    "records": dumps([{"id": i, "tags": ["a", "b"], "score": i / 3, "meta": {}} for i in range(N // 10)]),
    "unknown ext dicts": dumps([{"__type__": "other", "value": [i]} for i in range(N // 10)]),
}


@pytest.mark.parametrize("data", list(SHAPES_OF_VALUES.values()), ids=list(SHAPES_OF_VALUES))
def test_decoding_allocates_no_more_than_it_charges(data: bytes) -> None:
    assert_charges_cover_the_allocations(data)


many = st.recursive(
    st.one_of(
        st.none(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=40),
        st.binary(max_size=40),
        st.integers(min_value=-(2**300), max_value=2**300),
        hnp.arrays(np.int32, hnp.array_shapes(max_dims=2, max_side=5)),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=40),
        st.lists(inner, max_size=8).map(tuple),
        st.dictionaries(st.text(max_size=8), inner, max_size=16),
        st.dictionaries(st.integers(), inner, max_size=8),
    ),
    max_leaves=300,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(many)
def test_any_payload_allocates_no_more_than_it_charges(obj: Any) -> None:
    assert_charges_cover_the_allocations(dumps(obj))


def test_a_rebuilt_layout_allocates_no_more_than_the_parse_it_repeats() -> None:
    """So a rebuild, which is keyed by the input size and limits, stays within the memory bound
    that the parse enforced (and whose charges cover the parse's allocations, as above)."""
    wire = dumps(
        {f"layer{i}": np.zeros(20_000, dtype=np.float32) for i in range(6)} | {"meta": [(1.5, "xy")]}
    )
    parsed = traced_peak(wire)  # its layout recorded
    (skeleton,) = _decode._SKELETONS.values()
    rebuilt, peak = traced(wire)
    assert _decode._SKELETONS[len(wire), DEFAULT_LIMITS] is skeleton  # rebuilt from it, not parsed
    assert set(rebuilt.unwrap()) == {*(f"layer{i}" for i in range(6)), "meta"}
    assert peak <= parsed
    _decode._SKELETONS.clear()


def test_the_memory_bound_is_factor_times_input_plus_constant_and_named_when_passed() -> None:
    limits = Limits(memory_factor=3, memory_constant=1000)
    assert limits.memory_bound(100) == 1300
    assert DEFAULT_LIMITS.memory_bound(0) == 64 * 1024**2 and DEFAULT_LIMITS.memory_factor == 16
    data = b"\xdc\x00\x64" + b"\x80" * 100  # 100 empty maps: 64 bytes each, and the list
    assert loads(data, Limits(memory_factor=1000)).unwrap() == [{}] * 100
    reason = loads(data, Limits(memory_factor=16, memory_constant=0)).failure().reason
    assert reason == f"decoded payload would exceed {16 * len(data)} bytes of memory"
    with pytest.raises(ValueError, match="memory_factor"):
        Limits(memory_factor=-1)


def test_every_container_counts_as_an_element() -> None:
    assert loads(b"\x80", Limits(max_elements=1)).unwrap() == {}
    assert loads(b"\x90", Limits(max_elements=1)).unwrap() == []
    assert "elements" in loads(b"\x91\x80", Limits(max_elements=1)).failure().reason
    assert loads(b"\x81\xa1a\x80", Limits(max_elements=3)).unwrap() == {"a": {}}  # map, key, value
    assert "elements" in loads(b"\x81\xa1a\x80", Limits(max_elements=2)).failure().reason
    n = 1000
    for empty, decoded in ((b"\x80", {}), (b"\x90", [])):
        data = b"\xdc" + n.to_bytes(2, "big") + empty * n
        assert loads(data, Limits(max_elements=n + 1)).unwrap() == [decoded] * n
        assert "elements" in loads(data, Limits(max_elements=n)).failure().reason


def test_a_state_dict_is_charged_about_its_size() -> None:
    layers = {f"layer{i}.weight": torch.ones(250_000 + i) for i in range(8)}
    layers["step"] = torch.tensor(3)
    wire = dumps({"model_weights": layers, "sample_size": 12})
    nbytes = sum(t.numel() * t.element_size() for t in layers.values())
    # 4 KiB per layer for its objects, and the 1/16 of a bound left to the allocators
    enough = (nbytes + len(layers) * 4096 + 4096) * 16 // 15 + 1
    for _ in range(2):  # parsed, then rebuilt from the recorded layout
        assert loads(wire, only(enough)).unwrap()["model_weights"]["layer7.weight"].shape == (250_007,)
    assert "memory" in loads(wire, only(nbytes)).failure().reason
    _decode._SKELETONS.clear()
