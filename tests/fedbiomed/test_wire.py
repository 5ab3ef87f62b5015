"""Fed-BioMed 6.4.1's protobuf messages by hand: byte-exact with its generated classes, total decoding, chunking.

The hex vectors were made once with the real ``researcher_pb2`` of fedbiomed 6.4.1 (protobuf
7.36 / upb, ``SerializeToString(deterministic=True)``); the decoding cases record what upb's
parser made of each input (accepted with these values, or refused as corrupt).
"""

import math
import struct

import pytest
from attrs import evolve
from hypothesis import given, settings
from hypothesis import strategies as st
from returns.result import Failure, Success

from fedpipe.fedbiomed.wire import (
    CHUNK_BYTES,
    PROTOCOL_VERSION,
    Chunk,
    LogFeedback,
    Reassembler,
    ScalarFeedback,
    decode_chunk,
    decode_feedback,
    decode_task_request,
    encode_chunk,
    encode_feedback,
    encode_task_request,
    iter_chunks,
    split_message,
)


def scalar(**changes: object) -> ScalarFeedback:
    fields: dict[str, object] = {
        "node_id": "",
        "experiment_id": "",
        "train": False,
        "test": False,
        "test_on_local_updates": False,
        "test_on_global_updates": False,
        "metric": {},
        "epoch": None,
        "total_samples": 0,
        "batch_samples": 0,
        "num_batches": 0,
        "num_samples_trained": None,
        "iteration": 0,
        "node_name": "",
    }
    fields.update(changes)
    return ScalarFeedback(**fields)  # type: ignore[arg-type]


TRAINING = scalar(
    node_id="NODE_8a1b",
    node_name="node-a",
    experiment_id="exp-1",
    train=True,
    metric={"Loss": 0.6931471824645996},
    epoch=1,
    total_samples=320,
    batch_samples=48,
    num_batches=7,
    iteration=3,
)
VALIDATION = scalar(
    node_id="NODE_8a1b",
    node_name="node-a",
    experiment_id="exp-1",
    test=True,
    test_on_local_updates=True,
    test_on_global_updates=True,
    metric={"ACCURACY": 0.9, "F1_SCORE": 0.875, "AUC": 1.0},
    total_samples=64,
    batch_samples=64,
    num_batches=1,
    iteration=1,
    num_samples_trained=0,
)
LOG = LogFeedback(node_id="NODE_8a1b", level="INFO", msg='{"message": "Encryption was completed!"}')

TASK_REQUESTS = [
    (("NODE_8a1b", "7"), "0a094e4f44455f38613162120137"),
    (("nœud-é", ""), "0a086ec59375642dc3a9"),
    (("", ""), ""),
]
CHUNKS = [
    (Chunk(size=1, iteration=1, data=b"\x00\x01abc"), "080110011a050001616263"),
    (Chunk(size=2, iteration=2, data=b""), "08021002"),
    (Chunk(size=-1, iteration=0, data=b"z"), "08ffffffffffffffffff011a017a"),
    (
        Chunk(size=2**31 - 1, iteration=-(2**31), data=b"x" * 200),
        "08ffffffff071080808080f8ffffffff011ac801" + "78" * 200,
    ),
]
FEEDBACK = [
    (
        (TRAINING, "RESEARCHER_42"),
        "0a0137120d524553454152434845525f34321a340a094e4f44455f3861316212056578702d3118013a0b0a044c6f7373"
        "151872313f400148c00250305807680372066e6f64652d61",
    ),
    (
        (VALIDATION, "RESEARCHER_42"),
        "0a0137120d524553454152434845525f34321a580a094e4f44455f3861316212056578702d312001280130013a0f0a08"
        "4143435552414359156666663f3a0a0a03415543150000803f3a0f0a0846315f53434f5245150000603f48405040580160"
        "00680172066e6f64652d61",
    ),
    (
        (LOG, "RESEARCHER_42"),
        "0a0137120d524553454152434845525f3432223b0a094e4f44455f386131621204494e464f1a287b226d657373616765"
        "223a2022456e6372797074696f6e2077617320636f6d706c6574656421227d",
    ),
    ((scalar(), None), "0a01371a00"),
]
# protocol version "" and researcher id "": an empty optional is still written
EMPTY_LOG_HEX = "12002200"
# the corners: optional zeros written, negative int32 in ten bytes, float32 overflow to
# infinity, -0.0, the empty key (protobuf's order puts it last)
CORNERS_HEX = (
    "0a01371a433a0a0a03626967150000807f3a0a0a036e656715000080ff3a080a017a15000000803a090a02c3a91500"
    "0020403a070a001500000000400068fbffffffffffffffff01"
)


@pytest.mark.parametrize(("fields", "hexed"), TASK_REQUESTS)
def test_task_request_matches_fedbiomed(fields: tuple[str, str], hexed: str) -> None:
    assert encode_task_request(*fields).hex() == hexed
    assert decode_task_request(bytes.fromhex(hexed)) == Success(fields)


def test_task_request_defaults_to_protocol_7() -> None:
    assert PROTOCOL_VERSION == "7"
    assert encode_task_request("NODE_8a1b").hex() == TASK_REQUESTS[0][1]


@pytest.mark.parametrize(("chunk", "hexed"), CHUNKS)
def test_chunk_matches_fedbiomed(chunk: Chunk, hexed: str) -> None:
    assert encode_chunk(chunk).hex() == hexed
    assert decode_chunk(bytes.fromhex(hexed)) == Success(chunk)


@pytest.mark.parametrize(("given_", "hexed"), FEEDBACK)
def test_feedback_matches_fedbiomed(
    given_: tuple[ScalarFeedback | LogFeedback, str | None], hexed: str
) -> None:
    item, researcher_id = given_
    assert encode_feedback(item, researcher_id).hex() == hexed
    decoded = decode_feedback(bytes.fromhex(hexed)).unwrap()
    assert decoded[0] == researcher_id
    if isinstance(item, ScalarFeedback):  # the metric comes back as float32
        assert decoded[1] == evolve(item, metric={k: _f32(v) for k, v in item.metric.items()})
    else:
        assert decoded[1] == item


def test_empty_optionals_are_written() -> None:
    assert (
        encode_feedback(LogFeedback(node_id="", level="", msg=""), "", protocol_version="").hex()
        == EMPTY_LOG_HEX
    )
    assert decode_feedback(bytes.fromhex(EMPTY_LOG_HEX)) == Success(
        ("", LogFeedback(node_id="", level="", msg=""))
    )


def test_corner_values_match_fedbiomed() -> None:
    item = scalar(epoch=0, iteration=-5, metric={"": 0.0, "big": 1e39, "neg": -1e39, "z": -0.0, "é": 2.5})
    assert encode_feedback(item, None).hex() == CORNERS_HEX
    _, back = decode_feedback(bytes.fromhex(CORNERS_HEX)).unwrap()
    assert isinstance(back, ScalarFeedback)
    assert back.epoch == 0 and back.iteration == -5
    assert back.metric == {"": 0.0, "big": math.inf, "neg": -math.inf, "z": 0.0, "é": 2.5}
    assert math.copysign(1.0, back.metric["z"]) == -1.0


def test_nan_metric_is_written_as_protobuf_writes_it() -> None:
    assert encode_feedback(scalar(metric={"x": math.nan}), None).hex() == "0a01371a0a3a080a0178150000c07f"


def test_out_of_range_values_are_refused_when_encoding() -> None:
    with pytest.raises(ValueError, match="int32"):
        encode_feedback(scalar(total_samples=2**31), None)
    with pytest.raises(ValueError, match="int32"):
        encode_chunk(Chunk(size=True, iteration=1, data=b""))
    with pytest.raises(ValueError):
        encode_feedback(LogFeedback(node_id="\ud800", level="", msg=""), None)


def _f32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


# --- decoding as upb decodes ------------------------------------------------------------------

CHUNK_DECODING = [
    ("08010803100110021a01611a0162", Chunk(size=3, iteration=2, data=b"b")),  # the last value wins
    (
        "20052901020304050607082d01020304320178080210011a0161",
        Chunk(size=2, iteration=1, data=b"a"),
    ),  # unknown
    ("2308012b2c2408021002", Chunk(size=2, iteration=2, data=b"")),  # an unknown group, nested, skipped
    ("0a01781d00000000180108031003", Chunk(size=3, iteration=3, data=b"")),  # wrong wire type: unknown
    ("08818080801010ffffffff0f", Chunk(size=1, iteration=-1, data=b"")),  # int32 keeps the low 32 bits
    ("08ffffffffffffffffff7f", Chunk(size=-1, iteration=0, data=b"")),  # ten bytes, bits past 64 dropped
]
CORRUPT = [
    "08ffffffffffffffffffff01",  # an eleven-byte varint
    "0880",  # a varint cut short
    "1a05616263",  # a length past the end
    "0001",  # field number 0
    "0e",  # wire type 6
    "0c",  # an end-group without a group
    "0b0801",  # a group never closed
    "0b14",  # a group closed by another field's tag
    "2d0102",  # a fixed32 cut short
]


@pytest.mark.parametrize(("hexed", "chunk"), CHUNK_DECODING)
def test_chunk_decoding_follows_proto3(hexed: str, chunk: Chunk) -> None:
    assert decode_chunk(bytes.fromhex(hexed)) == Success(chunk)


@pytest.mark.parametrize("hexed", CORRUPT)
def test_malformed_bytes_are_refused(hexed: str) -> None:
    for decode in (decode_chunk, decode_task_request, decode_feedback):
        result = decode(bytes.fromhex(hexed))
        assert isinstance(result, Failure), decode


def test_every_occurrence_of_a_string_must_be_utf8() -> None:
    assert isinstance(decode_task_request(bytes.fromhex("0a01ff0a0161")), Failure)
    assert (
        decode_task_request(bytes.fromhex("0a01ff")).failure().reason == "a string field is not valid UTF-8"
    )


@pytest.mark.parametrize(
    ("hexed", "expected"),
    [
        ("1a030a01611a024005", (None, scalar(node_id="a", epoch=5))),  # a repeated sub-message merges
        ("1a030a016122030a0162", (None, LogFeedback(node_id="b", level="", msg=""))),  # the oneof switches
        ("1a030a016122030a01621a024005", (None, scalar(epoch=5))),  # ... and back: the first scalar is gone
        ("1a143a080a0161150000803f3a080a01611500000040", (None, scalar(metric={"a": 2.0}))),  # last key wins
        ("1a023a00", (None, scalar(metric={"": 0.0}))),  # an empty map entry: defaults
        ("1a0c3a0a0a0161150000803f2001", (None, scalar())),  # an entry with a foreign field is left out
        ("1a03188001", (None, scalar(train=True))),  # any non-zero bool is true
    ],
)
def test_feedback_decoding_follows_upb(hexed: str, expected: tuple[str | None, object]) -> None:
    assert decode_feedback(bytes.fromhex(hexed)) == Success(expected)


def test_feedback_without_a_case_is_refused() -> None:
    assert decode_feedback(bytes.fromhex("0a0137")).failure().reason == (
        "the feedback carries neither a scalar nor a log"
    )


# --- laws -------------------------------------------------------------------------------------

int32s = st.integers(-(2**31), 2**31 - 1)
texts = st.text(max_size=12)
scalars = st.builds(
    ScalarFeedback,
    node_id=texts,
    experiment_id=texts,
    train=st.booleans(),
    test=st.booleans(),
    test_on_local_updates=st.booleans(),
    test_on_global_updates=st.booleans(),
    metric=st.dictionaries(texts, st.floats(width=32, allow_nan=False), max_size=6),
    epoch=st.none() | int32s,
    total_samples=int32s,
    batch_samples=int32s,
    num_batches=int32s,
    num_samples_trained=st.none() | int32s,
    iteration=int32s,
    node_name=texts,
)
logs = st.builds(LogFeedback, node_id=texts, level=texts, msg=texts)
chunks = st.builds(Chunk, size=int32s, iteration=int32s, data=st.binary(max_size=300))


@given(item=scalars | logs, researcher_id=st.none() | texts, version=texts)
def test_feedback_roundtrip(
    item: ScalarFeedback | LogFeedback, researcher_id: str | None, version: str
) -> None:
    assert decode_feedback(encode_feedback(item, researcher_id, version)) == Success((researcher_id, item))


@given(chunk=chunks)
def test_chunk_roundtrip(chunk: Chunk) -> None:
    assert decode_chunk(encode_chunk(chunk)) == Success(chunk)


@given(node=texts, version=texts)
def test_task_request_roundtrip(node: str, version: str) -> None:
    assert decode_task_request(encode_task_request(node, version)) == Success((node, version))


SEEDS = (
    [bytes.fromhex(h) for _, h in FEEDBACK]
    + [bytes.fromhex(h) for _, h in CHUNKS]
    + [bytes.fromhex(CORNERS_HEX)]
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0x00, 0x0B, 0x0C, 0x0E, 0x1A, 0x3A, 0x7F, 0x80, 0xFF]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=5))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 5))]
        else:
            del data[i:]
    return bytes(data)


@settings(max_examples=400)  # cheap, and the one guard against a decoder that raises
@given(data=st.binary(max_size=400) | mutated())
def test_decoding_is_total(data: bytes) -> None:
    for decode in (decode_chunk, decode_task_request, decode_feedback):
        assert isinstance(decode(data), Success | Failure)


def test_group_nesting_is_bounded() -> None:
    deep = bytes.fromhex("0b" * 40 + "0c" * 40)
    assert decode_chunk(deep).failure().reason == "groups are nested too deeply"


# --- chunking ---------------------------------------------------------------------------------


@given(data=st.binary(max_size=2000), chunk_bytes=st.integers(1, 300))
def test_split_then_reassemble_gives_the_message_back(data: bytes, chunk_bytes: int) -> None:
    pieces = split_message(data, chunk_bytes)
    assert [c.iteration for c in pieces] == list(range(1, len(pieces) + 1))
    assert {c.size for c in pieces} == {len(pieces)}
    assert all(len(c.data) <= chunk_bytes for c in pieces)
    assert all(len(c.data) == chunk_bytes for c in pieces[:-1])
    assert b"".join(c.data for c in pieces) == data
    reassembler = Reassembler(max_bytes=len(data))
    results = [reassembler.add(c) for c in pieces]
    assert results[:-1] == [Success(None)] * (len(pieces) - 1)
    assert results[-1] == Success(data)


@given(data=st.binary(min_size=3, max_size=400), chunk_bytes=st.integers(1, 100), seed=st.randoms())
def test_reassembler_refuses_any_other_order(data: bytes, chunk_bytes: int, seed: object) -> None:
    pieces = split_message(data, chunk_bytes)
    order = list(pieces)
    seed.shuffle(order)  # type: ignore[attr-defined]
    reassembler = Reassembler(max_bytes=len(data))
    results = [reassembler.add(c) for c in order]
    if order == pieces:
        assert results[-1] == Success(data)
    else:
        assert any(isinstance(r, Failure) for r in results)
        assert all(r != Success(data) for r in results)


def test_fedbiomed_sized_message_splits_as_observed() -> None:
    # a 1,000,001-parameter TrainRequest of 4,004,254 bytes went as 3,999,967 + 4,287
    assert CHUNK_BYTES == 3_999_967
    assert [len(c.data) for c in iter_chunks(bytes(4_004_254))] == [3_999_967, 4_287]


def test_empty_message_is_one_empty_chunk() -> None:
    assert split_message(b"") == [Chunk(size=1, iteration=1, data=b"")]
    assert Reassembler(0).add(Chunk(size=1, iteration=1, data=b"")) == Success(b"")


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        ([Chunk(size=0, iteration=1, data=b"a")], "a chunk announces 0 chunks"),
        ([Chunk(size=-3, iteration=1, data=b"a")], "a chunk announces -3 chunks"),
        ([Chunk(size=2, iteration=2, data=b"a")], "chunk 2 of 2 came where chunk 1 was due"),
        (
            [Chunk(size=3, iteration=1, data=b"a"), Chunk(size=3, iteration=3, data=b"c")],
            "chunk 3 of 3 came where chunk 2 was due",
        ),
        (
            [Chunk(size=2, iteration=1, data=b"a"), Chunk(size=3, iteration=2, data=b"b")],
            "the chunk count changed from 2 to 3 mid-stream",
        ),
        (
            [Chunk(size=1, iteration=1, data=b"a"), Chunk(size=1, iteration=2, data=b"b")],
            "chunk 2 came after the last of 1 chunks",
        ),
        (
            [Chunk(size=2, iteration=1, data=b"abc"), Chunk(size=2, iteration=2, data=b"de")],
            "the message is over the limit of 4 bytes",
        ),
    ],
)
def test_reassembler_refuses_broken_streams(stream: list[Chunk], reason: str) -> None:
    reassembler = Reassembler(max_bytes=4)
    results = [reassembler.add(chunk) for chunk in stream]
    assert results[-1] == Failure(type(results[-1].failure())(reason=reason))
    assert not reassembler.pending
    # once refused, the stream stays refused
    assert isinstance(reassembler.add(Chunk(size=1, iteration=1, data=b"")), Failure)


def test_reassembler_refuses_before_holding_more_than_its_bound() -> None:
    reassembler = Reassembler(max_bytes=10)
    assert reassembler.add(Chunk(size=3, iteration=1, data=b"x" * 6)) == Success(None)
    assert reassembler.pending and reassembler.received == 1 and reassembler.expected == 3
    assert isinstance(reassembler.add(Chunk(size=3, iteration=2, data=b"x" * 5)), Failure)
