"""Decoder: a total msgpack parser over a memoryview that enforces limits while it reads.

Every length read from the input is checked against the bytes that remain before anything is
allocated, so a small input cannot ask for a large allocation. Many small values can still add up
to far more memory than their bytes (an empty map is 1 byte and 64 bytes of memory), so each value
is also charged an upper bound of its memory before or as it is made, and the input is refused
once the charges pass ``Limits.memory_bound`` (see "Memory charges" below). Array payloads are
copied once, from the input buffer straight into fresh aligned writable memory. Nothing here
imports or runs code named by the input: extension dicts map to a fixed set of constructors.

Arrays and tensors in the form that encoders write (nearly all of them) are read by a fast path
(``_Reader.plain_buffer``) that checks the same things as the general one. Those that are entries
of a map (a state dict's layers) are copied only once the whole input has been read and checked,
back to back; when the large ones add up to at least 4 MiB they share one numpy-allocated block
(one allocation, huge pages where the kernel gives them), each a distinct writable view of it.

An input whose layout repeats one decoded before (same size, same bytes outside its state-dict
payloads, same limits) is not parsed again: its structure is rebuilt from a small record of the
earlier one (see "skeletons" below) and only its payloads are copied.
"""

import importlib
import logging
import struct
import sys
import threading
from typing import Any, Final, NamedTuple, NoReturn

import numpy as np
from attrs import field, frozen, validators

from fedpipe.codec.dtypes import ALLOWED_DTYPES, BFLOAT16, parse_dtype

__all__ = ["DEFAULT_LIMITS", "Limits", "decode"]


@frozen(kw_only=True, cache_hash=True)
class Limits:
    """Bounds on what decoding untrusted bytes may read and allocate.

    ``max_elements`` counts every decoded value: each container (an empty map or list counts 1),
    each map key and each scalar, and a handful per array or tensor; ``max_depth`` bounds container
    nesting; ``max_str_bytes`` bounds one string; ``max_int_bytes`` bounds one big integer;
    ``dtypes`` is the allow-list of array dtypes.

    Memory: decoding an input of ``size`` bytes allocates at most
    ``memory_bound(size) = memory_factor * size + memory_constant`` bytes (16 times the input plus
    64 MiB by default) for what it decodes, or fails with "decoded payload would exceed N bytes of
    memory" as soon as the objects it has made would pass that. Each value is charged, before or as
    it is made, an upper bound of what CPython allocates for it (allocator rounding included, and
    a map's every table as it grows): an array or tensor its bytes plus 4 KiB, so a state dict
    costs about its size; a float 32 bytes plus its slot; an empty map 64 bytes from 1 input byte.
    Dense small containers and scalars therefore fit only within the constant: ten million empty
    maps (a 9.5 MiB input that would take 0.7 GiB) are refused once the charges reach the bound.
    The input buffer itself, and torch's one-time import when a payload first holds a tensor, are
    not counted.
    """

    max_bytes: int = 4 * 1024**3
    max_depth: int = field(default=64, validator=[validators.ge(1), validators.le(128)])
    max_elements: int = 10_000_000
    max_str_bytes: int = 64 * 1024**2
    max_int_bytes: int = 1024 * 1024
    max_dims: int = field(default=32, validator=[validators.ge(0), validators.le(64)])
    dtypes: frozenset[str] = ALLOWED_DTYPES
    memory_factor: int = field(default=16, validator=validators.ge(0))
    memory_constant: int = field(default=64 * 1024**2, validator=validators.ge(0))

    def memory_bound(self, size: int) -> int:
        """The most memory, in bytes, that decoding an input of ``size`` bytes may allocate.

        >>> Limits().memory_bound(1024**2) // 1024**2
        80
        """
        return self.memory_factor * size + self.memory_constant


DEFAULT_LIMITS: Final = Limits()

log = logging.getLogger("fedpipe.codec")

_MAX_DIM: Final = 2**62
# payloads at least this large are copied into numpy-allocated memory (numpy advises huge pages
# from 4 MiB on, which saves most page faults), smaller ones into a bytearray
_NUMPY_ALLOCATED: Final = 4 * 1024**2
# the buffers of one payload at least this large share one block when they add up to the above
_SHARED_MIN: Final = 64 * 1024
_TYPE_KEY: Final = b"\xa8__type__"
_TYPE_KEY_VIEW: Final = memoryview(_TYPE_KEY)
_VALUE_KEY: Final = b"\xa5value"
_BUFFER_KINDS: Final = frozenset({"np.ndarray", "torch.Tensor", "fedpipe.tensor"})

# Memory charges (see Limits): upper bounds of what CPython (3.11, 64-bit) allocates for each
# object, GC header included, as its allocator rounds it: pymalloc to 16 bytes, malloc with an
# 8-byte header to 16 bytes, so an object of x bytes takes at most _alloc(x) = (x + 23) & -16.
# The constants marked "charge" are rounded already; those marked "size" are rounded by _alloc,
# in _str_cost and _bytes_cost, the one place each of those charges is computed.
_INT: Final = 32  # charge: an int below 2**60 in magnitude (28 or 32 bytes); -5..256 are shared
_LONG: Final = 48  # charge: an int of up to 64 bits (36 bytes)
_FLOAT: Final = 32  # charge: 24 bytes
_STR: Final = 49  # size: an ASCII str but its chars (strs of 0 or 1 char are shared)
_WIDE_STR: Final = 76  # size: any other str but its chars, 4 bytes each at worst (UCS-4)
_BYTES: Final = 33  # size: a bytes but its bytes
# a list of n items is charged _LIST + _SLOT * n (the list, and its item array allocated once at
# its length, rounded), a tuple _TUPLE + _SLOT * n
_LIST: Final = 64 + 24
_TUPLE: Final = 40 + 24
_SLOT: Final = 8
_DICT: Final = 64  # charge: the dict object; its key tables are _dict_tables
# an array or tensor, besides its bytes: its objects (ndarray or tensor and storage, memoryview,
# shape; 0.6-3.8 KiB measured), its place among the pending buffers, its alignment, and the key
# of the map entry it may be (a str of at most 31 bytes, at most 208 bytes)
_BUFFER: Final = 4096
_NUMPY_SCALAR: Final = 128  # 32 bytes, and the small arrays it is made through


class Bad(Exception):
    """Malformed or over-limit input (internal; surfaces as a DecodeError)."""


def _bad(reason: str) -> NoReturn:
    raise Bad(reason)


_torch_module: list[Any] = []


def _torch() -> Any:
    # imported on first need only: decoding numpy-only payloads never loads torch
    if not _torch_module:
        _torch_module.append(importlib.import_module("torch"))
    return _torch_module[0]


_torch_dtypes: dict[str, Any] = {}


def _torch_dtype(name: str) -> Any:
    """The torch dtype of an allowed dtype name (``torch.float32`` for ``"float32"``)."""
    dtype = _torch_dtypes.get(name)
    if dtype is None:
        dtype = _torch_dtypes[name] = getattr(_torch(), name)
    return dtype


def _budget(bound: int) -> int:
    """What the charges may add up to under a memory bound: 15/16 of it, the rest left to the
    allocators' own bookkeeping (pymalloc's pool headers and the ends of its pools, arenas; at
    most 3% of what they hold), which the charges of single objects leave out."""
    return bound - (bound >> 4)


def _alloc(nbytes: int) -> int:
    """What an object of ``nbytes`` takes from the allocator, at most."""
    return (nbytes + 23) & -16


def _dict_tables(n: int, entry: int, size: int = 8) -> int:
    """Bytes of all the key tables a dict allocates while ``n`` entries are inserted one by one
    into its table of ``size`` slots (the ones it outgrows included): CPython starts at 8 slots
    and doubles the table whenever two thirds are used; an entry takes 16 bytes while all keys
    are str, 24 otherwise.

    >>> _dict_tables(0, 16), _dict_tables(5, 16), _dict_tables(6, 16)
    (0, 128, 352)
    """
    total = 0
    while n > 0:
        index = 1 if size <= 0x80 else 2 if size <= 0x8000 else 4 if size <= 0x80000000 else 8
        usable = 2 * size // 3
        total += _alloc(32 + size * index + usable * entry)
        if usable >= n:
            break
        size *= 2
    return total


def _map_cost(n: int) -> int:
    """The charge of a map of up to ``n`` entries, all keys str (see _Reader.map for others)."""
    return _DICT + _dict_tables(n, 16)


_MAP_COSTS: Final = tuple(_map_cost(n) for n in range(64))
# the charges of ASCII strs of up to 31 bytes (fixstrs: nearly every key), looked up per str
_ASCII_COSTS: Final = tuple(_alloc(_STR + n) for n in range(32))
# {"__type__": kind, key: value} as the ext-dict path builds it: one table of 8 slots
_EXT_DICT: Final = _DICT + _dict_tables(2, 24)


def _int_cost(value: int) -> int:
    """The charge of an int that fits 64 bits."""
    if -5 <= value <= 256:
        return 0
    return _INT if -(2**60) < value < 2**60 else _LONG


def _str_cost(text: str, nbytes: int) -> int:
    """The charge of ``text``, decoded from ``nbytes`` of UTF-8 (ASCII when as long); callers
    charge nothing for strs of 0 or 1 byte, which CPython shares."""
    if len(text) != nbytes:
        return _alloc(_WIDE_STR + 4 * nbytes)
    return _ASCII_COSTS[nbytes] if nbytes < 32 else _alloc(_STR + nbytes)


def _bytes_cost(nbytes: int) -> int:
    """The charge of a bytes value of ``nbytes``."""
    return _alloc(_BYTES + nbytes)


class _Reader:
    __slots__ = ("bound", "budget", "buf", "end", "limits", "memory", "pending", "pos", "unknown")

    def __init__(self, buf: memoryview, limits: Limits) -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)
        self.limits = limits
        self.budget = limits.max_elements
        self.bound = limits.memory_bound(len(buf))
        self.memory = _budget(self.bound)  # what may still be charged
        self.unknown: set[str] = set()
        self.pending: _Pending = []

    def take(self, n: int) -> int:
        """Advance past ``n`` bytes; return where they start."""
        start = self.pos
        if n > self.end - start:
            _bad("truncated input")
        self.pos = start + n
        return start

    def unpack(self, fmt: struct.Struct) -> Any:
        start = self.take(fmt.size)
        return fmt.unpack_from(self.buf, start)[0]

    def spend(self, n: int) -> None:
        self.budget -= n
        if self.budget < 0:
            _bad(f"more than {self.limits.max_elements} elements")

    def charge(self, nbytes: int) -> None:
        """Count ``nbytes`` of memory for what is decoded; past the bound the input is refused."""
        self.memory -= nbytes
        if self.memory < 0:
            _bad(f"decoded payload would exceed {self.bound} bytes of memory")

    def refund(self, nbytes: int) -> None:
        """Give back the charge of ``nbytes`` that turned out not to be allocated, or freed."""
        self.memory += nbytes

    # values ------------------------------------------------------------------------------------

    def value(self, depth: int) -> Any:
        # spend(1) and take(1), inlined: this runs once per value
        self.budget -= 1
        if self.budget < 0:
            _bad(f"more than {self.limits.max_elements} elements")
        pos = self.pos
        if pos >= self.end:
            _bad("truncated input")
        self.pos = pos + 1
        b = self.buf[pos]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            if b < 0xFB:  # -32..-6 (-5..-1 are shared ints)
                self.charge(_INT)
            return b - 0x100
        if b >= 0xA0 and b <= 0xBF:
            return self.string(b & 0x1F)
        if b >= 0x90 and b <= 0x9F:
            return self.array(b & 0x0F, depth)
        if b >= 0x80 and b <= 0x8F:
            return self.map(b & 0x0F, depth)
        handler = _HANDLERS.get(b)
        if handler is None:
            _bad(f"unsupported msgpack type byte 0x{b:02x}")
        return handler(self, depth)

    def string(self, n: int) -> str:
        if n > self.limits.max_str_bytes:
            _bad(f"string longer than {self.limits.max_str_bytes} bytes")
        start = self.take(n)
        try:
            text = str(self.buf[start : start + n], "utf-8")
        except UnicodeDecodeError:
            _bad("string is not valid UTF-8")
        if n > 1:
            self.charge(_str_cost(text, n))
        return text

    def integer(self, value: int) -> int:
        cost = _int_cost(value)
        if cost:
            self.charge(cost)
        return value

    def bytes_of(self, n: int) -> bytes:
        start = self.take(n)
        self.charge(_bytes_cost(n))
        return bytes(self.buf[start : start + n])

    def binary(self, n: int) -> memoryview:
        start = self.take(n)
        return self.buf[start : start + n]

    def container_depth(self, depth: int) -> int:
        if depth >= self.limits.max_depth:
            _bad(f"nesting deeper than {self.limits.max_depth}")
        return depth + 1

    def array(self, n: int, depth: int) -> list[Any]:
        inner = self.container_depth(depth)
        if n > self.end - self.pos:
            _bad("array longer than the remaining input")
        self.charge(_LIST + _SLOT * n)
        if n >= 16:
            fast = self.homogeneous(n)
            if fast is not None:
                return fast
        out: list[Any] = [None] * n  # allocated once (appends would grow it by reallocations)
        for i in range(n):
            out[i] = self.value(inner)
        return out

    def homogeneous(self, n: int) -> list[Any] | None:
        """Lists of small non-negative ints or of float64: parsed by numpy, not one by one."""
        buf, pos = self.buf, self.pos
        first = buf[pos]
        if first <= 0x7F:
            run = np.frombuffer(buf, dtype=np.uint8, count=n, offset=pos)
            if int(run.max()) > 0x7F:
                return None
            self.spend(n)  # the ints are shared: the list (charged by array) is all they cost
            self.pos = pos + n
            return run.tolist()  # type: ignore[no-any-return]
        if first == 0xCB and 9 * n <= self.end - pos:
            self.charge(n)  # the comparison's booleans
            tags = np.ndarray(shape=(n,), dtype=np.uint8, buffer=buf, offset=pos, strides=(9,))
            if not bool((tags == 0xCB).all()):
                return None
            self.spend(n)
            self.charge(_FLOAT * n)
            values = np.ndarray(shape=(n,), dtype=">f8", buffer=buf, offset=pos + 1, strides=(9,))
            self.pos = pos + 9 * n
            return values.tolist()  # type: ignore[no-any-return]
        return None

    def map(self, n: int, depth: int) -> Any:
        inner = self.container_depth(depth)
        if 2 * n > self.end - self.pos:
            _bad("map longer than the remaining input")
        pos = self.pos
        if n == 2 and self.buf[pos : pos + len(_TYPE_KEY)] == _TYPE_KEY_VIEW:
            fast = self.plain_buffer(pos, depth, 0)
            if fast is not _NOT_PLAIN:
                return fast.materialize(self.buf)
            return self.extension(inner)
        self.charge(_MAP_COSTS[n] if n < 64 else _map_cost(n))
        out: dict[Any, Any] = {}
        buf, end = self.buf, self.end
        general = False  # whether a non-str key has made the dict's table a general one
        for _ in range(n):
            pos = self.pos
            b = buf[pos] if pos < end else 0
            if 0xA0 <= b <= 0xBF and b & 0x1F <= self.limits.max_str_bytes:
                # a short str key (nearly every key), read here
                self.spend(1)
                size = b & 0x1F
                stop = pos + 1 + size
                if stop > end:
                    _bad("truncated input")
                try:
                    key: Any = str(buf[pos + 1 : stop], "utf-8")
                except UnicodeDecodeError:
                    _bad("string is not valid UTF-8")
                self.pos = stop
            else:
                size = 0  # the key is charged by value()
                key = _hashable(self.value(inner))
                if not general and type(key) is not str:
                    general = True
                    # the dict moves to a general table (24-byte entries) sized for three times
                    # its entries, grown from there; a first key makes it general from the start
                    used = len(out)
                    if not used:
                        self.refund(_dict_tables(n, 16))
                    slots = 8 if used < 3 else 1 << (3 * used - 1).bit_length()
                    self.charge(_dict_tables(n, 24, slots))
            pos = self.pos
            if pos < end and buf[pos] == 0x82 and buf[pos + 1 : pos + 1 + len(_TYPE_KEY)] == _TYPE_KEY_VIEW:
                # a state dict's entry: checked now, copied once the whole input is parsed
                value = self.plain_buffer(pos + 1, inner, 1)  # its charge covers the short key
                if value is not _NOT_PLAIN:
                    out[key] = value
                    self.pending.append((out, key, value))
                    continue
            if size > 1:  # the short key (strings of one char are shared)
                self.charge(_str_cost(key, size))
            out[key] = self.value(inner)
        return _apply_extension(out, self, _MAP_COSTS[2]) if n == 2 else out

    # extension dicts -------------------------------------------------------------------------

    def plain_buffer(self, key_pos: int, depth: int, spent: int) -> Any:
        """An array or tensor ext dict in the form that encoders write (fixstr keys and names, a
        bin payload, a fixstr dtype in native byte order, a fixarray shape of unsigned ints), read
        with a handful of slices instead of value by value; ``_NOT_PLAIN`` (and nothing consumed)
        for any other form, which the general path then reads with the same checks.

        ``key_pos`` is where its ``__type__`` key starts, ``depth`` the depth of the map, ``spent``
        the elements to count for the map header (0 when the caller has counted it)."""
        buf = self.buf
        try:  # reading past the end raises IndexError or struct.error: not the plain form then
            pos = key_pos + len(_TYPE_KEY)
            head = _BUFFER_PREFIXES.get(buf[pos])
            if head is None:
                return _NOT_PLAIN
            kind, prefix = head
            if buf[pos : pos + len(prefix)] != prefix:
                return _NOT_PLAIN
            pos += len(prefix)
            fmt = _BIN_LENGTH.get(buf[pos])
            if fmt is None:
                return _NOT_PLAIN
            nbytes = fmt.unpack_from(buf, pos + 1)[0]
            start = pos + 1 + fmt.size
            pos = start + nbytes
            dtype = _NATIVE_DTYPE_BYTES.get(bytes(buf[pos : pos + 1 + (buf[pos] & 0x1F)]))
            if dtype is None:
                return _NOT_PLAIN
            name, dt = dtype
            pos += 1 + len(name)
            head_byte = buf[pos]
            if not 0x90 <= head_byte <= 0x9F:
                return _NOT_PLAIN
            pos += 1
            dims: list[int] = []
            count = 1
            for _ in range(head_byte & 0x0F):
                b = buf[pos]
                if b <= 0x7F:
                    pos += 1
                else:
                    width = _UINT_WIDTH.get(b)
                    if width is None:
                        return _NOT_PLAIN
                    b = width.unpack_from(buf, pos + 1)[0]
                    pos += 1 + width.size
                dims.append(b)
                count *= b
        except (IndexError, struct.error):
            return _NOT_PLAIN
        if pos > self.end:  # the shape ran past the end (slices do not raise)
            return _NOT_PLAIN
        # the form is plain: the checks below fail as the general path would
        limits = self.limits
        self.container_depth(depth + 1)  # the map, and the value array inside it
        self.spend(spent + 8 + len(dims))
        if name not in limits.dtypes or (name == BFLOAT16) != (kind == "fedpipe.tensor"):
            _bad(f"{kind} dtype not allowed")
        if count * dt.itemsize != nbytes:
            _bad(f"{kind} byte length does not match shape and dtype")
        if len(dims) > limits.max_dims or count == 0:
            _shape(dims, limits)  # an empty array may still claim absurd sizes
        self.charge(_BUFFER + nbytes)
        self.pos = pos
        return _Buffer(kind, name, dt, dims, start, nbytes)

    def extension(self, depth: int) -> Any:
        self.pos += len(_TYPE_KEY)
        self.spend(1)
        kind = self.value(depth)
        if bytes(self.buf[self.pos : self.pos + len(_VALUE_KEY)]) != _VALUE_KEY:
            key = _hashable(self.value(depth))  # not the reference's key order: a plain dict unless ext
            return self.ext_dict(kind, key, self.value(depth))
        self.pos += len(_VALUE_KEY)
        self.spend(1)
        if (
            isinstance(kind, str)
            and kind in _BUFFER_KINDS
            and self.end - self.pos >= 2
            and self.buf[self.pos] == 0x93
        ):
            b = self.buf[self.pos + 1]
            if b in _BIN_LENGTH:
                self.pos += 2
                self.spend(2)
                raw = self.binary(self.unpack(_BIN_LENGTH[b]))
                # the payload as a view of the input (not a bytes copy); plain_buffer has
                # already declined this form, so dtype and shape are read value by value
                inner = self.container_depth(depth)
                dtype = self.value(inner)
                shape = self.value(inner)
                return _buffer(kind, raw, dtype, shape, self)
        return self.ext_dict(kind, "value", self.value(depth))

    def ext_dict(self, kind: Any, key: Any, value: Any) -> Any:
        """The object of ``{"__type__": kind, key: value}`` (see _apply_extension)."""
        self.charge(_EXT_DICT)
        return _apply_extension({"__type__": kind, key: value}, self, _EXT_DICT)


class _Buffer(NamedTuple):
    """A checked array or tensor ext dict, not yet copied out of the input."""

    kind: str  # its ext type
    name: str  # its dtype name
    dt: np.dtype[Any]  # the native dtype that holds it (int16 for bfloat16)
    dims: list[int]
    start: int  # where its bytes start in the input
    nbytes: int

    def materialize(self, buf: memoryview) -> Any:
        """The array or tensor, from one copy of its bytes in ``buf`` into memory of its own."""
        nbytes = self.nbytes
        if nbytes == 0:
            arr = np.empty(self.dims, dtype=self.dt)
            return _wrap(self.kind, self.name, arr)
        start = self.start
        if nbytes >= _NUMPY_ALLOCATED:
            # memory that numpy allocates (it asks for huge pages when large)
            memory = np.empty(nbytes, dtype=np.uint8).data
            memory[:] = buf[start : start + nbytes]
        else:
            memory = memoryview(bytearray(buf[start : start + nbytes]))  # malloc-aligned, writable
        return self.over(memory)

    def over(self, memory: memoryview) -> Any:
        """The array or tensor over ``memory`` (its bytes, writable, aligned; not empty)."""
        dims = self.dims
        if self.kind == "np.ndarray":
            arr = np.frombuffer(memory, dtype=self.dt)
            return arr if len(dims) == 1 else arr.reshape(dims)
        tensor = _torch().frombuffer(memory, dtype=_torch_dtype(self.name))
        return tensor if len(dims) == 1 else tensor.view(dims)


# buffers of map entries whose copy waits for the end of the parse: (map, key, placeholder)
_Pending = list[tuple[dict[Any, Any], Any, _Buffer]]


def _hashable(key: Any) -> Any:
    try:
        hash(key)
    except TypeError:
        _bad("unhashable map key")
    return key


def _extension_value(obj: dict[Any, Any]) -> tuple[Any, Any] | None:
    if len(obj) != 2 or "__type__" not in obj or "value" not in obj:
        return None
    return obj["__type__"], obj["value"]


# an older writer's "int" ext (Fed-BioMed v4.5, fedpipe before it wrote Fed-BioMed 6.4.1's form)
# holds an int of at least 2**64 in minimal unsigned bytes: at least this many, the first non-zero
_OLD_INT_MIN_BYTES: Final = 9


def _read_signed(raw: bytes) -> bool:
    """Whether an "int" ext's bytes are read signed, as Fed-BioMed 6.4.1 reads them, rather than
    unsigned, as its older writers meant them (the rule and its one ambiguity: ``fedpipe.codec.core``).

    Signed, unless the bytes are ones that 6.4.1 never writes (their length is not
    ``ceil(bit_length / 8) + 1`` for their signed value) and an older writer may have written
    (at least 9 bytes, the first non-zero), where the two readings differ (top bit set). Of those,
    6.4.1's form of a negative int starts 0xFF and has the rest in (0, 0xFF00...00]; any other first
    byte from 0x80 on gives a value whose 6.4.1 form is longer. Decided on the bytes, so that no
    second int of their size is made."""
    if len(raw) < _OLD_INT_MIN_BYTES or raw[0] < 0x80:
        return True  # no older writer wrote these, or both readings agree
    if raw[0] != 0xFF:
        return False
    if raw[1] == 0xFF:
        return raw.count(0, 2) == len(raw) - 2  # -(2**(8 * (len - 2))): 0xFF 0xFF then zeros
    return raw.count(0, 1) != len(raw) - 1


# Fed-BioMed 6.x ext types that readers of the payload expect as their dicts (a metric named in
# the training arguments): kept as dicts, like any unknown type, but not worth a warning.
_KEPT_AS_DICTS: Final = frozenset({"MetricTypes"})


def _apply_extension(obj: dict[Any, Any], reader: _Reader, charged: int) -> Any:
    """Turn an ext dict (charged ``charged``) into its object; an unknown ``__type__`` keeps the
    dict, as the reference does. The object is charged to ``reader``, then what it leaves as
    garbage (the dict, and its value when the object does not hold it) is given back."""
    ext = _extension_value(obj)
    if ext is None:
        return obj
    kind, value = ext
    if not isinstance(kind, str):
        return obj
    limits = reader.limits
    out: Any
    if kind == "tuple":
        if not isinstance(value, list):
            _bad("tuple value must be a list")
        reader.charge(_TUPLE + _SLOT * len(value))
        out = tuple(value)
        garbage = _LIST + _SLOT * len(value)  # the list: its items are the tuple's now
    elif kind in ("int", "fedpipe.int"):
        if not isinstance(value, bytes):
            _bad("int value must be bytes")
        if len(value) > limits.max_int_bytes:
            _bad(f"integer longer than {limits.max_int_bytes} bytes")
        reader.charge(_alloc(24 + 4 * ((8 * len(value) + 29) // 30)))  # a 4-byte digit per 30 bits
        out = int.from_bytes(value, "big", signed=kind == "fedpipe.int" or _read_signed(value))
        garbage = _bytes_cost(len(value))
    elif kind in _BUFFER_KINDS:
        if not isinstance(value, list) or len(value) != 3 or not isinstance(value[0], bytes):
            _bad(f"{kind} value must be [bytes, dtype, shape]")
        out = _buffer(kind, memoryview(value[0]), value[1], value[2], reader)
        garbage = _LIST + 3 * _SLOT + _bytes_cost(len(value[0]))  # the array has a copy of the bytes
    elif kind == "np.generic":
        if not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], bytes):
            _bad("np.generic value must be [bytes, dtype]")
        spec = parse_dtype(value[1], limits.dtypes - {BFLOAT16})
        if spec is None:
            _bad("np.generic dtype not allowed")
        dt = np.dtype(spec[0]).newbyteorder(spec[1])
        if len(value[0]) != dt.itemsize:
            _bad("np.generic byte length does not match its dtype")
        reader.charge(_NUMPY_SCALAR)
        out = np.frombuffer(value[0], dtype=dt).astype(dt.newbyteorder("="))[0]
        garbage = _LIST + 2 * _SLOT + _bytes_cost(len(value[0]))
    else:
        if len(reader.unknown) < 8 and kind not in _KEPT_AS_DICTS:
            reader.unknown.add(kind[:64])
        return obj
    reader.refund(charged + garbage)
    return out


def _shape(shape: Any, limits: Limits) -> tuple[tuple[int, ...], int]:
    if not isinstance(shape, list) or len(shape) > limits.max_dims:
        _bad("array shape must be a list of at most max_dims sizes")
    count = bound = 1
    for s in shape:
        if type(s) is not int or s < 0 or s >= _MAX_DIM:
            _bad("array shape sizes must be non-negative ints")
        count *= s
        bound *= max(s, 1)
    if bound >= _MAX_DIM:  # numpy refuses such shapes even when empty
        _bad("array shape too large")
    return tuple(shape), count


def _buffer(kind: str, raw: memoryview, dtype: Any, shape: Any, reader: _Reader) -> Any:
    """A fresh writable array or tensor from one copy of ``raw`` (charged to ``reader``), after
    checking its description."""
    limits = reader.limits
    spec = parse_dtype(dtype, limits.dtypes)
    if spec is None or (spec[0] == BFLOAT16 and kind != "fedpipe.tensor"):
        _bad(f"{kind} dtype not allowed")
    dims, count = _shape(shape, limits)
    dt = _STORAGE[spec]
    if count * dt.itemsize != len(raw):
        _bad(f"{kind} byte length does not match shape and dtype")
    reader.charge(_BUFFER + len(raw))
    # a byte copy is a memcpy whatever the alignment of ``raw`` in the input
    arr = np.empty(dims, dtype=dt.newbyteorder("=") if not dt.isnative else dt)
    arr.reshape(-1).view(np.uint8)[:] = np.frombuffer(raw, dtype=np.uint8)
    if not dt.isnative:
        arr.byteswap(inplace=True)
    if kind == "np.ndarray":
        return arr
    torch = _torch()
    tensor = torch.from_numpy(arr)
    return tensor.view(torch.bfloat16) if spec[0] == BFLOAT16 else tensor


# (name, byte order) -> the numpy dtype that holds it (bfloat16 is stored as int16)
_STORAGE: Final = {
    (name, order): np.dtype("int16" if name == BFLOAT16 else name).newbyteorder(order)
    for name in ALLOWED_DTYPES
    for order in ("<", ">")
}


_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
_BIN_LENGTH: Final = {0xC4: _U8, 0xC5: _U16, 0xC6: _U32}
_UINT_WIDTH: Final = {0xCC: _U8, 0xCD: _U16, 0xCE: _U32, 0xCF: _U64}

_NOT_PLAIN: Final = object()


def _fixstr(text: str) -> bytes:
    raw = text.encode("ascii")
    return bytes((0xA0 | len(raw),)) + raw


# the kind's fixstr header byte (their lengths differ) -> (kind, everything up to the bin header)
_BUFFER_PREFIXES: Final = {
    0xA0 | len(kind): (kind, _fixstr(kind) + _VALUE_KEY + b"\x93") for kind in _BUFFER_KINDS
}
# dtype names as encoders write them (fixstr, little-endian) -> (name, native storage dtype);
# only on a little-endian host, where no byte swap is needed
_NATIVE_DTYPE_BYTES: Final = (
    {_fixstr(name): (name, _STORAGE[name, "<"].newbyteorder("=")) for name in ALLOWED_DTYPES}
    if sys.byteorder == "little"
    else {}
)


def _bin(fmt: struct.Struct) -> Any:
    return lambda r, _d: r.bytes_of(r.unpack(fmt))


def _str(fmt: struct.Struct) -> Any:
    return lambda r, _d: r.string(r.unpack(fmt))


def _int(fmt: struct.Struct) -> Any:
    return lambda r, _d: r.integer(r.unpack(fmt))


def _float(fmt: struct.Struct) -> Any:
    def read(r: _Reader, _d: int) -> float:
        r.charge(_FLOAT)
        return r.unpack(fmt)  # type: ignore[no-any-return]

    return read


_HANDLERS: Final[dict[int, Any]] = {
    0xC0: lambda r, _d: None,
    0xC2: lambda r, _d: False,
    0xC3: lambda r, _d: True,
    0xC4: _bin(_U8),
    0xC5: _bin(_U16),
    0xC6: _bin(_U32),
    0xCA: _float(_F32),
    0xCB: _float(_F64),
    0xCC: lambda r, _d: r.unpack(_U8),  # 0..255: shared ints
    0xCD: _int(_U16),
    0xCE: _int(_U32),
    0xCF: _int(_U64),
    0xD0: _int(_I8),
    0xD1: _int(_I16),
    0xD2: _int(_I32),
    0xD3: _int(_I64),
    0xD9: _str(_U8),
    0xDA: _str(_U16),
    0xDB: _str(_U32),
    0xDC: lambda r, d: r.array(r.unpack(_U16), d),
    0xDD: lambda r, d: r.array(r.unpack(_U32), d),
    0xDE: lambda r, d: r.map(r.unpack(_U16), d),
    0xDF: lambda r, d: r.map(r.unpack(_U32), d),
}


def _materialize(pending: _Pending, buf: memoryview) -> None:
    """Copy the pending buffers out of ``buf``, back to back once the whole input is read and
    checked (so a bad input costs no copy), into their maps.

    When the large ones add up to a model's worth of memory they share one block that numpy
    allocates (with huge pages where the kernel gives them): one allocation instead of one per
    layer, and a fraction of the page faults. Each array or tensor is a distinct, writable,
    aligned view of it; the block is freed with the last of them."""
    live = _live(pending)
    shared = block_size = count = 0
    for entry in live:
        nbytes = entry[2].nbytes
        if nbytes >= _SHARED_MIN:
            shared += nbytes
            block_size += _aligned(nbytes)
            count += 1
    if count < 2 or shared < _NUMPY_ALLOCATED:
        for target, key, item in live:
            target[key] = item.materialize(buf)
        return
    block = np.empty(block_size, dtype=np.uint8).data
    offset = 0
    for target, key, item in live:
        nbytes = item.nbytes
        if nbytes < _SHARED_MIN:
            target[key] = item.materialize(buf)
            continue
        part = block[offset : offset + nbytes]
        part[:] = buf[item.start : item.start + nbytes]
        offset += _aligned(nbytes)
        target[key] = item.over(part)


def _live(pending: _Pending) -> _Pending:
    """The pending buffers still in their maps (a duplicate key drops the earlier value)."""
    return [entry for entry in pending if entry[0].get(entry[1]) is entry[2]]


def _aligned(nbytes: int) -> int:
    return (nbytes + 63) & ~63


def _wrap(kind: str, name: str, arr: np.ndarray[Any, Any]) -> Any:
    """``arr`` as its ext type: itself, or a tensor over its memory."""
    if kind == "np.ndarray":
        return arr
    torch = _torch()
    tensor = torch.from_numpy(arr)
    return tensor.view(torch.bfloat16) if name == BFLOAT16 else tensor


# skeletons -----------------------------------------------------------------------------------
#
# A node decodes payloads of the same layout round after round: the same keys, dtypes and shapes,
# only the parameter bytes change. A skeleton records, for one (input size, limits), every byte of
# a decoded input except the payloads of its state-dict buffers, with the decoded structure. An
# input of that size whose bytes outside those payloads are exactly the recorded ones decodes to
# the same structure under the same limits (the parser never looks inside a buffer's payload, and
# the payloads lie where the recorded bin headers put them), so its structure is rebuilt from the
# record instead of parsed again; only the payloads are then copied from it.

# only small structures are recorded: elements counted (values and entries), skeleton bytes kept
_SKELETON_MAX_ELEMENTS: Final = 4096
_SKELETON_MAX_BYTES: Final = 64 * 1024
_SKELETON_SLOTS: Final = 16
# the exact types a recorded structure may hold: containers are rebuilt fresh on each use, the
# other values are immutable and shared
_IMMUTABLE: Final = frozenset({str, bytes, int, float, bool, type(None)})


class _Skeleton(NamedTuple):
    segments: tuple[tuple[int, bytes], ...]  # (offset, exact bytes) of all but the payloads
    template: Any  # the decoded structure, its state-dict buffers as _Buffer placeholders

    def matches(self, buf: memoryview) -> bool:
        return all(buf[start : start + len(expected)] == expected for start, expected in self.segments)


_SKELETONS: dict[tuple[int, Limits], _Skeleton] = {}
_SKELETONS_LOCK: Final = threading.Lock()


def _rebuild(node: Any, pending: _Pending) -> Any:
    """Fresh containers over ``node``'s structure; its _Buffer entries are listed in ``pending``."""
    kind = type(node)
    if kind is dict:
        out: dict[Any, Any] = {}
        for key, value in node.items():
            if type(value) is _Buffer:
                out[key] = value
                pending.append((out, key, value))
            elif type(value) in _IMMUTABLE:
                out[key] = value
            else:
                out[key] = _rebuild(value, pending)
        return out
    if kind is list:
        items = list(node)  # allocated at its length, as the parse did
        for i, item in enumerate(items):
            if type(item) not in _IMMUTABLE:
                items[i] = _rebuild(item, pending)
        return items
    if kind is tuple:
        return tuple([_rebuild(item, pending) for item in node])
    return node


_UNRECORDABLE: Final = object()


def _template(node: Any) -> Any:
    """A copy of ``node``'s containers to keep in a skeleton, its pending buffers as they are;
    ``_UNRECORDABLE`` if it holds anything but containers, immutable scalars and, as map values,
    pending buffers. (Its depth is bounded by ``Limits.max_depth``.)"""
    kind = type(node)
    if kind in _IMMUTABLE:
        return node
    if kind is dict:
        out: dict[Any, Any] = {}
        for key, value in node.items():
            item = value if type(value) is _Buffer else _template(value)
            if item is _UNRECORDABLE or type(key) not in _IMMUTABLE:
                return _UNRECORDABLE
            out[key] = item
        return out
    if kind is list or kind is tuple:
        items = [_template(item) for item in node]
        if any(item is _UNRECORDABLE for item in items):
            return _UNRECORDABLE
        return items if kind is list else tuple(items)
    return _UNRECORDABLE


def _remember(buf: memoryview, limits: Limits, obj: Any, reader: _Reader) -> None:
    """Record the skeleton of a just-parsed input (before its buffers are materialized)."""
    elements = limits.max_elements - reader.budget
    if reader.unknown or elements > _SKELETON_MAX_ELEMENTS:
        return
    live = _live(reader.pending)
    kept = len(buf) - sum(item.nbytes for _, _, item in live)  # all but the payloads
    if kept > _SKELETON_MAX_BYTES:
        return
    # the record is made within what the parse may still allocate: 128 bytes per element of the
    # structure it copies, its bytes, 160 per (offset, bytes) segment, 1 KiB for the rest
    if 128 * elements + kept + 160 * (len(live) + 1) + 1024 > reader.memory:
        return
    holes = sorted((item.start, item.start + item.nbytes) for _, _, item in live)
    segments: list[tuple[int, bytes]] = []
    offset = 0
    for start, stop in [*holes, (len(buf), len(buf))]:
        if start > offset:
            segments.append((offset, bytes(buf[offset:start])))
        offset = stop
    template = _template(obj)
    if template is _UNRECORDABLE:
        return
    with _SKELETONS_LOCK:
        if len(_SKELETONS) >= _SKELETON_SLOTS:
            _SKELETONS.pop(next(iter(_SKELETONS)))
        _SKELETONS[len(buf), limits] = _Skeleton(tuple(segments), template)


def decode(buf: memoryview, limits: Limits) -> Any:
    """Decode exactly one object filling ``buf``; raise Bad for anything malformed or over limits."""
    skeleton = _SKELETONS.get((len(buf), limits))
    if skeleton is not None and skeleton.matches(buf):
        # within the memory bound: the parse that recorded it fit the same one (same input size
        # and limits), and a rebuild makes no more than its containers and buffers
        pending: _Pending = []
        obj = _rebuild(skeleton.template, pending)
        _materialize(pending, buf)
        return obj
    reader = _Reader(buf, limits)
    obj = reader.value(0)
    if reader.pos != reader.end:
        _bad("extra bytes after the object")
    if reader.pending:
        _remember(buf, limits, obj, reader)
    _materialize(reader.pending, buf)
    if reader.unknown:
        log.warning("payload holds ext dicts of unknown __type__ %s; kept as dicts", sorted(reader.unknown))
    return obj
