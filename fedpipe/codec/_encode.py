"""Encoder: objects to msgpack chunks, array memory passed through as views instead of copies.

Small subtrees are packed by msgpack's C packer in one call; a subtree that holds a large array or
tensor is walked here so that the array's memory becomes a chunk of its own (a ``memoryview``).
``dumps`` joins the chunks (one copy of each array), ``dump_file`` writes them (no copy at all).
"""

import struct
import sys
import threading
from collections.abc import Mapping
from itertools import islice
from typing import Any

import msgpack
import numpy as np
from attrs import frozen

from fedpipe.codec.dtypes import ALLOWED_DTYPES, BFLOAT16
from fedpipe.views import ListView, TupleView

__all__ = ["CodecError", "encode_chunks"]

Chunk = bytes | memoryview

# An array at least this large is written from its own memory rather than through tobytes().
LARGE_BUFFER = 64 * 1024
MAX_ENCODE_DEPTH = 256

_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1
_MAX_BIN = 2**32 - 1


class CodecError(TypeError):
    """An object that the codec cannot encode (a programming error, not bad input)."""


class _Large(Exception):
    """Raised inside msgpack's default hook: this subtree holds a large buffer, walk it instead."""


def _big_int(value: int) -> dict[str, Any]:
    """Fed-BioMed 6.4.1's "int" ext for an int beyond 64 bits, byte for byte: two's complement in
    ``ceil(bit_length / 8) + 1`` big-endian bytes, whatever the sign (see ``fedpipe.codec.core``)."""
    length = (value.bit_length() + 7) // 8 + 1
    return {"__type__": "int", "value": value.to_bytes(length, "big", signed=True)}


def _torch_module() -> Any:
    # never imported here: if torch is not loaded, no object can be a tensor
    return sys.modules.get("torch")


@frozen
class _TorchDtypes:
    """The torch dtypes that the encoder views through numpy, with the dtype name each is written
    under (bfloat16 goes through numpy as int16 patterns); none on a big-endian host, where
    every tensor takes the general path that writes it little-endian."""

    names: dict[Any, str]
    int16: Any


_TORCH_DTYPES: list[_TorchDtypes] = []


def _numpy_dtypes() -> _TorchDtypes:
    if not _TORCH_DTYPES:
        torch = _torch_module()
        names = {getattr(torch, name): name for name in ALLOWED_DTYPES if hasattr(torch, name)}
        _TORCH_DTYPES.append(_TorchDtypes(names if sys.byteorder == "little" else {}, torch.int16))
    return _TORCH_DTYPES[0]


def _is_tensor(obj: object) -> bool:
    torch = _torch_module()
    return torch is not None and isinstance(obj, torch.Tensor)


# exact types that msgpack packs natively and that cannot hold a buffer (no default hook needed)
_PLAIN = frozenset({str, float, bool, type(None), bytes})
_plain_packer = msgpack.Packer(use_bin_type=True, strict_types=True, autoreset=True)
# shapes: a list or tuple of ints below 2**63, packed as an array either way
_shape_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


# dtype -> name for the allowed dtypes in little-endian order (a dict lookup beats dtype.name)
_LITTLE_NAMES: dict[np.dtype[Any], str] = {
    np.dtype(name).newbyteorder("<"): name for name in ALLOWED_DTYPES if name != BFLOAT16
}


def _array_parts(arr: np.ndarray[Any, Any]) -> tuple[memoryview, str, list[int]]:
    name = _LITTLE_NAMES.get(arr.dtype)
    if name is None:
        name = _LITTLE_NAMES.get(arr.dtype.newbyteorder("<"))
        if name is None or arr.dtype.fields is not None:
            raise CodecError(f"Cannot serialize an array of dtype {arr.dtype.str!r}")
        arr = arr.astype(arr.dtype.newbyteorder("<"))  # big-endian: written little-endian
    elif not arr.flags.c_contiguous:
        arr = arr.copy(order="C")
    if arr.nbytes > _MAX_BIN:
        raise CodecError("Cannot serialize an array larger than 4 GiB (msgpack bin limit)")
    flat: Any = arr.reshape(-1).view(np.uint8)
    return memoryview(flat), name, list(arr.shape)


def _is_large(obj: object) -> bool:
    if isinstance(obj, np.ndarray):
        return obj.nbytes >= LARGE_BUFFER
    return _is_tensor(obj) and obj.numel() * obj.element_size() >= LARGE_BUFFER  # type: ignore[attr-defined]


# a child container up to this size is looked into before trying to pack its parent in one C call
_PEEK = 256


def _holds_large(obj: object) -> bool:
    """A large buffer, or a small container with a large buffer right inside (a state dict in a
    payload): either way the parent is walked here rather than packed in C and abandoned."""
    if isinstance(obj, dict | list | tuple):
        if len(obj) > _PEEK:
            return False
        return any(_is_large(child) for child in (obj.values() if isinstance(obj, dict) else obj))
    return _is_large(obj)


def _tensor_parts(tensor: Any) -> tuple[str, memoryview, str, list[int]]:
    """(ext type, little-endian memory, dtype name, shape) of a tensor, on the CPU, without grad."""
    torch = _torch_module()
    t = tensor.detach()
    if t.layout != torch.strided:
        raise CodecError(f"Cannot serialize a tensor with layout {t.layout}")
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_conj() or t.is_neg() or not t.is_contiguous():
        t = t.resolve_conj().resolve_neg().contiguous()
    if t.dtype == torch.bfloat16:
        # numpy has no bfloat16: the raw 16-bit patterns travel under a fedpipe ext type
        mem, _, shape = _array_parts(t.view(torch.int16).numpy())
        return "fedpipe.tensor", mem, BFLOAT16, shape
    try:
        arr = t.numpy()
    except TypeError as err:
        raise CodecError(f"Cannot serialize a tensor of dtype {t.dtype}") from err
    mem, name, shape = _array_parts(arr)
    return "torch.Tensor", mem, name, shape


def _small_default(obj: Any) -> Any:
    """msgpack's default hook: every non-native type, except large buffers (raises _Large)."""
    if isinstance(obj, tuple | TupleView):  # read-only views (fedpipe.views) as what they show
        return {"__type__": "tuple", "value": list(obj)}
    if isinstance(obj, np.ndarray):
        if obj.nbytes >= LARGE_BUFFER:
            raise _Large
        mem, name, shape = _array_parts(obj)
        return {"__type__": "np.ndarray", "value": [mem.tobytes(), name, shape]}
    if isinstance(obj, np.generic):
        mem, name, _ = _array_parts(np.asarray(obj))
        return {"__type__": "np.generic", "value": [mem.tobytes(), name]}
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj) if _INT64_MIN <= obj <= _UINT64_MAX else _big_int(int(obj))
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, bytes | bytearray):
        return bytes(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, list | ListView):
        return list(obj)
    if _is_tensor(obj):
        if obj.numel() * obj.element_size() >= LARGE_BUFFER:
            raise _Large
        kind, mem, name, shape = _tensor_parts(obj)
        return {"__type__": kind, "value": [mem.tobytes(), name, shape]}
    raise CodecError(f"Cannot serialize object of type {type(obj).__name__!r}")


# one packer with our default hook per thread, kept between calls (creating one allocates its
# 256 KiB buffer) unless it has grown past this: a packer never gives back its grown buffer
_packers = threading.local()
_KEEP_PACKER_BELOW = 1024 * 1024


def _packb(obj: Any) -> bytes:
    # taken from the thread while in use, so that a nested call (a hook that encodes) makes its own
    packer = _packers.__dict__.pop("packer", None)
    if packer is None:
        packer = msgpack.Packer(default=_small_default, strict_types=True, use_bin_type=True, autoreset=True)
    try:
        packed: bytes = packer.pack(obj)
    except ValueError as err:  # msgpack: nesting deeper than its limit, or a str/bin over 4 GiB
        raise CodecError(f"Cannot serialize: {err}") from err
    except BaseException:
        _packers.packer = packer  # an exception empties the packer's buffer
        raise
    if len(packed) < _KEEP_PACKER_BELOW:
        _packers.packer = packer
    return packed


def _header(small: int, codes: tuple[int, int, int], n: int) -> bytes:
    if n < 16 and small:
        return bytes((small | n,))
    if n <= 0xFFFF:
        return struct.pack(">BH", codes[1], n)
    return struct.pack(">BI", codes[2], n)


def _map_header(n: int) -> bytes:
    return _header(0x80, (0, 0xDE, 0xDF), n)


def _array_header(n: int) -> bytes:
    return _header(0x90, (0, 0xDC, 0xDD), n)


def _bin_header(n: int) -> bytes:
    if n <= 0xFF:
        return struct.pack(">BB", 0xC4, n)
    if n <= 0xFFFF:
        return struct.pack(">BH", 0xC5, n)
    return struct.pack(">BI", 0xC6, n)


_EXT_HEAD = _map_header(2) + _packb("__type__")
_VALUE_KEY = _packb("value")
_ARRAY3 = _array_header(3)
_PACKED = {text: _packb(text) for text in ALLOWED_DTYPES}
# everything of a buffer's ext dict that comes before its bin header, per ext type
_BUFFER_HEAD = {
    kind: _EXT_HEAD + _packb(kind) + _VALUE_KEY + _ARRAY3
    for kind in ("np.ndarray", "torch.Tensor", "fedpipe.tensor")
}


# (map key or None, ext type, dtype name, shape) -> the bytes before and after the array's memory
# in its ext dict, the packed key first when the array is a map's entry; a model's layers keep
# their names and shapes from round to round, and building these is a good part of encoding a layer
_FRAMES: dict[tuple[str | None, str, str, tuple[int, ...]], tuple[bytes, bytes]] = {}
_MAX_FRAMES = 4096


def _frame(
    kind: str, name: str, shape: tuple[int, ...], nbytes: int, key: str | None = None
) -> tuple[bytes, bytes]:
    """The head and tail of the ext dict of an array of ``nbytes`` bytes, preceded by ``key``
    (a str map key) when given."""
    cache_key = (key, kind, name, shape)
    frame = _FRAMES.get(cache_key)
    if frame is None:
        head = _BUFFER_HEAD[kind] + _bin_header(nbytes)
        if key is not None:
            head = _plain_packer.pack(key) + head
        frame = (head, _PACKED[name] + _shape_packer.pack(shape))
        if len(_FRAMES) >= _MAX_FRAMES:
            _FRAMES.clear()
        _FRAMES[cache_key] = frame
    return frame


class _Walker:
    def __init__(self) -> None:
        self.chunks: list[Chunk] = []

    def node(self, obj: Any, depth: int) -> None:
        kind = type(obj)
        if kind in _PLAIN or (kind is int and _INT64_MIN <= obj <= _UINT64_MAX):
            self.chunks.append(_plain_packer.pack(obj))
            return
        if depth > MAX_ENCODE_DEPTH:
            raise CodecError(f"Cannot serialize: nesting deeper than {MAX_ENCODE_DEPTH}")
        if kind is dict:
            self.mapping(obj, depth)
        elif kind is list or kind is tuple:
            self.sequence(obj, depth)
        elif isinstance(obj, np.ndarray) and obj.nbytes >= LARGE_BUFFER:
            self.buffer("np.ndarray", *_array_parts(obj))  # converted, copied or refused there
        elif _is_tensor(obj):
            self.tensor(obj)
        elif isinstance(obj, Mapping):
            self.mapping(obj, depth)
        elif isinstance(obj, list | tuple | ListView | TupleView):
            self.sequence(obj, depth)
        else:  # scalars of other types, small arrays: msgpack's C packer with our default hook
            self.chunks.append(_packb(obj))

    def packed_whole(self, obj: Any, children: Any) -> bool:
        """Pack ``obj`` in one C call unless one of its first children holds a large buffer; the
        packer bails out (_Large) on a large buffer further in, and the caller walks ``obj``."""
        if any(map(_holds_large, islice(children, _PEEK))):
            return False
        try:
            self.chunks.append(_packb(obj))
        except _Large:
            return False
        return True

    def mapping(self, obj: Mapping[Any, Any], depth: int) -> None:
        if self.packed_whole(obj, obj.values()):
            return
        chunks = self.chunks
        chunks.append(_map_header(len(obj)))
        torch = _torch_module()
        tensor_type = torch.Tensor if torch is not None else ()
        for key, value in obj.items():
            if type(key) is str:
                if isinstance(value, tensor_type):
                    self.tensor(value, key)  # a state dict's entry, its key written with it
                    continue
                chunks.append(_plain_packer.pack(key))
            else:
                self.node(key, depth + 1)
            self.node(value, depth + 1)

    def sequence(self, items: list[Any] | tuple[Any, ...] | ListView | TupleView, depth: int) -> None:
        if self.packed_whole(items, items):
            return
        if isinstance(items, tuple | TupleView):
            self.chunks += (_EXT_HEAD, _packb("tuple"), _VALUE_KEY)
        self.chunks.append(_array_header(len(items)))
        for item in items:
            self.node(item, depth + 1)

    def tensor(self, tensor: Any, key: str | None = None) -> None:
        """A tensor of any size, preceded by ``key`` when it is the entry of a map.

        The common case (a large contiguous CPU tensor of a numpy dtype or bfloat16) goes out
        through its numpy view with few torch calls: each costs microseconds when torch's code is
        not in the CPU's caches, the usual state when a payload is encoded once per round. What
        ``numpy()`` refuses (on a GPU, sparse, conjugate or negative views), non-contiguous and
        small tensors take the general path."""
        kinds = _numpy_dtypes()
        name = kinds.names.get(tensor.dtype)
        if name is not None:
            t = tensor.detach() if tensor.requires_grad else tensor
            try:
                arr = t.view(kinds.int16).numpy() if name == BFLOAT16 else t.numpy()
            except (TypeError, RuntimeError):
                arr = None
            if arr is not None:
                mem = arr.data
                if mem.c_contiguous and LARGE_BUFFER <= mem.nbytes <= _MAX_BIN:
                    kind = "fedpipe.tensor" if name == BFLOAT16 else "torch.Tensor"
                    head, tail = _frame(kind, name, mem.shape, mem.nbytes, key)
                    self.chunks += (head, mem, tail)
                    return
        if key is not None:
            self.chunks.append(_plain_packer.pack(key))
        self.general_tensor(tensor)

    def general_tensor(self, tensor: Any) -> None:
        """Any other tensor: moved, detached, resolved or refused by ``_tensor_parts``."""
        if tensor.numel() * tensor.element_size() >= LARGE_BUFFER:
            self.buffer(*_tensor_parts(tensor))
        else:
            self.chunks.append(_packb(tensor))

    def buffer(self, kind: str, mem: memoryview, dtype: str, shape: list[int]) -> None:
        """A large array's memory (C-contiguous, little-endian): a chunk of its own, uncopied."""
        head, tail = _frame(kind, dtype, tuple(shape), mem.nbytes)
        self.chunks += (head, mem, tail)


def encode_chunks(obj: Any) -> list[Chunk]:
    """The msgpack encoding of ``obj`` as a list of chunks; array memory is referenced, not copied.

    Raises CodecError for a type the codec does not know.

    >>> b"".join(encode_chunks({"a": (1, -(2**70))}))[:13]
    b'\\x81\\xa1a\\x82\\xa8__type__'
    """
    walker = _Walker()
    walker.node(obj, 0)
    return walker.chunks
