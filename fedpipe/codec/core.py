"""Encoding and decoding of payload files (parameters, aux vars, results, node state).

Extension dicts (a map with exactly the keys ``__type__`` and ``value``), as the reference writes them:

| object            | ``__type__``     | ``value``                                   |
|-------------------|------------------|---------------------------------------------|
| int beyond 64 bit | "int"            | big-endian unsigned bytes                   |
| tuple             | "tuple"          | list of items                               |
| numpy ndarray     | "np.ndarray"     | [raw C-order bytes, dtype name, shape]      |
| numpy scalar      | "np.generic"     | [raw bytes, dtype name]                     |
| torch Tensor      | "torch.Tensor"   | as ndarray (CPU)                            |
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from attrs import frozen
from returns.result import Failure, Result, Success

__all__ = [
    "DEFAULT_LIMITS",
    "CodecError",
    "DecodeError",
    "Limits",
    "dump_file",
    "dumps",
    "load_file",
    "loads",
]


class CodecError(TypeError):
    """An object that the codec cannot encode (a programming error, not bad input)."""


@frozen(kw_only=True)
class DecodeError:
    """Why some bytes are not a valid payload."""

    reason: str


@frozen(kw_only=True)
class Limits:
    """Bounds on what decoding untrusted bytes may allocate."""

    max_bytes: int = 4 * 1024**3
    max_depth: int = 64
    max_elements: int = 10_000_000
    max_str_bytes: int = 64 * 1024**2


DEFAULT_LIMITS = Limits()

_DTYPES = frozenset(
    {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    }
)


def _default(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return {"__type__": "tuple", "value": list(obj)}
    if isinstance(obj, int) and not isinstance(obj, bool):
        if obj < 0:
            raise CodecError("negative integers beyond 64 bits are not supported yet")
        return {"__type__": "int", "value": obj.to_bytes((obj.bit_length() + 7) // 8 or 1, "big")}
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)  # 0-d input comes back 1-d: the shape is taken from obj
        return {"__type__": "np.ndarray", "value": [arr.tobytes(), arr.dtype.name, list(obj.shape)]}
    if isinstance(obj, np.generic):
        return {"__type__": "np.generic", "value": [obj.tobytes(), obj.dtype.name]}
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, list):
        return list(obj)
    if type(obj).__module__.startswith("torch") and type(obj).__name__ in ("Tensor", "Parameter"):
        arr = obj.detach().cpu().numpy()
        return {"__type__": "torch.Tensor", "value": _default(arr)["value"]}
    raise CodecError(f"Cannot serialize object of type {type(obj).__name__!r}")


def dumps(obj: Any) -> bytes:
    """Encode ``obj``; raise CodecError for an unsupported type.

    >>> loads(dumps({"a": (1, 2**70)})).unwrap()
    {'a': (1, 1180591620717411303424)}
    """
    return msgpack.packb(obj, default=_default, strict_types=True, use_bin_type=True)  # type: ignore[no-any-return]


class _Bad(Exception):
    pass


def _array(value: Any) -> np.ndarray[Any, Any]:
    if not isinstance(value, list) or len(value) != 3:
        raise _Bad("np.ndarray value must be [bytes, dtype, shape]")
    raw, dtype, shape = value
    if not isinstance(raw, bytes) or dtype not in _DTYPES or not isinstance(shape, list):
        raise _Bad("bad np.ndarray payload")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise _Bad("bad np.ndarray shape")
    dt = np.dtype(dtype)
    count = 1
    for s in shape:
        count *= s
    if count * dt.itemsize != len(raw):
        raise _Bad("np.ndarray byte length does not match shape and dtype")
    return np.frombuffer(raw, dtype=dt).reshape(shape).copy()


def _hook(obj: dict[Any, Any]) -> Any:
    if len(obj) != 2 or "__type__" not in obj or "value" not in obj:
        return obj
    kind, value = obj["__type__"], obj["value"]
    if kind == "tuple":
        if not isinstance(value, list):
            raise _Bad("tuple value must be a list")
        return tuple(value)
    if kind == "int":
        if not isinstance(value, bytes):
            raise _Bad("int value must be bytes")
        return int.from_bytes(value, "big")
    if kind == "np.ndarray":
        return _array(value)
    if kind == "np.generic":
        if not isinstance(value, list) or len(value) != 2:
            raise _Bad("np.generic value must be [bytes, dtype]")
        raw, dtype = value
        if not isinstance(raw, bytes) or dtype not in _DTYPES or len(raw) != np.dtype(dtype).itemsize:
            raise _Bad("bad np.generic payload")
        return np.frombuffer(raw, dtype=np.dtype(dtype))[0]
    if kind == "torch.Tensor":
        import torch

        return torch.from_numpy(_array(value))
    return obj


def loads(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Result[Any, DecodeError]:
    """Decode one object; any malformed or over-limit input is a Failure, never an exception."""
    if len(data) > limits.max_bytes:
        return Failure(DecodeError(reason=f"payload larger than {limits.max_bytes} bytes"))
    try:
        return Success(
            msgpack.unpackb(
                data,
                object_hook=_hook,
                strict_map_key=False,
                raw=False,
                max_str_len=limits.max_str_bytes,
                max_bin_len=limits.max_bytes,
                max_array_len=limits.max_elements,
                max_map_len=limits.max_elements,
                max_ext_len=0,
            )
        )
    except (
        _Bad,
        ValueError,
        TypeError,
        KeyError,
        RecursionError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
    ) as err:
        return Failure(DecodeError(reason=str(err) or type(err).__name__))


def dump_file(obj: Any, path: Path, *, durable: bool = False) -> None:
    """Encode ``obj`` into ``path`` atomically (a temporary sibling renamed into place).

    ``durable`` also flushes the file to disk before the rename (for state that must survive a
    crash); workspace files that live only for the round skip that cost.
    """
    data = dumps(obj)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_file(path: Path, limits: Limits = DEFAULT_LIMITS) -> Result[Any, DecodeError]:
    """Decode the object in the file at ``path``; an unreadable file is a Failure too."""
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            return Failure(DecodeError(reason=f"payload larger than {limits.max_bytes} bytes"))
        data = path.read_bytes()
    except OSError as err:
        return Failure(DecodeError(reason=f"cannot read payload file: {err.strerror or type(err).__name__}"))
    return loads(data, limits)
