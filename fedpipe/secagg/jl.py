"""Joye-Libert arithmetic: tau, the SHA-256 hash into Z*_{N^2}, masks, protect, aggregate, unmask.

Pure functions over Python ints (gmpy2 for the modular arithmetic). A mask ``H(tau_j)^sk mod N^2``
depends only on the key, the round and the index j, so it can be computed before the values exist;
``protect`` then costs two half-size multiplications per ciphertext.
"""

import hashlib
from collections.abc import Sequence

import gmpy2

from fedpipe.secagg.params import FDH_INPUT_BYTES, TAU_SHIFT

__all__ = [
    "MAX_ROUND",
    "Mask",
    "aggregate",
    "fdh",
    "mask",
    "masks",
    "protect",
    "tau",
    "unmask",
]

MAX_ROUND = (1 << TAU_SHIFT) - 1

Mask = tuple[int, int]
"""A mask ``H(tau_j)^sk mod N^2`` together with its residue mod N (which ``protect`` needs)."""


def tau(index: int, round_number: int) -> int:
    """The time period of ciphertext ``index`` in round ``round_number``: ``(index << 512) | round``.

    >>> tau(0, 7), tau(1, 7) == (1 << 512) + 7
    (7, True)
    """
    if not 0 <= round_number <= MAX_ROUND or index < 0:
        raise ValueError(f"round must be in [0, 2**{TAU_SHIFT}) and index >= 0")
    return (index << TAU_SHIFT) | round_number


def fdh(t: int, biprime: int) -> int:
    """The hash of ``t`` into Z*_{N^2}, bit for bit as Fed-BioMed computes it.

    SHA-256 of ``t`` as 1024 big-endian bytes followed by a one-byte counter (from 1); digests are
    appended until the integer of all of them is coprime with N, which in practice means the first
    one: the output has 256 bits (not a full-domain hash; kept for wire compatibility).

    >>> n = 1000000007 * 998244353
    >>> h = fdh(5, n)
    >>> h.bit_length() <= 256 and h == fdh(5, n)
    True
    """
    prefix = int(t).to_bytes(FDH_INPUT_BYTES, "big")
    digest = b""
    for counter in range(1, 256):
        digest += hashlib.sha256(prefix + counter.to_bytes(1, "big")).digest()
        r = int.from_bytes(digest, "big")
        if gmpy2.gcd(r, biprime) == 1:
            return r
    raise ValueError("no hash value coprime with the biprime")  # pragma: no cover - needs a factor of N


def mask(index: int, round_number: int, key: int, biprime: int) -> Mask:
    """``H(tau_index)^key mod N^2`` and its residue mod N; a negative key inverts (server key)."""
    n2 = gmpy2.mpz(biprime) ** 2
    m = gmpy2.powmod(fdh(tau(index, round_number), biprime), key, n2)
    return int(m), int(m % biprime)


def masks(start: int, stop: int, round_number: int, key: int, biprime: int) -> list[Mask]:
    """The masks of indices ``start .. stop - 1`` (what one worker task computes).

    >>> n = 1000000007 * 998244353
    >>> masks(0, 2, 3, 11, n) == [mask(0, 3, 11, n), mask(1, 3, 11, n)]
    True
    """
    n = gmpy2.mpz(biprime)
    n2 = n * n
    out: list[Mask] = []
    for j in range(start, stop):
        m = gmpy2.powmod(fdh(tau(j, round_number), biprime), key, n2)
        out.append((int(m), int(m % n)))
    return out


def protect(plaintexts: Sequence[int], masks_: Sequence[Mask], biprime: int) -> list[int]:
    """Encrypt: ``y_j = (1 + x_j N) * mask_j mod N^2`` for plaintexts ``0 <= x_j < N``.

    Computed as ``mask + N * (x * (mask mod N) mod N)``, which equals the product modulo N^2 and
    multiplies numbers of half the size.

    >>> n = 1000000007 * 998244353
    >>> m = masks(0, 1, 1, 5, n)
    >>> protect([42], m, n) == [(1 + 42 * n) * m[0][0] % (n * n)]
    True
    """
    if len(plaintexts) != len(masks_):
        raise ValueError(f"{len(plaintexts)} plaintexts but {len(masks_)} masks")
    n = gmpy2.mpz(biprime)
    n2 = n * n
    out: list[int] = []
    for x, (m, m_mod_n) in zip(plaintexts, masks_, strict=True):
        if not 0 <= x < n:
            raise ValueError("a plaintext is not below the biprime")
        c = m + n * (gmpy2.mpz(x) * m_mod_n % n)
        out.append(int(c - n2 if c >= n2 else c))
    return out


def aggregate(vectors: Sequence[Sequence[int]], biprime: int) -> list[int]:
    """Multiply the nodes' ciphertexts index by index modulo N^2 (the homomorphic sum).

    >>> aggregate([[2, 3], [4, 5]], 3)
    [8, 6]
    """
    n2 = gmpy2.mpz(biprime) ** 2
    if not vectors:
        return []
    acc = [gmpy2.mpz(c) for c in vectors[0]]
    for vec in vectors[1:]:
        acc = [a * c % n2 for a, c in zip(acc, vec, strict=True)]
    return [int(a) for a in acc]


def unmask(aggregated: Sequence[int], server_masks: Sequence[Mask], biprime: int) -> tuple[list[int], int]:
    """Decrypt aggregated ciphertexts with the server key's masks: ``x = (v - 1) / N`` for ``v = y * mask``.

    Returns the plaintexts and the number of ciphertexts whose ``v`` is not ``1 mod N``: when the keys
    do not sum to zero (wrong key, wrong round, a missing or extra party) or a ciphertext was
    corrupted, ``v`` is a random unit and this count is non-zero with overwhelming probability.

    >>> n = 1000000007 * 998244353
    >>> y = aggregate([protect([3], masks(0, 1, 2, 7, n), n), protect([4], masks(0, 1, 2, -7, n), n)], n)
    >>> unmask(y, [(1, 1)], n)
    ([7], 0)
    """
    n = gmpy2.mpz(biprime)
    n2 = n * n
    out: list[int] = []
    bad = 0
    for y, (m, _) in zip(aggregated, server_masks, strict=True):
        v = gmpy2.mpz(y) * m % n2
        q, r = gmpy2.f_divmod(v - 1, n)
        if r != 0:
            bad += 1
        out.append(int(q % n))
    return out, bad
