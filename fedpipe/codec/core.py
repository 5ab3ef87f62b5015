"""Encoding and decoding of payload files (parameters, aux vars, results, node state).

Extension dicts (a map with exactly the keys ``__type__`` and ``value``). The first five are the
reference's and are read and written byte-compatibly; the ``fedpipe.*`` ones are extensions that
the reference's decoder leaves as plain dicts (it does so for any unknown ``__type__``):

| object                  | ``__type__``     | ``value``                                          |
|-------------------------|------------------|----------------------------------------------------|
| int beyond 64 bit, >= 0 | "int"            | big-endian unsigned bytes                          |
| tuple                   | "tuple"          | list of items                                      |
| numpy ndarray           | "np.ndarray"     | [raw C-order little-endian bytes, dtype name, shape] |
| numpy scalar            | "np.generic"     | [raw little-endian bytes, dtype name]              |
| torch Tensor            | "torch.Tensor"   | as ndarray (CPU)                                   |
| negative int < -2**63   | "fedpipe.int"    | big-endian two's complement bytes                  |
| bfloat16 torch Tensor   | "fedpipe.tensor" | [raw little-endian 16-bit patterns, "bfloat16", shape] |

Dtype names are written without a byte-order marker (as the reference does); decoding also accepts
an explicit order (see ``fedpipe.codec.dtypes``). Decoding is a limit-checking parser of our own:
it never raises and never unpickles. Its limits (``Limits``) count every value, an empty map or
list included, and bound its memory: decoding ``n`` bytes allocates at most
``memory_factor * n + memory_constant`` bytes (by default 16 times the input plus 64 MiB; a state
dict takes about its size), each value being charged an upper bound of its CPython memory as it
is made, and an input whose values would need more is refused ("decoded payload would exceed N
bytes of memory") before they do. Read-only views of decoded values (``fedpipe.views``) keep
that bound where a deep-copying freeze would multiply it.
"""

import os
import tempfile
from pathlib import Path
from typing import Any

from attrs import frozen
from returns.result import Failure, Result, Success

from fedpipe.codec._decode import DEFAULT_LIMITS, Bad, Limits, decode
from fedpipe.codec._encode import CodecError, encode_chunks

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


@frozen(kw_only=True)
class DecodeError:
    """Why some bytes are not a valid payload."""

    reason: str


def dumps(obj: Any) -> bytes:
    """Encode ``obj``; raise CodecError for an unsupported type.

    Array and tensor memory is copied once, into the result.

    >>> loads(dumps({"a": (1, 2**70, -(2**70))})).unwrap()
    {'a': (1, 1180591620717411303424, -1180591620717411303424)}
    """
    return b"".join(encode_chunks(obj))


def loads(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Result[Any, DecodeError]:
    """Decode one object; any malformed or over-limit input is a Failure, never an exception.

    Arrays and tensors come back as fresh writable copies (one copy from ``data``); the large
    layers of one state dict may be views of one shared block (see ``fedpipe.codec._decode``).

    >>> loads(b"\\x92\\x01\\xa1x").unwrap()
    [1, 'x']
    >>> loads(b"\\x92\\x01").failure().reason
    'array longer than the remaining input'
    """
    if len(data) > limits.max_bytes:
        return Failure(DecodeError(reason=f"payload larger than {limits.max_bytes} bytes"))
    try:
        view = memoryview(data).cast("B")
    except TypeError:
        return Failure(DecodeError(reason="payload is not a contiguous byte buffer"))
    try:
        return Success(decode(view, limits))
    except Bad as err:
        return Failure(DecodeError(reason=str(err)))
    except (ValueError, OverflowError, RecursionError) as err:  # numpy/torch refusing a checked array
        return Failure(DecodeError(reason=f"invalid payload ({type(err).__name__})"))
    finally:
        view.release()


def dump_file(obj: Any, path: Path) -> None:
    """Encode ``obj`` into ``path`` atomically: a temporary sibling, fsynced, renamed into place.

    Array memory goes straight from the objects to the file. Raises CodecError for an unsupported
    type and OSError when the file cannot be written; either way no partial file is left.
    """
    path = Path(path)
    chunks = encode_chunks(obj)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_file(path: Path, limits: Limits = DEFAULT_LIMITS) -> Result[Any, DecodeError]:
    """Decode the object in the file at ``path``; an unreadable or oversized file is a Failure too."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limits.max_bytes:
                return Failure(DecodeError(reason=f"payload larger than {limits.max_bytes} bytes"))
            data = bytearray(size)
            got = fh.readinto(data)
    except OSError as err:
        return Failure(DecodeError(reason=f"cannot read payload file: {err.strerror or type(err).__name__}"))
    if got != size:
        return Failure(DecodeError(reason="payload file changed while it was read"))
    return loads(data, limits)
