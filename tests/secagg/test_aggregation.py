"""Node encryption then researcher decryption: the weighted-mean law and every detected mismatch."""

from collections.abc import Sequence

import gmpy2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from returns.result import Failure

from fedpipe.errors import ErrorCode
from fedpipe.ports import Biprime, ServerKeyShare
from fedpipe.secagg import (
    WEIGHT_RANGE,
    Encoding,
    JoyeLibertCrypter,
    KeyMaterial,
    MaskPool,
    PackingMode,
    decrypt_sums,
    make_key_material,
    weighted_mean,
)
from fedpipe.secagg.quantize import step_size
from tests.secagg.conftest import fast_keys

MODES = [Encoding(), Encoding(mode=PackingMode.DENSE)]


def records(km: KeyMaterial, i: int, n_parties: int | None = None) -> tuple[ServerKeyShare, Biprime]:
    n = km.n_nodes if n_parties is None else n_parties
    parties = ("researcher", *(f"node-{k}" for k in range(n)))
    return km.node_records(i, secagg_id="sk", biprime_id="bp", job_id="job", parties=parties)


def encrypt_all(
    km: KeyMaterial,
    values: Sequence[Sequence[float]],
    sizes: Sequence[int],
    *,
    encoding: Encoding,
    pool: MaskPool,
    round_number: int = 1,
    clipping_range: float | None = None,
) -> list[list[int]]:
    crypter = JoyeLibertCrypter(encoding=encoding, pool=pool)
    out = []
    for i, (vals, size) in enumerate(zip(values, sizes, strict=True)):
        key, bp = records(km, i)
        out.append(
            crypter.encrypt(
                list(vals),
                key=key,
                biprime=bp,
                round_number=round_number,
                weight=size,
                clipping_range=clipping_range,
            ).unwrap()
        )
    return out


@settings(max_examples=30, deadline=None)
@given(
    n_nodes=st.integers(2, 5),
    length=st.integers(1, 140),
    mode=st.sampled_from(MODES),
    clip=st.sampled_from([None, 1.0, 7.5]),
    trailing=st.integers(0, 40),
    data=st.data(),
)
def test_masked_sum_decrypts_to_weighted_mean(
    inline_pool: MaskPool,
    n_nodes: int,
    length: int,
    mode: Encoding,
    clip: float | None,
    trailing: int,
    data: st.DataObject,
) -> None:
    """For 2-5 nodes, any length (not a multiple of the packing width), any sample sizes within the
    weight range, decrypted sum / total weight is the weighted mean within half a quantization step;
    a suffix of values at -c (packed as zeros) survives decoding."""
    km = fast_keys(n_nodes)
    c = 3.0 if clip is None else clip
    values = np.asarray(
        [
            data.draw(st.lists(st.floats(-c, c, allow_nan=False), min_size=length, max_size=length))
            + [-c] * trailing
            for _ in range(n_nodes)
        ]
    )
    sizes = data.draw(st.lists(st.integers(1, WEIGHT_RANGE - 1), min_size=n_nodes, max_size=n_nodes))
    cipher = encrypt_all(km, values.tolist(), sizes, encoding=mode, pool=inline_pool, clipping_range=clip)
    sums = decrypt_sums(
        cipher,
        server_key=km.server_key,
        biprime=km.biprime,
        round_number=1,
        n_values=length + trailing,
        n_nodes=n_nodes,
        encoding=mode,
        total_weight=sum(sizes),
        pool=inline_pool,
    ).unwrap()
    mean = weighted_mean(sums, sum(sizes), clip, mode)
    truth = np.average(values, axis=0, weights=sizes)
    assert mean.shape == (length + trailing,)
    assert np.max(np.abs(mean - truth)) <= step_size(c, 2**13) / 2 + 1e-9
    if trailing:
        assert np.allclose(mean[length:], -c)


@pytest.mark.slow
def test_full_size_keys_with_worker_processes(worker_pool: MaskPool) -> None:
    """Default key material (2048-bit N, 4088-bit shares) through the worker pool, 3 nodes, both modes."""
    km = make_key_material(3)
    rng = np.random.default_rng(3)
    values = rng.uniform(-3, 3, size=(3, 100))
    sizes = [10, 250, 4000]
    for mode in MODES:
        cipher = encrypt_all(km, values.tolist(), sizes, encoding=mode, pool=worker_pool, round_number=2)
        sums = decrypt_sums(
            cipher,
            server_key=km.server_key,
            biprime=km.biprime,
            round_number=2,
            n_values=100,
            n_nodes=3,
            encoding=mode,
            total_weight=sum(sizes),
            pool=worker_pool,
        ).unwrap()
        truth = np.average(values, axis=0, weights=sizes)
        assert (
            np.max(np.abs(weighted_mean(sums, sum(sizes), None, mode) - truth))
            <= step_size(3, 2**13) / 2 + 1e-9
        )


# --- failures: each is a detected mismatch or a RoundError, never a silently wrong mean ---------

KM = fast_keys(3, seed=5)
VALUES = np.random.default_rng(7).uniform(-3, 3, size=(3, 50)).tolist()
SIZES = [3, 30, 300]


def decrypt(cipher: Sequence[Sequence[int]], **over: object) -> str:
    args: dict[str, object] = {
        "server_key": KM.server_key,
        "biprime": KM.biprime,
        "round_number": 1,
        "n_values": 50,
        "n_nodes": 3,
        "total_weight": sum(SIZES),
        "pool": MaskPool(workers=0),
    }
    args.update(over)
    result = decrypt_sums(cipher, **args)  # type: ignore[arg-type]
    assert isinstance(result, Failure), "a mismatch must not decrypt"
    return result.failure().reason


@pytest.fixture(scope="module")
def good(inline_pool: MaskPool) -> list[list[int]]:
    return encrypt_all(KM, VALUES, SIZES, encoding=Encoding(), pool=inline_pool)


def test_good_vectors_decrypt(good: list[list[int]]) -> None:
    sums = decrypt_sums(
        good,
        server_key=KM.server_key,
        biprime=KM.biprime,
        round_number=1,
        n_values=50,
        n_nodes=3,
        total_weight=333,
    )
    assert np.allclose(
        weighted_mean(sums.unwrap(), 333), np.average(VALUES, axis=0, weights=SIZES), atol=4e-4
    )


def test_wrong_server_key_is_detected(good: list[list[int]]) -> None:
    assert "do not decrypt" in decrypt(good, server_key=KM.server_key + 1)


def test_wrong_round_is_detected(good: list[list[int]]) -> None:
    assert "do not decrypt" in decrypt(good, round_number=2)


def test_node_with_a_wrong_key_is_detected(inline_pool: MaskPool) -> None:
    other = make_key_material(3, seed=99, key_bits=256)
    bad = KeyMaterial(
        biprime=KM.biprime,
        node_keys=(KM.node_keys[0], KM.node_keys[1], other.node_keys[2]),
        server_key=KM.server_key,
    )
    cipher = encrypt_all(bad, VALUES, SIZES, encoding=Encoding(), pool=inline_pool)
    assert "do not decrypt" in decrypt(cipher)


def test_missing_node_is_detected(good: list[list[int]]) -> None:
    assert "expected 3 encrypted updates, got 2" in decrypt(good[:2])
    # a researcher told the wrong party count cannot be fooled either
    assert "do not decrypt" in decrypt(good[:2], n_nodes=2)


def test_node_encoding_for_another_party_count_is_detected(inline_pool: MaskPool) -> None:
    """Keys sum to zero, but one node packs with the slot width of a 4-node context (34 bits, not 32)."""
    crypter = JoyeLibertCrypter(pool=inline_pool)
    cipher = encrypt_all(KM, VALUES[:2], SIZES[:2], encoding=Encoding(), pool=inline_pool)
    key, bp = records(KM, 2, n_parties=4)
    wide = crypter.encrypt(
        VALUES[2], key=key, biprime=bp, round_number=1, weight=SIZES[2], clipping_range=None
    )
    reason = decrypt([*cipher, wide.unwrap()])
    assert "mismatch" in reason or "checksum" in reason


@pytest.mark.parametrize("shift", [1, 12345, 2**40])
def test_homomorphically_shifted_ciphertext_is_detected_by_the_checksum(
    good: list[list[int]], shift: int
) -> None:
    """Multiplying a ciphertext by (1 + d N) adds d to its plaintext: still 1 mod N, caught by the checksum."""
    n = KM.biprime
    tampered = [list(v) for v in good]
    tampered[1][0] = int(gmpy2.mpz(tampered[1][0]) * (1 + shift * n) % (n * n))
    assert "checksum" in decrypt(tampered) or "exceeds" in decrypt(tampered)


def test_corrupted_ciphertext_is_detected(good: list[list[int]]) -> None:
    tampered = [list(v) for v in good]
    tampered[0][1] ^= 1 << 100
    assert "do not decrypt" in decrypt(tampered)
    tampered[0][1] = 0
    assert "not a ciphertext" in decrypt(tampered)


def test_truncated_vector_is_detected(good: list[list[int]]) -> None:
    assert "ciphertexts, expected" in decrypt([good[0][:-1], good[1], good[2]])


def test_fedbiomed_vector_without_checksum_is_refused_by_a_checking_researcher(inline_pool: MaskPool) -> None:
    cipher = encrypt_all(KM, VALUES, SIZES, encoding=Encoding(checksum=False), pool=inline_pool)
    decrypt(cipher)  # a mismatch, whatever the check that catches it


# --- node-side validation of the crypter ---------------------------------------------------------


def test_weight_beyond_the_weight_range_is_refused(inline_pool: MaskPool) -> None:
    key, bp = records(KM, 0)
    crypter = JoyeLibertCrypter(pool=inline_pool)
    for weight in (0, WEIGHT_RANGE, -3):
        err = crypter.encrypt(
            [0.1], key=key, biprime=bp, round_number=1, weight=weight, clipping_range=None
        ).failure()
        assert err.code is ErrorCode.ENCRYPTION_FAILED
        assert "sample size" in err.public


@pytest.mark.parametrize("clip", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_clipping_range_is_refused(inline_pool: MaskPool, clip: float) -> None:
    key, bp = records(KM, 0)
    err = (
        JoyeLibertCrypter(pool=inline_pool)
        .encrypt([0.1], key=key, biprime=bp, round_number=1, weight=1, clipping_range=clip)
        .failure()
    )
    assert err.code is ErrorCode.SECAGG_CONFIG


def test_non_finite_values_are_refused(inline_pool: MaskPool) -> None:
    key, bp = records(KM, 0)
    err = (
        JoyeLibertCrypter(pool=inline_pool)
        .encrypt([0.1, float("nan")], key=key, biprime=bp, round_number=1, weight=1, clipping_range=None)
        .failure()
    )
    assert err.code is ErrorCode.ENCRYPTION_FAILED


def test_biprime_too_small_for_the_packing_is_refused(inline_pool: MaskPool) -> None:
    km = make_key_material(2, bits=512, key_bits=64)
    key, bp = records(km, 0)
    err = (
        JoyeLibertCrypter(pool=inline_pool)
        .encrypt([0.1], key=key, biprime=bp, round_number=1, weight=1, clipping_range=None)
        .failure()
    )
    assert err.code is ErrorCode.SECAGG_CONFIG
    # the dense mode fits any biprime with room for two slots
    dense = JoyeLibertCrypter(encoding=Encoding(mode=PackingMode.DENSE), pool=inline_pool)
    assert dense.encrypt([0.1], key=key, biprime=bp, round_number=1, weight=1, clipping_range=None).unwrap()


def test_masks_started_early_are_used(worker_pool: MaskPool) -> None:
    """start_masks hands the work to the workers; encrypt then finds every mask computed."""
    km = fast_keys(2, seed=11)
    key, bp = records(km, 0)
    crypter = JoyeLibertCrypter(pool=worker_pool)
    crypter.start_masks(key=key, biprime=bp, round_number=6, n_values=200)
    expected = Encoding().ciphertexts(200, 2, km.biprime) + 1
    cipher = crypter.encrypt(
        [0.5] * 200, key=key, biprime=bp, round_number=6, weight=2, clipping_range=None
    ).unwrap()
    stats = worker_pool.stats(key.key, km.biprime, 6)
    assert stats is not None
    assert stats.computed >= len(cipher)
    assert len(cipher) == expected - 1
    # the next round reuses the remembered count when the caller does not know it
    crypter.start_masks(key=key, biprime=bp, round_number=7, n_values=None)
    worker_pool.get(key.key, km.biprime, 7, 0, expected)
    assert (s := worker_pool.stats(key.key, km.biprime, 7)) is not None
    assert s.computed == expected


def test_next_round_precomputes_as_many_masks_as_the_last_encryption(worker_pool: MaskPool) -> None:
    """The parameter count misses the aux vars; the count of the key's previous round does not."""
    km = fast_keys(2, seed=12)
    key, bp = records(km, 0)
    crypter = JoyeLibertCrypter(pool=worker_pool)
    crypter.encrypt([0.1] * 300, key=key, biprime=bp, round_number=1, weight=1, clipping_range=None).unwrap()
    crypter.start_masks(key=key, biprime=bp, round_number=2, n_values=100)
    expected = Encoding().ciphertexts(300, 2, km.biprime) + 1
    worker_pool.get(key.key, km.biprime, 2, 0, expected)
    stats = worker_pool.stats(key.key, km.biprime, 2)
    assert stats is not None
    assert stats.computed == expected
    assert worker_pool.stats(key.key, km.biprime, 1) is None  # the old round's masks were dropped
