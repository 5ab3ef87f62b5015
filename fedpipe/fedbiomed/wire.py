"""Fed-BioMed 6.4.1's gRPC messages in the protobuf wire format, by hand, and its 4 MB chunking.

Fed-BioMed's ``researcher.proto`` (package ``researcher``) has six tiny messages; encoding them by
hand keeps the protobuf runtime out of the node. The encoders write what protobuf's own
deterministic serializer writes (fields in number order, proto3 defaults left out, ``optional``
fields written whenever set, map entries with both key and value, in its key order), so the bytes
are those of Fed-BioMed's generated classes. The decoders read any valid encoding the way proto3 does
(unknown fields skipped, a field whose wire type does not match is an unknown field, the last
value of a scalar wins, repeated sub-messages merge) and are total: malformed input (a varint over
ten bytes, a length past the end, a bad tag, an unbalanced group, invalid UTF-8 in a string) is a
``Failure(WireError)``, never an exception.

Application messages travel as chunks (``TaskResponse`` from the researcher, ``TaskResult`` to it,
the same three fields): at most ``CHUNK_BYTES`` bytes each, ``size`` the number of chunks and
``iteration`` counting from 1; a ``Reassembler`` puts one stream's chunks back together under a
byte bound.
"""

import math
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Final, TypeVar

from attrs import field, frozen
from returns.result import Failure, Result, Success

__all__ = [
    "CHUNK_BYTES",
    "PROTOCOL_VERSION",
    "Chunk",
    "LogFeedback",
    "Reassembler",
    "ScalarFeedback",
    "WireError",
    "decode_chunk",
    "decode_feedback",
    "decode_task_request",
    "encode_chunk",
    "encode_feedback",
    "encode_task_request",
    "iter_chunks",
    "split_message",
]

PROTOCOL_VERSION: Final = "7"
CHUNK_BYTES: Final = 3_999_967  # Fed-BioMed 6.4.1's MAX_MESSAGE_BYTES_LENGTH (4 MB less 33)

_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1
_UINT64: Final = 2**64
_MAX_FIELD: Final = 2**29 - 1
_MAX_GROUP_DEPTH: Final = 32

_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5

_T = TypeVar("_T")


@frozen(kw_only=True)
class WireError:
    """Why bytes are not a valid message (or a chunk stream is refused): one line for the node log."""

    reason: str


@frozen(kw_only=True)
class Chunk:
    """One ``TaskResponse`` / ``TaskResult``: chunk ``iteration`` (1-based) of ``size``, carrying ``data``."""

    size: int
    iteration: int
    data: bytes = field(repr=lambda data: f"<{len(data)} bytes>")


@frozen(kw_only=True)
class ScalarFeedback:
    """``FeedbackMessage.Scalar``: one metric report, as Fed-BioMed's monitor receives it.

    ``metric`` values travel as float32; ``epoch`` and ``num_samples_trained`` are proto3
    ``optional`` (None: absent). Integers are int32 on the wire.
    """

    node_id: str
    experiment_id: str
    train: bool
    test: bool
    test_on_local_updates: bool
    test_on_global_updates: bool
    metric: Mapping[str, float]
    epoch: int | None
    total_samples: int
    batch_samples: int
    num_batches: int
    num_samples_trained: int | None
    iteration: int
    node_name: str


@frozen(kw_only=True)
class LogFeedback:
    """``FeedbackMessage.Log``: a node log line; ``msg`` is JSON text with a ``"message"`` key."""

    node_id: str
    level: str
    msg: str


class _Malformed(Exception):
    """Internal: raised while decoding, turned into a ``WireError`` at the public boundary."""


# --- encoding ---------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _int32(number: int, value: int, *, always: bool = False) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not _INT32_MIN <= value <= _INT32_MAX:
        raise ValueError(f"field {number} is an int32, not {value!r}")
    if value == 0 and not always:
        return b""
    # negative int32 are sign-extended to 64 bits, ten bytes on the wire, as protobuf writes them
    return _tag(number, _VARINT) + _varint(value % _UINT64)


def _bool(number: int, value: bool) -> bytes:
    return _tag(number, _VARINT) + b"\x01" if value else b""


def _bytes(number: int, value: bytes, *, always: bool = False) -> bytes:
    if not value and not always:
        return b""
    return b"".join((_tag(number, _LEN), _varint(len(value)), value))


def _string(number: int, value: str, *, always: bool = False) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"field {number} is a string, not {type(value).__name__}")
    return _bytes(number, value.encode("utf-8"), always=always)  # UnicodeEncodeError is a ValueError


def _float32(value: float) -> bytes:
    try:
        return struct.pack("<f", value)
    except OverflowError:
        # a finite double beyond float32's range becomes an infinity, as protobuf's C cast makes it
        return struct.pack("<f", math.copysign(math.inf, value))
    except struct.error as err:
        raise ValueError(f"a metric value is a float, not {value!r}") from err


def encode_task_request(node_id: str, protocol_version: str = PROTOCOL_VERSION) -> bytes:
    """``TaskRequest{node, protocol_version}``, the node's poll. Raises ValueError for unencodable text."""
    return _string(1, node_id) + _string(2, protocol_version)


def encode_chunk(chunk: Chunk) -> bytes:
    """``TaskResult`` / ``TaskResponse`` bytes of ``chunk``. Raises ValueError if a count is not an int32.

    Any int32 is written, negative ones too, so that test servers can send hostile chunks.
    """
    return b"".join((_int32(1, chunk.size), _int32(2, chunk.iteration), _bytes(3, chunk.data)))


def _map_order(key: str) -> list[int]:
    # protobuf's deterministic serializer: bytewise, except that a key sorts after its extensions
    # ("ab" before "a", "" last); mirrored so that the bytes equal the generated classes' bytes
    return [*key.encode("utf-8"), 256]


def _scalar(item: ScalarFeedback) -> bytes:
    entries = []
    for key in sorted(item.metric, key=_map_order):
        entry = _string(1, key, always=True) + _tag(2, _I32) + _float32(item.metric[key])
        entries.append(_bytes(7, entry, always=True))
    return b"".join(
        (
            _string(1, item.node_id),
            _string(2, item.experiment_id),
            _bool(3, item.train),
            _bool(4, item.test),
            _bool(5, item.test_on_local_updates),
            _bool(6, item.test_on_global_updates),
            *entries,
            b"" if item.epoch is None else _int32(8, item.epoch, always=True),
            _int32(9, item.total_samples),
            _int32(10, item.batch_samples),
            _int32(11, item.num_batches),
            b"" if item.num_samples_trained is None else _int32(12, item.num_samples_trained, always=True),
            _int32(13, item.iteration),
            _string(14, item.node_name),
        )
    )


def _log(item: LogFeedback) -> bytes:
    return _string(1, item.node_id) + _string(2, item.level) + _string(3, item.msg)


def encode_feedback(
    item: ScalarFeedback | LogFeedback, researcher_id: str | None, protocol_version: str = PROTOCOL_VERSION
) -> bytes:
    """``FeedbackMessage`` bytes carrying ``item`` (its ``scalar`` or ``log`` case).

    ``researcher_id`` is proto3 ``optional``: None leaves it out. Raises ValueError when a value
    does not fit the wire (an int beyond int32, a string that is not valid Unicode).
    """
    head = _string(1, protocol_version)
    if researcher_id is not None:
        head += _string(2, researcher_id, always=True)
    if isinstance(item, ScalarFeedback):
        return head + _bytes(3, _scalar(item), always=True)
    return head + _bytes(4, _log(item), always=True)


# --- decoding ---------------------------------------------------------------------------------


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    for i in range(10):
        if pos >= len(data):
            raise _Malformed("a varint runs past the end")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return result % _UINT64, pos  # bits past 64 are dropped, as protobuf does
    raise _Malformed("a varint is longer than ten bytes")


def _field_at(data: memoryview, pos: int, depth: int) -> tuple[int, int, int | memoryview | None, int]:
    """(field number, wire type, value, next position) of the field at ``pos``; groups are skipped."""
    key, pos = _read_varint(data, pos)
    number, wire_type = key >> 3, key & 7
    if key > 0xFFFFFFFF or not 1 <= number <= _MAX_FIELD:
        raise _Malformed("a field tag is out of range")
    if wire_type == _VARINT:
        value, pos = _read_varint(data, pos)
        return number, wire_type, value, pos
    if wire_type in (_I64, _I32):
        end = pos + (8 if wire_type == _I64 else 4)
        if end > len(data):
            raise _Malformed("a fixed-width field runs past the end")
        return number, wire_type, int.from_bytes(data[pos:end], "little"), end
    if wire_type == _LEN:
        length, pos = _read_varint(data, pos)
        if length > len(data) - pos:
            raise _Malformed("a length runs past the end")
        return number, wire_type, data[pos : pos + length], pos + length
    if wire_type == _SGROUP:
        # proto3 has no groups, but a proto3 parser skips an unknown one whole
        return number, wire_type, None, _skip_group(data, pos, number, depth + 1)
    if wire_type == _EGROUP:
        return number, wire_type, None, pos
    raise _Malformed(f"wire type {wire_type} does not exist")


def _skip_group(data: memoryview, pos: int, number: int, depth: int) -> int:
    if depth > _MAX_GROUP_DEPTH:
        raise _Malformed("groups are nested too deeply")
    while pos < len(data):
        inner, wire_type, _, pos = _field_at(data, pos, depth)
        if wire_type == _EGROUP:
            if inner != number:
                raise _Malformed("a group ends with another group's tag")
            return pos
    raise _Malformed("a group is not closed")


def _fields(data: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field of a message, in order; groups are skipped."""
    pos = 0
    while pos < len(data):
        number, wire_type, value, pos = _field_at(data, pos, 0)
        if wire_type == _EGROUP:
            raise _Malformed("an end-group tag closes no group")
        if value is not None:
            yield number, wire_type, value


def _as_int32(value: int) -> int:
    low = value & 0xFFFFFFFF  # protobuf keeps the low 32 bits of an int32 varint
    return low - 2**32 if low > _INT32_MAX else low


def _as_text(value: memoryview) -> str:
    try:
        return str(value, "utf-8")
    except UnicodeDecodeError as err:
        raise _Malformed("a string field is not valid UTF-8") from err


def _message(
    data: memoryview, schema: Mapping[int, int], strings: frozenset[int] = frozenset()
) -> dict[int, int | memoryview]:
    """The last value of each field in ``schema`` (number -> wire type); other fields are skipped.

    Every occurrence of a ``strings`` field must be UTF-8, not only the last (protobuf checks each).
    """
    values: dict[int, int | memoryview] = {}
    for number, wire_type, value in _fields(data):
        if schema.get(number) == wire_type:
            if number in strings:
                assert isinstance(value, memoryview)
                _as_text(value)
            values[number] = value
    return values


def _int(values: Mapping[int, int | memoryview], number: int) -> int:
    value = values.get(number, 0)
    assert isinstance(value, int)
    return _as_int32(value)


def _text(values: Mapping[int, int | memoryview], number: int) -> str:
    value = values.get(number, memoryview(b""))
    assert isinstance(value, memoryview)
    return _as_text(value)


def _guarded(decode: Callable[[memoryview], _T], data: bytes) -> Result[_T, WireError]:
    try:
        return Success(decode(memoryview(data)))
    except _Malformed as err:
        return Failure(WireError(reason=str(err)))


def _task_request(data: memoryview) -> tuple[str, str]:
    values = _message(data, {1: _LEN, 2: _LEN}, frozenset({1, 2}))
    return _text(values, 1), _text(values, 2)


def decode_task_request(data: bytes) -> Result[tuple[str, str], WireError]:
    """(node id, protocol version) of ``TaskRequest`` bytes (what a researcher reads; for test servers)."""
    return _guarded(_task_request, data)


def _chunk(data: memoryview) -> Chunk:
    values = _message(data, {1: _VARINT, 2: _VARINT, 3: _LEN})
    payload = values.get(3, memoryview(b""))
    assert isinstance(payload, memoryview)
    return Chunk(size=_int(values, 1), iteration=_int(values, 2), data=bytes(payload))


def decode_chunk(data: bytes) -> Result[Chunk, WireError]:
    """The chunk in ``TaskResponse`` / ``TaskResult`` bytes, counts as sent (a ``Reassembler`` judges them)."""
    return _guarded(_chunk, data)


def _merged(parts: list[memoryview]) -> memoryview:
    # a sub-message given more than once is the merge of its parts, i.e. their concatenation parsed
    return parts[0] if len(parts) == 1 else memoryview(b"".join(parts))


def _metric_entry(data: memoryview) -> tuple[str, float] | None:
    """A map entry's (key, value); None for an entry with other fields, which protobuf leaves out."""
    values: dict[int, int | memoryview] = {}
    foreign = False
    for number, wire_type, value in _fields(data):  # read to the end: the entry must still parse
        if (number, wire_type) in ((1, _LEN), (2, _I32)):
            if number == 1:
                assert isinstance(value, memoryview)
                _as_text(value)
            values[number] = value
        else:
            foreign = True
    if foreign:
        return None
    raw = values.get(2, 0)
    assert isinstance(raw, int)
    (value,) = struct.unpack("<f", raw.to_bytes(4, "little"))
    return _text(values, 1), float(value)


_SCALAR_SCHEMA: Final = {
    1: _LEN, 2: _LEN, 3: _VARINT, 4: _VARINT, 5: _VARINT, 6: _VARINT, 8: _VARINT, 9: _VARINT,
    10: _VARINT, 11: _VARINT, 12: _VARINT, 13: _VARINT, 14: _LEN,
}  # fmt: skip


def _scalar_of(data: memoryview) -> ScalarFeedback:
    values: dict[int, int | memoryview] = {}
    metric: dict[str, float] = {}
    for number, wire_type, value in _fields(data):
        if number == 7 and wire_type == _LEN:
            assert isinstance(value, memoryview)
            entry = _metric_entry(value)
            if entry is not None:
                metric[entry[0]] = entry[1]  # a repeated key: the last entry wins
        elif _SCALAR_SCHEMA.get(number) == wire_type:
            if wire_type == _LEN:  # node_id, experiment_id, node_name: text, each occurrence checked
                assert isinstance(value, memoryview)
                _as_text(value)
            values[number] = value
    return ScalarFeedback(
        node_id=_text(values, 1),
        experiment_id=_text(values, 2),
        train=values.get(3, 0) != 0,
        test=values.get(4, 0) != 0,
        test_on_local_updates=values.get(5, 0) != 0,
        test_on_global_updates=values.get(6, 0) != 0,
        metric=metric,
        epoch=_int(values, 8) if 8 in values else None,
        total_samples=_int(values, 9),
        batch_samples=_int(values, 10),
        num_batches=_int(values, 11),
        num_samples_trained=_int(values, 12) if 12 in values else None,
        iteration=_int(values, 13),
        node_name=_text(values, 14),
    )


def _log_of(data: memoryview) -> LogFeedback:
    values = _message(data, {1: _LEN, 2: _LEN, 3: _LEN}, frozenset({1, 2, 3}))
    return LogFeedback(node_id=_text(values, 1), level=_text(values, 2), msg=_text(values, 3))


def _feedback(data: memoryview) -> tuple[str | None, ScalarFeedback | LogFeedback]:
    values: dict[int, int | memoryview] = {}
    case: int | None = None
    parts: list[memoryview] = []
    for number, wire_type, value in _fields(data):
        if number in (3, 4) and wire_type == _LEN:
            assert isinstance(value, memoryview)
            (_scalar_of if number == 3 else _log_of)(value)  # each part must parse on its own
            if number != case:  # setting the other member of a oneof clears the first
                case, parts = number, []
            parts.append(value)
        elif number in (1, 2) and wire_type == _LEN:
            assert isinstance(value, memoryview)
            _as_text(value)  # protocol_version is read only to be checked, as protobuf checks it
            values[number] = value
    researcher_id = _text(values, 2) if 2 in values else None
    if case is None:
        raise _Malformed("the feedback carries neither a scalar nor a log")
    body = _merged(parts)
    return researcher_id, _scalar_of(body) if case == 3 else _log_of(body)


def decode_feedback(data: bytes) -> Result[tuple[str | None, ScalarFeedback | LogFeedback], WireError]:
    """(researcher id or None, scalar or log) of ``FeedbackMessage`` bytes (for test servers)."""
    return _guarded(_feedback, data)


# --- chunking ---------------------------------------------------------------------------------


def iter_chunks(data: bytes, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
    """The chunks of ``data``, one at a time (at most ``chunk_bytes`` bytes each).

    An empty message is one empty chunk, so that every message arrives as at least one chunk.

    >>> [(c.size, c.iteration, c.data) for c in iter_chunks(b"abcde", 2)]
    [(3, 1, b'ab'), (3, 2, b'cd'), (3, 3, b'e')]
    """
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be positive")
    size = max(1, -(-len(data) // chunk_bytes))
    if size > _INT32_MAX:
        raise ValueError("the message needs more chunks than an int32 counts")
    view = memoryview(data)
    for index in range(size):
        yield Chunk(
            size=size, iteration=index + 1, data=bytes(view[index * chunk_bytes : (index + 1) * chunk_bytes])
        )


def split_message(data: bytes, chunk_bytes: int = CHUNK_BYTES) -> list[Chunk]:
    """All chunks of ``data`` (see ``iter_chunks``); ``b"".join`` of their data gives ``data`` back."""
    return list(iter_chunks(data, chunk_bytes))


class Reassembler:
    """Puts one message stream's chunks back together, holding at most ``max_bytes`` of data.

    ``add`` answers ``Success(None)`` while chunks are missing, ``Success(message)`` on the last
    one, and ``Failure`` (after which every ``add`` fails and the data is dropped) when the stream
    breaks the framing: a first chunk that is not 1, a count that is not positive or that changes
    mid-stream, a chunk out of order or past the announced count, more than ``max_bytes`` in all.
    A stream that carries several messages needs a new ``Reassembler`` after each.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._size: int | None = None
        self._parts: list[bytes] = []
        self._received = 0
        self._bytes = 0
        self._error: WireError | None = None
        self._done = False

    @property
    def expected(self) -> int | None:
        """The announced number of chunks, once the first chunk came."""
        return self._size

    @property
    def received(self) -> int:
        """How many chunks were accepted so far."""
        return self._received

    @property
    def done(self) -> bool:
        """True once the message is complete (``add`` gave it)."""
        return self._done

    @property
    def pending(self) -> bool:
        """True when some chunks came but the message is not complete (nor refused)."""
        return self._received > 0 and not self._done and self._error is None

    def _refuse(self, reason: str) -> Result[bytes | None, WireError]:
        self._error = WireError(reason=reason)
        self._parts = []
        return Failure(self._error)

    def add(self, chunk: Chunk) -> Result[bytes | None, WireError]:
        """Take the next chunk; the whole message once it is complete (see the class for refusals)."""
        if self._error is not None:
            return Failure(self._error)
        if self._done:
            return self._refuse(f"chunk {chunk.iteration} came after the last of {self._size} chunks")
        if chunk.size <= 0:
            return self._refuse(f"a chunk announces {chunk.size} chunks")
        if self._size is not None and chunk.size != self._size:
            return self._refuse(f"the chunk count changed from {self._size} to {chunk.size} mid-stream")
        expected = self._received + 1
        if chunk.iteration != expected:
            return self._refuse(
                f"chunk {chunk.iteration} of {chunk.size} came where chunk {expected} was due"
            )
        if self._bytes + len(chunk.data) > self.max_bytes:
            return self._refuse(f"the message is over the limit of {self.max_bytes} bytes")
        self._size = chunk.size
        self._parts.append(chunk.data)
        self._received = expected
        self._bytes += len(chunk.data)
        if expected < chunk.size:
            return Success(None)
        self._done = True
        parts, self._parts = self._parts, []
        return Success(parts[0] if len(parts) == 1 else b"".join(parts))
