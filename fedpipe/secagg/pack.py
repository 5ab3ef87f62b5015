"""Packing of small unsigned integers into big plaintexts (slot i of a plaintext at bits [i*e, (i+1)*e)).

Vectorized over 64-bit words, so that a million values pack in well under a second; the layout is
Fed-BioMed's: values little-end first, a new plaintext every ``slots`` values, the last one short.
"""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["pack", "spare_bits_clear", "unpack"]

UIntArray = npt.NDArray[np.uint64]


def _words_per_plaintext(slot_bits: int, slots: int) -> int:
    return (slots * slot_bits + 63) // 64 + 1  # one spare word takes the spill of the last slot


def _positions(n: int, slot_bits: int, slots: int, words: int) -> tuple[UIntArray, UIntArray]:
    idx = np.arange(n, dtype=np.uint64)
    bit = (idx % np.uint64(slots)) * np.uint64(slot_bits)
    word = (idx // np.uint64(slots)) * np.uint64(words) + bit // np.uint64(64)
    return word, bit % np.uint64(64)


def _or_into(buf: UIntArray, index: UIntArray, parts: UIntArray) -> None:
    # index is non-decreasing, and the parts of one word never overlap: a grouped OR is exact
    if index.size == 0:
        return
    starts = np.flatnonzero(np.concatenate(([True], index[1:] != index[:-1])))
    buf[index[starts].astype(np.intp)] |= np.bitwise_or.reduceat(parts, starts)


def pack(values: UIntArray, slot_bits: int, slots: int) -> list[int]:
    """Pack ``values`` (each below ``2**slot_bits``) into ``ceil(len / slots)`` plaintexts.

    >>> pack(np.array([1, 2, 3], dtype=np.uint64), 4, 2)
    [33, 3]
    >>> unpack(pack(np.array([5, 0, 7, 0, 0], dtype=np.uint64), 40, 3), 40, 3).tolist()
    [5, 0, 7, 0, 0, 0]
    """
    if not 1 <= slot_bits <= 64 or slots < 1:
        raise ValueError(f"bad packing geometry: {slots} slots of {slot_bits} bits")
    v = np.ascontiguousarray(values, dtype=np.uint64)
    n = v.size
    if n == 0:
        return []
    n_plain = -(-n // slots)
    words = _words_per_plaintext(slot_bits, slots)
    buf = np.zeros(n_plain * words, dtype=np.uint64)
    word, shift = _positions(n, slot_bits, slots, words)
    _or_into(buf, word, v << shift)
    spill = shift + np.uint64(slot_bits) > np.uint64(64)
    if spill.any():
        _or_into(buf, word[spill] + np.uint64(1), v[spill] >> (np.uint64(64) - shift[spill]))
    raw = buf.astype("<u8").tobytes()
    size = words * 8
    return [int.from_bytes(raw[i * size : (i + 1) * size], "little") for i in range(n_plain)]


def spare_bits_clear(plaintexts: Sequence[int], slot_bits: int, slots: int) -> bool:
    """True when no plaintext has a bit set above its last slot (a sound decryption never does).

    >>> spare_bits_clear([33, 3], 4, 2), spare_bits_clear([1 << 8], 4, 2)
    (True, False)
    """
    limit = slots * slot_bits
    return all(int(p) >= 0 and int(p) >> limit == 0 for p in plaintexts)


def unpack(plaintexts: Sequence[int], slot_bits: int, slots: int) -> UIntArray:
    """All ``len(plaintexts) * slots`` slot values, trailing zeros included (the caller truncates).

    Plaintexts must have their spare bits clear (see ``spare_bits_clear``).
    """
    if not 1 <= slot_bits <= 64 or slots < 1:
        raise ValueError(f"bad packing geometry: {slots} slots of {slot_bits} bits")
    n_plain = len(plaintexts)
    if n_plain == 0:
        return np.zeros(0, dtype=np.uint64)
    words = _words_per_plaintext(slot_bits, slots)
    size = words * 8
    raw = b"".join(int(p).to_bytes(size, "little") for p in plaintexts)
    buf = np.frombuffer(raw, dtype="<u8").astype(np.uint64)
    word, shift = _positions(n_plain * slots, slot_bits, slots, words)
    w = word.astype(np.intp)
    low = buf[w] >> shift
    spill = shift + np.uint64(slot_bits) > np.uint64(64)
    back = np.where(spill, np.uint64(64) - shift, np.uint64(0))
    high = np.where(spill, buf[np.minimum(w + 1, buf.size - 1)] << back, np.uint64(0))
    mask = np.uint64((1 << slot_bits) - 1) if slot_bits < 64 else np.uint64(2**64 - 1)
    return np.asarray((low | high) & mask, dtype=np.uint64)
