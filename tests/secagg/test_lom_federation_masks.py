"""Fedpipe-mode LOM: masks from HKDF round keys and a ChaCha20 keystream, their laws, and the crypter."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpipe.errors import ErrorCode
from fedpipe.secagg.lom import (
    FEDPIPE_TARGET_RANGE,
    FedpipeLomCrypter,
    LomInputError,
    fedpipe_lom_masks,
    fedpipe_round_key,
    lom_aggregate,
    lom_decrypt_mean,
    lom_masks,
)

ids = st.text(alphabet="abcdefghij0123456789-", min_size=1, max_size=8)
finite = st.floats(-5.0, 5.0, allow_nan=False)


@st.composite
def federations(draw: st.DrawFn) -> tuple[list[str], dict[str, dict[str, bytes]]]:
    """2-6 distinct party ids and, for each, its pairwise secrets with the others (symmetric)."""
    parties = draw(st.lists(ids, min_size=2, max_size=6, unique=True))
    pairs = list(itertools.combinations(parties, 2))
    # distinct, as agreed secrets are: two equal ones could cancel inside a single party's mask
    drawn = draw(
        st.lists(st.binary(min_size=32, max_size=32), min_size=len(pairs), max_size=len(pairs), unique=True)
    )
    pair = {frozenset(p): secret for p, secret in zip(pairs, drawn, strict=True)}
    secrets = {p: {q: pair[frozenset((p, q))] for q in parties if q != p} for p in parties}
    return parties, secrets


@settings(max_examples=60, deadline=None)
@given(
    fed=federations(),
    size=st.integers(1, 3000),
    tau=st.integers(0, 2**40),
    first=st.integers(0, 2**20),
    context=st.text(min_size=1, max_size=20).filter(lambda s: not any("\ud800" <= c <= "\udfff" for c in s)),
)
def test_fedpipe_masks_of_all_parties_sum_to_zero(
    fed: tuple[list[str], dict[str, dict[str, bytes]]], size: int, tau: int, first: int, context: str
) -> None:
    parties, secrets = fed
    masks = [
        fedpipe_lom_masks(
            secrets[p], own_id=p, secagg_id=context, tau=tau, size=size, parties=parties, first_index=first
        )
        for p in parties
    ]
    assert not lom_aggregate(masks).any()
    if size >= 4:  # and a single mask hides what it masks
        assert masks[0].any()


def test_fedpipe_masks_sum_to_zero_across_chunks_and_threads() -> None:
    """A vector longer than a chunk and split over threads: still zero in sum, and the same words."""
    parties = ["n1", "n2", "n3"]
    secrets = {
        p: {q: bytes([i + j]) * 32 for j, q in enumerate(parties) if q != p} for i, p in enumerate(parties)
    }
    # the pair secrets must be symmetric: n_i and n_j share bytes([i + j])
    masks = [
        fedpipe_lom_masks(
            secrets[p], own_id=p, secagg_id="ctx", tau=5, size=300_001, first_index=3, workers=3
        )
        for p in parties
    ]
    assert not lom_aggregate(masks).any()
    single = fedpipe_lom_masks(
        secrets["n2"], own_id="n2", secagg_id="ctx", tau=5, size=300_001, first_index=3
    )
    assert np.array_equal(masks[1], single)


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    first=st.integers(0, 200),
    size=st.integers(1, 200),
    tau=st.integers(0, 1000),
)
def test_a_vector_from_an_index_uses_the_words_of_that_index(
    secret: bytes, first: int, size: int, tau: int
) -> None:
    """Word i masks value index i, whatever index a vector starts at: the factor after the update
    uses words the update does not."""
    common = {"own_id": "a", "secagg_id": "ctx", "tau": tau}
    whole = fedpipe_lom_masks({"b": secret}, size=first + size, **common)
    part = fedpipe_lom_masks({"b": secret}, size=size, first_index=first, **common)
    assert np.array_equal(whole[first:], part)


def test_round_keys_depend_on_the_secret_the_round_and_the_context() -> None:
    secret = bytes(range(32))
    base = fedpipe_round_key(secret, secagg_id="ctx", tau=7)
    others = {
        fedpipe_round_key(secret, secagg_id="ctx", tau=8),
        fedpipe_round_key(secret, secagg_id="ctx2", tau=7),
        fedpipe_round_key(bytes(32), secagg_id="ctx", tau=7),
    }
    assert base not in others and len(others) == 3
    # and the masks are not 6.4.1's (whose round seed is padded with 16 zero bytes)
    ours = fedpipe_lom_masks({"b": secret}, own_id="a", secagg_id="ctx", tau=7, size=64)
    stock = lom_masks({"b": secret}, own_id="a", tau=7, size=64, nonce=b"ctx".zfill(16))
    assert not np.array_equal(ours, stock)


@settings(max_examples=40, deadline=None)
@given(
    fed=federations(),
    size=st.integers(1, 200),
    tau=st.integers(0, 10**6),
    data=st.data(),
    c=st.integers(1, 10),
)
def test_fedpipe_encrypt_then_decrypt_gives_the_weighted_mean(
    fed: tuple[list[str], dict[str, dict[str, bytes]]], size: int, tau: int, data: st.DataObject, c: int
) -> None:
    parties, secrets = fed
    crypter = FedpipeLomCrypter(clipping_range=c)
    weights = {p: data.draw(st.integers(1, 2**17 - 1)) for p in parties}
    values = {p: np.array(data.draw(st.lists(finite, min_size=size, max_size=size))) for p in parties}
    random = data.draw(st.floats(-c, c))
    common = {"secagg_id": "lom-ctx", "round_number": tau, "parties": parties}
    updates = [
        crypter.encrypt(
            values[p], pairwise_secrets=secrets[p], own_id=p, weight=weights[p], **common
        ).unwrap()
        for p in parties
    ]
    factors = [
        crypter.encrypt(
            [random], pairwise_secrets=secrets[p], own_id=p, weight=weights[p], first_index=size, **common
        ).unwrap()
        for p in parties
    ]
    total = sum(weights.values())
    decode = {"total_sample_size": total, "clipping_range": c, "target_range": FEDPIPE_TARGET_RANGE}
    mean = lom_decrypt_mean(updates, **decode)
    expected = sum(weights[p] * np.clip(values[p], -c, c) for p in parties) / total
    step = 2 * c / (FEDPIPE_TARGET_RANGE - 1)
    assert np.all(np.abs(mean - expected) <= 2 * step + 1e-12 * c)
    assert abs(float(lom_decrypt_mean(factors, **decode)[0]) - random) <= 2 * step + 1e-12 * c


def test_threads_do_not_change_the_ciphertexts() -> None:
    values = np.linspace(-2.0, 2.0, 270_000)
    common = {
        "pairwise_secrets": {"b": bytes(32), "c": b"\x01" * 32},
        "own_id": "a",
        "secagg_id": "ctx",
        "round_number": 2,
        "weight": 17,
    }
    one = FedpipeLomCrypter().protect(values, **common)
    three = FedpipeLomCrypter(workers=3).protect(values, **common)
    assert np.array_equal(one, three)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"secagg_id": ""}, "context id"),
        ({"first_index": -1}, "first value index"),
        ({"first_index": 2**61}, "below 2**61"),
        ({"round_number": -1}, "round"),
        ({"weight": 2**17}, "weight"),
        ({"pairwise_secrets": {"b": b"short"}}, "32 bytes"),
        ({"values": [float("nan")]}, "finite"),
    ],
)
def test_bad_input_is_a_clear_encryption_failure(change: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "values": [0.5, -0.5],
        "pairwise_secrets": {"b": bytes(32)},
        "own_id": "a",
        "secagg_id": "ctx",
        "round_number": 1,
        "weight": 3,
        "first_index": 0,
    }
    args.update(change)
    failure = FedpipeLomCrypter().encrypt(**args).failure()  # type: ignore[arg-type]
    assert failure.code is ErrorCode.ENCRYPTION_FAILED
    assert message in failure.public and "\n" not in failure.public
    with pytest.raises(LomInputError):
        FedpipeLomCrypter().protect(**args)  # type: ignore[arg-type]
