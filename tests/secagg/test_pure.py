"""Laws of the pure parts: quantization, packing, hashing and the Joye-Libert identities."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpipe.secagg.jl import aggregate, fdh, masks, protect, tau, unmask
from fedpipe.secagg.keys import make_key_material
from fedpipe.secagg.pack import pack, spare_bits_clear, unpack
from fedpipe.secagg.params import Encoding, PackingMode
from fedpipe.secagg.quantize import quantize, reverse_quantize, step_size
from tests.secagg.conftest import fast_keys


@given(
    st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=50),
    st.sampled_from([0.5, 3.0, 7.0]),
)
def test_quantization_error_is_at_most_half_a_step(values: list[float], c: float) -> None:
    arr = np.asarray(values)
    levels = quantize(arr, c, 2**13)
    assert levels.max() <= 2**13 - 1
    back = reverse_quantize(levels.astype(np.float64), c, 2**13)
    assert np.all(np.abs(back - np.clip(arr, -c, c)) <= step_size(c, 2**13) / 2 + 1e-12)


@given(
    st.integers(1, 64).flatmap(
        lambda e: st.tuples(
            st.just(e),
            st.integers(1, 40),
            st.lists(st.integers(0, 2**e - 1), max_size=120),
        )
    )
)
def test_unpack_inverts_pack_keeping_trailing_zeros(case: tuple[int, int, list[int]]) -> None:
    e, slots, values = case
    arr = np.asarray(values, dtype=np.uint64)
    packed = pack(arr, e, slots)
    assert len(packed) == -(-len(values) // slots)
    assert spare_bits_clear(packed, e, slots)
    assert all(
        p == sum(v << (i * e) for i, v in enumerate(values[k : k + slots]))
        for p, k in zip(packed, range(0, len(values), slots), strict=True)
    )
    out = unpack(packed, e, slots)
    assert out[: len(values)].tolist() == values
    assert not out[len(values) :].any()


def test_fdh_output_is_256_bits_and_depends_on_tau() -> None:
    n = make_key_material(2, bits=1024).biprime
    hashes = {fdh(tau(j, 1), n) for j in range(10)}
    assert len(hashes) == 10
    assert all(h.bit_length() <= 256 for h in hashes)
    assert fdh(tau(0, 1), n) != fdh(tau(0, 2), n)


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 5), st.integers(0, 10), st.data())
def test_keys_summing_to_zero_decrypt_the_sum(n_nodes: int, round_number: int, data: st.DataObject) -> None:
    km = fast_keys(n_nodes)
    n = km.biprime
    xs = [data.draw(st.lists(st.integers(0, 2**100), min_size=3, max_size=3)) for _ in range(n_nodes)]
    cts = [protect(x, masks(0, 3, round_number, k, n), n) for x, k in zip(xs, km.node_keys, strict=True)]
    plain, bad = unmask(aggregate(cts, n), masks(0, 3, round_number, km.server_key, n), n)
    assert bad == 0
    assert plain == [sum(col) for col in zip(*xs, strict=True)]


def test_dense_mode_about_halves_the_ciphertexts_with_a_2048_bit_biprime() -> None:
    n = fast_keys(3).biprime
    compat, dense = Encoding(), Encoding(mode=PackingMode.DENSE)
    assert (compat.slots(3, n), dense.slots(3, n)) == (32, 63)
    assert compat.ciphertexts(1_000_000, 3, n) / dense.ciphertexts(1_000_000, 3, n) > 1.95
