"""Decoding untrusted bytes: total (a Result, never an exception), bounded in time and memory."""

import struct
import tracemalloc
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpipe.codec import Limits, dumps, loads
from tests.adapters.test_codec import bin8, ext, fixstr, payloads

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


def decode_with_peak(data: bytes, limits: Limits) -> int:
    tracemalloc.start()
    try:
        result = loads(data, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.__class__.__name__ in ("Success", "Failure")
    return peak


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
    assert decode_with_peak(data, SMALL) <= BYTES_PER_INPUT_BYTE * len(data) + 64 * 1024


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
    tracemalloc.start()
    try:
        result = loads(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
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
