"""Test key material: a deterministic biprime, node key shares and a server key that sum to zero.

For tests, notebooks and the demo only: the material derives from a public seed, so anyone can
recompute it. Production keys come from the node's key store (``SecaggKeys``).
"""

import random
from functools import lru_cache

import gmpy2
from attrs import field, frozen

from fedpipe.ports import Biprime, ServerKeyShare

__all__ = ["KeyMaterial", "make_biprime", "make_key_material"]


@lru_cache(maxsize=16)
def make_biprime(bits: int = 2048, seed: int = 0) -> int:
    """A product of two distinct primes of ``bits // 2`` bits each, with exactly ``bits`` bits, from ``seed``.

    Deterministic and cached: the same (bits, seed) always gives the same N.

    >>> n = make_biprime(64, seed=1)
    >>> n.bit_length(), n == make_biprime(64, seed=1), n % 2
    (64, True, 1)
    """
    if bits < 16:
        raise ValueError("a biprime needs at least 16 bits")
    rng = random.Random(f"fedpipe-test-biprime:{bits}:{seed}")
    half = bits // 2
    while True:
        # the two top bits set: the product of two such primes has exactly 2 * half bits
        p = int(gmpy2.next_prime(rng.getrandbits(half) | (3 << (half - 2))))
        q = int(gmpy2.next_prime(rng.getrandbits(bits - half) | (3 << (bits - half - 2))))
        n = p * q
        if p != q and n.bit_length() == bits:
            return n


@frozen(kw_only=True)
class KeyMaterial:
    """A biprime with one key share per node and the server key: ``sum(node_keys) + server_key == 0``."""

    biprime: int = field(repr=lambda n: f"<{int(n).bit_length()}-bit N>")
    node_keys: tuple[int, ...] = field(repr=False)
    server_key: int = field(repr=False)

    @property
    def n_nodes(self) -> int:
        """Number of node shares."""
        return len(self.node_keys)

    def node_records(
        self, index: int, *, secagg_id: str, biprime_id: str, job_id: str, parties: tuple[str, ...]
    ) -> tuple[ServerKeyShare, Biprime]:
        """The records node ``index`` keeps in its key store (``parties``: the researcher, then the nodes)."""
        return (
            ServerKeyShare(secagg_id=secagg_id, job_id=job_id, parties=parties, key=self.node_keys[index]),
            Biprime(secagg_id=biprime_id, biprime=self.biprime, max_keysize=2 * self.biprime.bit_length()),
        )


def make_key_material(
    n_nodes: int, *, bits: int = 2048, seed: int = 0, key_bits: int | None = None
) -> KeyMaterial:
    """Key material for ``n_nodes`` nodes over a ``bits``-bit biprime, all derived from ``seed``.

    Key shares have ``key_bits`` bits (default ``2 * bits - 8``, as Fed-BioMed draws 2040-bit shares
    for its 1024-bit N).

    >>> km = make_key_material(3, bits=64, seed=2)
    >>> km.n_nodes, sum(km.node_keys) + km.server_key
    (3, 0)
    """
    if n_nodes < 1:
        raise ValueError("at least one node")
    rng = random.Random(f"fedpipe-test-keys:{n_nodes}:{bits}:{seed}")
    size = key_bits if key_bits is not None else 2 * bits - 8
    keys = tuple(rng.getrandbits(size) for _ in range(n_nodes))
    return KeyMaterial(biprime=make_biprime(bits, seed), node_keys=keys, server_key=-sum(keys))
