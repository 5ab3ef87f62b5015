"""Joye-Libert constants and the packing geometry they imply: slot width, slots per plaintext, counts."""

import enum
import math
from functools import lru_cache

import gmpy2
from attrs import field, frozen

__all__ = [
    "CLIPPING_RANGE",
    "FDH_INPUT_BYTES",
    "KEY_SIZE",
    "PLAINTEXT_BITS",
    "TARGET_RANGE",
    "TAU_SHIFT",
    "WEIGHT_RANGE",
    "Encoding",
    "PackingMode",
    "Quantization",
    "checksum_modulus",
]

CLIPPING_RANGE = 3
"""Default clipping range c: values are clipped to [-c, c] before quantization."""
TARGET_RANGE = 2**13
"""Quantization levels T: a value becomes an integer in [0, T - 1]."""
WEIGHT_RANGE = 2**17
"""Weights (sample sizes) must be below W so that weighted values fit their slot."""
KEY_SIZE = 2048
"""Fed-BioMed's KEY_SIZE: the bit size of N^2 for its shipped 1024-bit biprime; fixes the constants below."""
PLAINTEXT_BITS = KEY_SIZE // 2
"""Bits of one packed plaintext in the compatible mode (1024)."""
TAU_SHIFT = KEY_SIZE // 4
"""tau_j = (j << TAU_SHIFT) | round (512)."""
FDH_INPUT_BYTES = KEY_SIZE // 2
"""The hash input is tau as a 1024-byte big-endian integer, then a one-byte counter."""


class PackingMode(enum.StrEnum):
    """How many slots a plaintext holds.

    ``COMPATIBLE`` packs ``floor(1024 / slot_bits)`` slots, as Fed-BioMed does, whatever the size of N.
    ``DENSE`` (fedpipe only) packs ``floor((bits(N) - 1) / slot_bits)`` slots: with a 2048-bit N that
    is about twice as many, so half the ciphertexts (and half the modular exponentiations).
    """

    COMPATIBLE = "compatible"
    DENSE = "fedpipe-dense"


class Quantization(enum.StrEnum):
    """How a value becomes one of the T levels; both decode with ``-c + level * 2c / (T - 1)``.

    ``NEAREST`` (fedpipe) rounds to the nearest level: error at most half a step, unbiased.
    ``FEDBIOMED`` is Fed-BioMed 6.4.1's ``quantize``, ``min(T - 1, (x + c) * T / 2c)`` truncated:
    biased upwards by up to a step, and what a stock node sends, so that a fedpipe node in a
    Fed-BioMed federation contributes exactly what a stock node would.
    """

    NEAREST = "nearest"
    FEDBIOMED = "fedbiomed"


@lru_cache(maxsize=8)
def checksum_modulus(value_bits: int) -> int:
    """The prime P of the checksum slot: the largest prime below ``2**value_bits``.

    >>> checksum_modulus(30)
    1073741789
    """
    return int(gmpy2.prev_prime(1 << value_bits))


def _positive(instance: object, attribute: object, value: int) -> None:
    if value < 2:
        raise ValueError(f"{getattr(attribute, 'name', 'range')} must be at least 2, got {value}")


@frozen(kw_only=True)
class Encoding:
    """The encoding of a vector before Joye-Libert encryption; node and researcher must agree on it.

    ``checksum`` appends one slot holding ``sum(weighted values) mod P`` (P prime, ``checksum_modulus``):
    the decrypted sums must satisfy the same congruence, which detects a vector decoded with another
    slot width (party-count mismatch), a plaintext that wrapped modulo N, and corrupted ciphertexts.
    Fed-BioMed decodes only the values it expects, so the extra slot does not disturb it.

    >>> e = Encoding()
    >>> e.value_bits, e.slot_bits(3), e.slots(3, 1 << 2047)
    (30, 32, 32)
    >>> Encoding(mode=PackingMode.DENSE).slots(3, 1 << 2047)
    63
    >>> e.ciphertexts(100, 3, 1 << 2047)  # 100 values + the checksum slot, 32 per plaintext
    4
    """

    mode: PackingMode = PackingMode.COMPATIBLE
    checksum: bool = True
    quantization: Quantization = Quantization.NEAREST
    target_range: int = field(default=TARGET_RANGE, validator=_positive)
    weight_range: int = field(default=WEIGHT_RANGE, validator=_positive)

    @property
    def value_bits(self) -> int:
        """Bits of one weighted value: ``ceil(log2(T) + log2(W))`` (30), computed as Fed-BioMed does."""
        return math.ceil(math.log2(self.target_range) + math.log2(self.weight_range))

    def slot_bits(self, n_nodes: int) -> int:
        """Bits of one slot: room for the sum of ``n_nodes`` weighted values, ``+ ceil(log2(n_nodes + 1))``."""
        return self.value_bits + max(n_nodes, 1).bit_length()

    def plaintext_bits(self, biprime: int) -> int:
        """The bits a packed plaintext may use under this mode and biprime."""
        if self.mode is PackingMode.DENSE:
            return int(biprime).bit_length() - 1
        return PLAINTEXT_BITS

    def slots(self, n_nodes: int, biprime: int) -> int:
        """Slots per plaintext (0 when the biprime is too small for even one slot)."""
        return self.plaintext_bits(biprime) // self.slot_bits(n_nodes)

    def n_slots(self, n_values: int) -> int:
        """Slots used by ``n_values`` values (plus the checksum slot when enabled)."""
        return n_values + (1 if self.checksum else 0)

    def ciphertexts(self, n_values: int, n_nodes: int, biprime: int) -> int:
        """Number of ciphertexts for ``n_values`` values."""
        per = self.slots(n_nodes, biprime)
        if per < 1:
            raise ValueError("the biprime is too small to hold one slot")
        return -(-self.n_slots(n_values) // per)

    def describe(self) -> dict[str, object]:
        """The encoding as plain data, for reply metadata."""
        return {
            "mode": str(self.mode),
            "checksum": self.checksum,
            "quantization": str(self.quantization),
            "target_range": self.target_range,
            "weight_range": self.weight_range,
        }
