"""Encoding and decoding of payload files (parameters, aux vars, results, node state).

Extension dicts (a map with exactly the keys ``__type__`` and ``value``). The first five are
Fed-BioMed's and are read and written byte-compatibly with Fed-BioMed 6.4.1; the ``fedpipe.*``
ones are extensions that Fed-BioMed's decoder leaves as plain dicts (it does so for any unknown
``__type__``):

| object                  | ``__type__``     | ``value``                                          |
|-------------------------|------------------|----------------------------------------------------|
| int beyond 64 bit       | "int"            | two's complement, big-endian, ceil(bits/8)+1 bytes |
| tuple                   | "tuple"          | list of items                                      |
| numpy ndarray           | "np.ndarray"     | [raw C-order little-endian bytes, dtype name, shape] |
| numpy scalar            | "np.generic"     | [raw little-endian bytes, dtype name]              |
| torch Tensor            | "torch.Tensor"   | as ndarray (CPU)                                   |
| bfloat16 torch Tensor   | "fedpipe.tensor" | [raw little-endian 16-bit patterns, "bfloat16", shape] |
| (read only) int         | "fedpipe.int"    | big-endian two's complement bytes                  |

Big ints. An int outside msgpack's native range (below -2**63 or above 2**64 - 1) is written as
Fed-BioMed 6.4.1 writes it: ``n.to_bytes(ceil(n.bit_length() / 8) + 1, "big", signed=True)``
(``bit_length`` of the magnitude), so its first byte is 0x00 (n > 0) or 0xFF (n < 0); 6.4.1 reads
``int.from_bytes(value, "big", signed=True)``. Older writers differ: Fed-BioMed v4.5 and fedpipe
before this form wrote an int >= 2**64 in minimal unsigned bytes (``ceil(bits / 8)``, first byte
non-zero) and read unsigned; such fedpipe wrote an int < -2**63 as "fedpipe.int" (two's
complement, read signed), which is still read but no longer written. A v4.5 reader reads the
positive ints written here right (unsigned, the leading zero byte changes nothing); it cannot read a
negative big int in any "int" form (it never wrote one), and reads ours as a large positive int.

Reading "int": signed, as 6.4.1, for every form 6.4.1 writes; a byte string that 6.4.1 never
writes (its length is not ``ceil(bits / 8) + 1`` for its signed value) and that an older writer
may have written (at least 9 bytes, first byte non-zero) is read unsigned, as that writer meant.
This is exact for 6.4.1 (each of its forms has that length, by construction) and for every
string whose top bit is clear (both readings agree). The one ambiguous case is an older writer's
m bytes (m >= 9) that are also 6.4.1's form of a negative int: first byte 0xFF and the other
m - 1 bytes, as an integer r, in 0 < r <= 0xFF00...00 (second byte below 0xFF and not all zero
after it, or 0xFF 0xFF then only zeros). They are read as 6.4.1 reads them, the negative
``r - 2**(8 * (m - 1))``; so an older writer's int u with
``0xFF * 2**(8 * (m - 1)) < u <= 0xFFFF * 2**(8 * (m - 2))`` (m = ceil(u.bit_length() / 8)) reads
wrong: 1 in 256 of uniformly random m-byte strings with a non-zero first byte. Every other old
string (first byte 0x80 to 0xFE, or 0xFF whose signed value has a longer 6.4.1 form) reads
unsigned, right. Below: 2**72 - 1 and -(2**72) as 6.4.1 writes them, and the older minimal
unsigned form of 2**72 - 1 (0xFF 0xFF then non-zero bytes: not ambiguous), read right.

>>> dumps(2**72 - 1)[-12:].hex()
'c40a00ffffffffffffffffff'
>>> dumps(-(2**72))[-13:].hex()
'c40bffff000000000000000000'
>>> loads(bytes.fromhex("82a85f5f747970655f5fa3696e74a576616c7565c409ffffffffffffffffff")).unwrap()
4722366482869645213695

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
