"""msgpack codec with the reference's extension dicts; decoding untrusted bytes is total and limited.

Encoding: ``dumps(obj) -> bytes`` (raises ``CodecError`` for an unsupported type, a programming
error). Decoding: ``loads(data, limits) -> Result[obj, DecodeError]``, never an exception.
"""

from fedpipe.codec.core import (
    DEFAULT_LIMITS,
    CodecError,
    DecodeError,
    Limits,
    dump_file,
    dumps,
    load_file,
    loads,
)

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
