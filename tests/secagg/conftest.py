"""Fixtures for the secagg tests: cached key material and mask pools shared by a module."""

from collections.abc import Iterator

import pytest

from fedpipe.secagg import KeyMaterial, MaskPool, make_key_material

FAST_KEY_BITS = 256
"""Short key shares keep the property tests fast; N keeps its full 2048 bits (one slow test uses full keys)."""


def fast_keys(n_nodes: int, *, bits: int = 2048, seed: int = 0) -> KeyMaterial:
    """Key material over a 2048-bit N with 256-bit shares (cached biprime)."""
    return make_key_material(n_nodes, bits=bits, seed=seed, key_bits=FAST_KEY_BITS)


@pytest.fixture(scope="module")
def inline_pool() -> Iterator[MaskPool]:
    """An inline pool whose cache spans the module: examples that share key and round share masks."""
    pool = MaskPool(workers=0, max_entries=64)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def worker_pool() -> Iterator[MaskPool]:
    """A pool with two worker processes."""
    pool = MaskPool(workers=2, chunk=8)
    yield pool
    pool.close()
