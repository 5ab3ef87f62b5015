"""The dtype allow-list of the codec and the spellings of a dtype that decoding accepts.

Arrays are always written little-endian under the plain dtype name (``"float32"``), which is what
the reference writes on every little-endian host. Decoding also accepts an explicit byte order,
either as a prefix on the name (``"<float32"``, ``">float32"``) or as numpy's type string
(``"<f4"``, ``">i8"``, ``"|b1"``); a plain name means little-endian.
"""

from typing import Final, Literal

__all__ = ["ALLOWED_DTYPES", "BFLOAT16", "SPELLINGS", "DtypeSpec", "parse_dtype"]

BFLOAT16: Final = "bfloat16"

ALLOWED_DTYPES: Final = frozenset(
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
        "complex64",
        "complex128",
        BFLOAT16,
    }
)

# numpy type strings without their byte-order character, per allowed name
_TYPE_CODES: Final = {
    "bool": "b1",
    "int8": "i1",
    "int16": "i2",
    "int32": "i4",
    "int64": "i8",
    "uint8": "u1",
    "uint16": "u2",
    "uint32": "u4",
    "uint64": "u8",
    "float16": "f2",
    "float32": "f4",
    "float64": "f8",
    "complex64": "c8",
    "complex128": "c16",
}

DtypeSpec = tuple[str, Literal["<", ">"]]
"""(canonical dtype name, byte order "<" or ">")."""


def _spellings() -> dict[str, DtypeSpec]:
    little: Literal["<"] = "<"
    big: Literal[">"] = ">"
    table: dict[str, DtypeSpec] = {}
    for name in ALLOWED_DTYPES:
        table[name] = (name, little)
        table["<" + name] = (name, little)
        table[">" + name] = (name, big)
        code = _TYPE_CODES.get(name)
        if code is not None:
            table["<" + code] = (name, little)
            table[">" + code] = (name, big)
            if code.endswith("1"):
                table["|" + code] = (name, little)
                table["|" + name] = (name, little)
    return table


_SPELLINGS: Final = _spellings()
SPELLINGS: Final = frozenset(_SPELLINGS)
"""Every dtype string that decoding understands."""


def parse_dtype(spelling: object, allowed: frozenset[str] = ALLOWED_DTYPES) -> DtypeSpec | None:
    """The (name, byte order) that ``spelling`` denotes, or None if it is not an allowed dtype.

    >>> parse_dtype("float32"), parse_dtype(">f4"), parse_dtype("|b1")
    (('float32', '<'), ('float32', '>'), ('bool', '<'))
    >>> parse_dtype("object") is None, parse_dtype("<U8") is None, parse_dtype(3) is None
    (True, True, True)
    """
    if not isinstance(spelling, str):
        return None
    spec = _SPELLINGS.get(spelling)
    if spec is None or spec[0] not in allowed:
        return None
    return spec
