"""The researcher decrypts stock Fed-BioMed 6.4.1 nodes' updates (Joye-Libert and LOM) with its defaults.

``vectors/jl_vectors.json`` holds 6.4.1 node replies and what 6.4.1's researcher computed from
them, made once by the real package (``vectors/make_jl_vectors.py``); ``vectors/lom_vectors.json``
adds LOM crypter outputs. Fed-BioMed is not imported here. The laws run on a stock encoder built
from fedpipe's parts, which the first test holds to 6.4.1's ciphertexts bit for bit.
"""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from returns.result import Failure, Result

from fedpipe.ports import Biprime, ServerKeyShare
from fedpipe.researcher.experiment import NodeResult
from fedpipe.researcher.secure import LomAggregation, SecureAggregation
from fedpipe.researcher.strategies import FedAvg
from fedpipe.secagg import Encoding, JoyeLibertCrypter, KeyMaterial, MaskPool, make_key_material
from fedpipe.secagg.jl import masks, protect
from fedpipe.secagg.lom import LomCrypter, lom_quantize, lom_reverse_quantize
from fedpipe.secagg.pack import pack
from fedpipe.secagg.params import Quantization
from fedpipe.secagg.quantize import step_size
from fedpipe.secagg.researcher import (
    FACTOR_TOLERANCE,
    PARALLEL_MASKS,
    AggregatedUpdate,
    SecaggMismatch,
    aggregate_lom_results,
    aggregate_results,
    decrypt_sums,
    stock_encoding,
    weighted_mean,
)

HERE = Path(__file__).parent / "vectors"
STOCK = json.loads((HERE / "jl_vectors.json").read_text())
LOM_VECTORS = json.loads((HERE / "lom_vectors.json").read_text())["cases"]
JL_CASES = STOCK["jl"]
LOM_CASES = STOCK["lom"]
STEP = step_size(3, 2**13)


def stock_jl_encrypt(
    values: Sequence[float],
    *,
    key: int,
    biprime: int,
    round_number: int,
    n_nodes: int,
    weight: int | None,
    clipping_range: float | None = None,
) -> list[int]:
    """6.4.1's ``SecaggCrypter.encrypt`` from fedpipe's parts: its truncating quantization
    (``lom_quantize`` is 6.4.1's ``quantize``), the weight, compatible packing without a checksum
    slot, masks from tau index 0."""
    levels = lom_quantize(list(values), clipping_range=3 if clipping_range is None else clipping_range)
    if weight is not None:
        levels = levels * np.uint64(weight)
    enc = stock_encoding()
    plain = pack(levels, enc.slot_bits(n_nodes), enc.slots(n_nodes, biprime))
    return protect(plain, masks(0, len(plain), round_number, key, biprime), biprime)


def reason(outcome: Result[AggregatedUpdate, SecaggMismatch] | Result[Any, SecaggMismatch]) -> str:
    assert isinstance(outcome, Failure), "a bad update set must not decrypt"
    text = outcome.failure().reason
    assert text and "\n" not in text  # one line, for the researcher's log and the experiment's error
    return text


def jl_aggregate(case: dict[str, Any], replies: Sequence[Any] | None = None, **over: Any) -> Any:
    args: dict[str, Any] = {
        "server_key": case["server_key"],
        "biprime": case["biprime"],
        "round_number": case["round"],
        "n_nodes": len(case["parties"]),
        "secagg_random": case["secagg_random"],
        "clipping_range": case["clipping_range"],
        "n_params": case["size"],
        **over,
    }
    return aggregate_results(case["replies"] if replies is None else replies, **args)


def lom_aggregate(case: dict[str, Any], replies: Sequence[Any] | None = None, **over: Any) -> Any:
    args: dict[str, Any] = {
        "n_nodes": len(case["parties"]),
        "secagg_random": case["secagg_random"],
        "n_params": case["size"],
        **over,
    }
    return aggregate_lom_results(case["replies"] if replies is None else replies, **args)


# --- 6.4.1's vectors: Joye-Libert -------------------------------------------------------------


def test_vectors_cover_the_brief() -> None:
    assert STOCK["fedbiomed"] == "v6.4.1"
    for cases in (JL_CASES, LOM_CASES):
        kinds = {(len(c["parties"]), c["weighted"]) for c in cases}
        assert kinds == {(2, True), (2, False), (3, True), (3, False)}
        assert any(c["secagg_random"] is not None for c in cases)
    assert {c["biprime"].bit_length() for c in JL_CASES} == {320, 1024}  # a test N and 6.4.1's default


@pytest.mark.parametrize("case", JL_CASES, ids=lambda c: c["name"])
def test_stock_encoder_is_fedbiomeds(case: dict[str, Any]) -> None:
    """The encoder the laws below use gives 6.4.1's ciphertexts, weights and factor alike."""
    for key, reply in zip(case["node_keys"], case["replies"], strict=True):
        weight = reply["sample_size"] if case["weighted"] else None
        common = {
            "key": key,
            "biprime": case["biprime"],
            "round_number": case["round"],
            "n_nodes": len(case["parties"]),
            "weight": weight,
            "clipping_range": case["clipping_range"],
        }
        assert stock_jl_encrypt(reply["clear_params"], **common) == reply["params"]
        if case["secagg_random"] is not None:
            assert stock_jl_encrypt([case["secagg_random"]], **common) == reply["encryption_factor"]


@pytest.mark.parametrize("case", JL_CASES, ids=lambda c: c["name"])
def test_stock_jl_replies_decrypt_as_fedbiomed_decrypts_them(case: dict[str, Any]) -> None:
    """The decoded sums are 6.4.1's; its mean is their truncated level, ours the untruncated one."""
    total = case["total_sample_size"]
    sums = decrypt_sums(
        [r["params"] for r in case["replies"]],
        server_key=case["server_key"],
        biprime=case["biprime"],
        round_number=case["round"],
        n_values=case["size"],
        n_nodes=len(case["parties"]),
        encoding=stock_encoding(),
        total_weight=total,
    ).unwrap()
    assert sums.tolist() == case["sums"]
    c = 3 if case["clipping_range"] is None else case["clipping_range"]
    fedbiomed_mean = lom_reverse_quantize(sums.astype(np.float64) / total, clipping_range=c)
    assert fedbiomed_mean.tolist() == case["mean"]

    agg = jl_aggregate(case).unwrap()  # the defaults: layout from the request, no fedpipe-only slot
    assert agg.stock == len(case["parties"])
    assert agg.total_weight == total
    assert np.array_equal(agg.weights, weighted_mean(sums, total, c))
    assert np.max(np.abs(agg.weights - np.asarray(case["mean"]))) <= step_size(c, 2**13) * 1.001
    if case["secagg_random"] is None:
        assert agg.factor is None
    else:
        assert agg.factor is not None
        assert abs(agg.factor - case["validation"][0]) <= step_size(c, 2**13) * 1.001
        assert abs(agg.factor - case["secagg_random"]) <= step_size(c, 2**13) * 1.001


def test_fedbiomed_researcher_accepts_every_factor_in_the_vectors() -> None:
    for case in [*JL_CASES, *LOM_CASES]:
        if case["secagg_random"] is not None:
            assert abs(case["validation"][0] - case["secagg_random"]) <= FACTOR_TOLERANCE


# --- 6.4.1's vectors: LOM ---------------------------------------------------------------------


@pytest.mark.parametrize("case", LOM_CASES, ids=lambda c: c["name"])
def test_stock_lom_replies_decrypt_to_fedbiomeds_mean(case: dict[str, Any]) -> None:
    agg = lom_aggregate(case).unwrap()
    assert agg.weights.tolist() == case["mean"]
    assert agg.stock == len(case["parties"])
    if case["secagg_random"] is not None:
        assert agg.factor == case["validation"][0]


LOM_CRYPTER_CASES = [
    c
    for c in LOM_VECTORS
    if c["kind"] == "crypter" and "encrypted" in c and all(w != 0 for w in c["weights"].values())
]


@pytest.mark.parametrize("case", LOM_CRYPTER_CASES, ids=lambda c: f"n{len(c['parties'])}-size{c['size']}")
def test_lom_crypter_vectors_decrypt_to_fedbiomeds_mean(case: dict[str, Any]) -> None:
    """Every full-length case of the LOM crypter vectors, as replies: 6.4.1's mean, value for value."""
    parties = case["parties"]
    replies = [
        {
            "encrypted": True,
            "params": case["encrypted"][p],
            "sample_size": case["weights"][p] or 1,  # unweighted encodes as weight 1
            "encryption_factor": None,
        }
        for p in parties
    ]
    assert sum(r["sample_size"] for r in replies) == case["total_sample_size"]
    agg = aggregate_lom_results(
        replies,
        n_nodes=len(parties),
        secagg_random=None,
        n_params=case["size"],
        clipping_range=case["clipping_range"],
        target_range=case["target_range"] or 2**13,
    ).unwrap()
    assert agg.weights.tolist() == case["mean"]


# --- mixed federations ------------------------------------------------------------------------

MIXED = next(c for c in JL_CASES if c["name"] == "jl-3-default-biprime")


def fedpipe_reply(
    case: dict[str, Any],
    i: int,
    *,
    encoding: Encoding,
    factor_index: int | None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Node i of ``case`` as a fedpipe node encrypts: its crypter, metadata.secagg as encrypt_update writes it."""
    reply = case["replies"][i]
    n = len(case["parties"])
    parties = ("researcher", *case["parties"])
    key = ServerKeyShare(secagg_id="sk", job_id="j", parties=parties, key=case["node_keys"][i])
    bp = Biprime(secagg_id="bp", biprime=case["biprime"], max_keysize=2048)
    crypter = JoyeLibertCrypter(encoding=encoding, pool=MaskPool(workers=0))

    def encrypt(values: Sequence[float], first_index: int) -> list[int]:
        return crypter.encrypt(
            list(values),
            key=key,
            biprime=bp,
            round_number=case["round"],
            weight=reply["sample_size"],
            clipping_range=case["clipping_range"],
            first_index=first_index,
        ).unwrap()

    cipher = encrypt(reply["clear_params"], 0)
    at = len(cipher) if factor_index is None else factor_index
    return {
        "encrypted": True,
        "model_weights": cipher,
        "encryption_factor": encrypt([case["secagg_random"]], at),
        "sample_size": reply["sample_size"],
        "optim_aux_var": {},
        "metadata": {
            "secagg": {
                "scheme": "joye-libert",
                "n_weights": case["size"],
                "n_values": case["size"],
                "aux_layout": [],
                "factor_index": at,
                "num_nodes": n,
                "out_of_range": 0,
                **(meta or {}),
            }
        },
    }


def clear_mean(case: dict[str, Any]) -> np.ndarray:
    c = 3 if case["clipping_range"] is None else case["clipping_range"]
    values = [np.clip(r["clear_params"], -c, c) for r in case["replies"]]
    return np.average(values, axis=0, weights=[r["sample_size"] for r in case["replies"]])


def test_mixed_jl_federation_decrypts_when_the_layouts_agree() -> None:
    """One fedpipe node in Fed-BioMed mode (no checksum slot, factor at index 0), two stock nodes."""
    fedpipe = fedpipe_reply(MIXED, 0, encoding=Encoding(checksum=False), factor_index=0)
    replies = [fedpipe, *MIXED["replies"][1:]]
    agg = jl_aggregate(MIXED, replies, encoding=Encoding(checksum=False)).unwrap()
    assert agg.stock == 2
    assert np.max(np.abs(agg.weights - clear_mean(MIXED))) <= STEP * 1.001
    # a node that records its encoding needs no researcher setting
    described = fedpipe_reply(
        MIXED,
        0,
        encoding=Encoding(checksum=False),
        factor_index=0,
        meta={"encoding": Encoding(checksum=False).describe()},
    )
    assert jl_aggregate(MIXED, [described, *MIXED["replies"][1:]]).unwrap().stock == 2
    # without the factor check, the factor's index does not matter
    after = fedpipe_reply(MIXED, 0, encoding=Encoding(checksum=False), factor_index=None)
    assert jl_aggregate(
        MIXED, [after, *MIXED["replies"][1:]], encoding=Encoding(checksum=False), secagg_random=None
    )


@pytest.mark.parametrize(
    ("encoding", "factor_index", "meta", "expected"),
    [
        (Encoding(), None, {}, "checksum slot"),  # fedpipe's defaults: checksum slot, factor after the update
        (Encoding(checksum=False), None, {}, "factor at index"),  # the factors sit at other tau indices
        (Encoding(checksum=False), 0, {"n_values": 71, "n_weights": 70}, "71 values"),  # aux vars
    ],
    ids=["checksum", "factor-index", "aux-vars"],
)
def test_mixed_jl_federation_that_cannot_agree_gets_one_clear_line(
    encoding: Encoding, factor_index: int | None, meta: dict[str, Any], expected: str
) -> None:
    if "n_values" in meta:
        meta["aux_layout"] = [{"path": ["m", "x"], "shape": [], "kind": "scalar"}]
    fedpipe = fedpipe_reply(MIXED, 0, encoding=encoding, factor_index=factor_index, meta=meta)
    text = reason(jl_aggregate(MIXED, [fedpipe, *MIXED["replies"][1:]], encoding=encoding))
    assert "disagree on the layout" in text
    assert expected in text
    assert "no fedpipe metadata" in text


def test_fedpipe_replies_keep_their_checks() -> None:
    """With fedpipe metadata, fedpipe's checksum slot is expected (and checked) as before."""
    replies = [fedpipe_reply(MIXED, i, encoding=Encoding(), factor_index=None) for i in range(3)]
    agg = jl_aggregate(MIXED, replies).unwrap()
    assert agg.stock == 0
    assert np.max(np.abs(agg.weights - clear_mean(MIXED))) <= STEP / 2 + 1e-9  # fedpipe rounds
    assert "weights, but the model sent has 69" in reason(jl_aggregate(MIXED, replies, n_params=69))
    assert "encrypted for 4 nodes" in reason(
        jl_aggregate(
            MIXED,
            [
                fedpipe_reply(MIXED, 0, encoding=Encoding(), factor_index=None, meta={"num_nodes": 4}),
                *replies[1:],
            ],
        )
    )
    assert "does not say how many" in reason(jl_aggregate(MIXED, MIXED["replies"], n_params=None))


LOM_MIXED = next(c for c in LOM_CASES if c["name"] == "lom-3-weighted")


def test_mixed_lom_federation() -> None:
    def with_meta(reply: dict[str, Any], **meta: Any) -> dict[str, Any]:
        secagg = {
            "scheme": "lom",
            "n_weights": 40,
            "n_values": 40,
            "aux_layout": [],
            "factor_index": 0,
            **meta,
        }
        return {**reply, "metadata": {"secagg": secagg}}

    replies = [with_meta(LOM_MIXED["replies"][0]), *LOM_MIXED["replies"][1:]]
    agg = lom_aggregate(LOM_MIXED, replies).unwrap()
    assert agg.weights.tolist() == LOM_MIXED["mean"]
    assert agg.stock == 2
    aux = [{"path": ["m", "x"], "shape": [], "kind": "scalar"}]
    disagree = [with_meta(LOM_MIXED["replies"][0], n_values=41, aux_layout=aux), *LOM_MIXED["replies"][1:]]
    assert "disagree on the layout" in reason(lom_aggregate(LOM_MIXED, disagree))
    other = [with_meta(LOM_MIXED["replies"][0], scheme="joye-libert"), *LOM_MIXED["replies"][1:]]
    assert "not LOM" in reason(lom_aggregate(LOM_MIXED, other))


# --- the researcher's contexts ----------------------------------------------------------------


def node_results(case: dict[str, Any]) -> list[NodeResult]:
    return [
        NodeResult(node_id=p, success=True, sample_size=r["sample_size"], results=r)
        for p, r in zip(case["parties"], case["replies"], strict=True)
    ]


def test_secure_aggregation_decrypts_stock_replies_with_its_defaults() -> None:
    case = MIXED
    material = KeyMaterial(
        biprime=case["biprime"], node_keys=tuple(case["node_keys"]), server_key=case["server_key"]
    )
    secagg = SecureAggregation(material=material, node_ids=tuple(case["parties"]), job_id="j")
    secagg.randoms[case["round"]] = case["secagg_random"]
    template = {"w": torch.zeros(7, 10)}
    params = secagg.wrap(FedAvg(), template).aggregate(template, node_results(case), case["round"])
    assert params["w"].shape == (7, 10)
    assert np.max(np.abs(params["w"].reshape(-1).double().numpy() - case["mean"])) <= 1.5 * STEP
    secagg.close()


def test_secure_aggregation_starts_the_server_masks_with_the_requests() -> None:
    """With a pool, the round's server masks are under way when the requests go out, dropped once used."""
    km = small_keys(2)
    pool = MaskPool(workers=1, nice=0)
    secagg = SecureAggregation(material=km, node_ids=("n0", "n1"), job_id="j", pool=pool)
    template = {"w": torch.zeros(40)}
    strategy = secagg.wrap(FedAvg(), template)
    try:
        fields = secagg.request_fields(5)
        assert pool.stats(km.server_key, km.biprime, 5) is not None
        values = [[0.5] * 40, [-1.0] * 40]
        results = [
            NodeResult(
                node_id=f"n{i}",
                success=True,
                sample_size=w,
                results={
                    "encrypted": True,
                    "params": stock_jl_encrypt(
                        values[i],
                        key=km.node_keys[i],
                        biprime=km.biprime,
                        round_number=5,
                        n_nodes=2,
                        weight=w,
                    ),
                    "encryption_factor": stock_jl_encrypt(
                        [fields["secagg_random"]],
                        key=km.node_keys[i],
                        biprime=km.biprime,
                        round_number=5,
                        n_nodes=2,
                        weight=w,
                    ),
                    "sample_size": w,
                },
            )
            for i, w in enumerate((1, 3))
        ]
        params = strategy.aggregate(template, results, 5)
        assert np.allclose(params["w"].double().numpy(), -0.625, atol=STEP)
        assert pool.stats(km.server_key, km.biprime, 5) is None
    finally:
        secagg.close()


def test_lom_aggregation_decrypts_stock_replies() -> None:
    case = LOM_MIXED
    secagg = LomAggregation(node_ids=tuple(case["parties"]), secagg_id="secagg_x")
    secagg.randoms[case["round"]] = case["secagg_random"]
    weights, aux = secagg.decrypt(node_results(case), case["round"], n_params=case["size"])
    assert weights.tolist() == case["mean"]
    assert aux == {}
    args = secagg.secagg_arguments(case["round"] + 1)
    assert args["secagg_scheme"] == 2
    assert args["parties"] == case["parties"]
    assert 0 <= args["secagg_random"] <= 1


# --- laws -------------------------------------------------------------------------------------

randoms = st.floats(0, 1, allow_nan=False)
sample_sizes = st.integers(1, 2**17 - 1)


def small_keys(n: int) -> KeyMaterial:
    # the compatible packing wants N of 1024 bits at least; short shares keep the exponentiations cheap
    return make_key_material(n, bits=1024, seed=n, key_bits=128)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 5),
    secagg_random=randoms,
    round_number=st.integers(0, 2**20),
    data=st.data(),
)
def test_jl_factor_round_trips_at_index_zero(
    n: int, secagg_random: float, round_number: int, data: st.DataObject
) -> None:
    """Any mix of stock nodes and fedpipe nodes in Fed-BioMed mode, any weights: the factor comes
    back within one quantization step of ``secagg_random``, at tau index 0."""
    km = small_keys(n)
    weights = data.draw(st.lists(sample_sizes, min_size=n, max_size=n))
    fedpipe = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    values = [data.draw(st.lists(st.floats(-3, 3), min_size=3, max_size=3)) for _ in range(n)]
    crypter = JoyeLibertCrypter(encoding=Encoding(checksum=False), pool=MaskPool(workers=0))
    parties = ("researcher", *(f"node-{i}" for i in range(n)))
    replies = []
    for i in range(n):
        if fedpipe[i]:
            key, bp = km.node_records(i, secagg_id="sk", biprime_id="bp", job_id="j", parties=parties)

            def encrypt(
                vals: list[float], key: ServerKeyShare = key, bp: Biprime = bp, w: int = weights[i]
            ) -> list[int]:
                return crypter.encrypt(
                    vals, key=key, biprime=bp, round_number=round_number, weight=w, clipping_range=None
                ).unwrap()
        else:

            def encrypt(vals: list[float], key: int = km.node_keys[i], w: int = weights[i]) -> list[int]:
                return stock_jl_encrypt(
                    vals, key=key, biprime=km.biprime, round_number=round_number, n_nodes=n, weight=w
                )

        replies.append(
            {
                "encrypted": True,
                "params": encrypt(values[i]),
                "encryption_factor": encrypt([secagg_random]),
                "sample_size": weights[i],
            }
        )
    agg = aggregate_results(
        replies,
        server_key=km.server_key,
        biprime=km.biprime,
        round_number=round_number,
        n_nodes=n,
        secagg_random=secagg_random,
        n_params=3,
    ).unwrap()
    assert agg.factor is not None
    assert abs(agg.factor - secagg_random) <= STEP * 1.001
    truth = np.average(np.asarray(values), axis=0, weights=weights)
    assert np.max(np.abs(agg.weights - truth)) <= STEP * 1.001


ids = st.text(alphabet="abAB_-0", min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(
    parties=st.lists(ids, min_size=2, max_size=5, unique=True),
    secagg_random=randoms,
    round_number=st.integers(0, 10**6),
    data=st.data(),
)
def test_lom_factor_round_trips_at_index_zero(
    parties: list[str], secagg_random: float, round_number: int, data: st.DataObject
) -> None:
    """LOM's factor (6.4.1: the same masks as the update's first value) decrypts to ``secagg_random``
    within two steps (the nodes' truncation, then the mean's), far inside 6.4.1's 0.03."""
    pair = {
        frozenset((a, b)): data.draw(st.binary(min_size=32, max_size=32))
        for a in parties
        for b in parties
        if a < b
    }
    crypter = LomCrypter.for_secagg_id("secagg_law")
    replies = []
    for p in parties:
        secrets = {q: pair[frozenset((p, q))] for q in parties if q != p}
        weight = data.draw(sample_sizes)
        common = {"pairwise_secrets": secrets, "own_id": p, "round_number": round_number, "weight": weight}
        values = data.draw(st.lists(st.floats(-3, 3), min_size=2, max_size=2))
        replies.append(
            {
                "encrypted": True,
                "params": crypter.encrypt(values, **common).unwrap().tolist(),
                "encryption_factor": crypter.encryption_factor(secagg_random, **common).unwrap().tolist(),
                "sample_size": weight,
            }
        )
    agg = aggregate_lom_results(
        replies, n_nodes=len(parties), secagg_random=secagg_random, n_params=2
    ).unwrap()
    assert agg.factor is not None
    assert abs(agg.factor - secagg_random) <= 2 * STEP * 1.001


def test_decryption_on_all_cores_equals_inline() -> None:
    """Without a pool, enough server masks go to worker processes; the sums are those of an inline pool."""
    km = make_key_material(2, bits=1024, seed=3, key_bits=128)
    n_values = 32 * PARALLEL_MASKS  # 2 nodes: 32 values a ciphertext
    rng = np.random.default_rng(5)
    cipher = [
        stock_jl_encrypt(
            rng.uniform(-3, 3, n_values).tolist(),
            key=k,
            biprime=km.biprime,
            round_number=4,
            n_nodes=2,
            weight=w,
        )
        for k, w in zip(km.node_keys, (3, 9), strict=True)
    ]
    common: dict[str, Any] = {
        "server_key": km.server_key,
        "biprime": km.biprime,
        "round_number": 4,
        "n_values": n_values,
        "n_nodes": 2,
        "encoding": stock_encoding(),
        "total_weight": 12,
    }
    assert len(cipher[0]) >= PARALLEL_MASKS
    parallel = decrypt_sums(cipher, **common).unwrap()
    inline = decrypt_sums(cipher, pool=MaskPool(workers=0), **common).unwrap()
    assert np.array_equal(parallel, inline)


# --- bad stock replies ------------------------------------------------------------------------

JL_SMALL = next(c for c in JL_CASES if c["name"] == "jl-3-weighted-clip2")
LOM_SMALL = next(c for c in LOM_CASES if c["name"] == "lom-2-weighted")


def edited(case: dict[str, Any], u: int, **fields: Any) -> list[dict[str, Any]]:
    replies = [dict(r) for r in case["replies"]]
    replies[u].update(fields)
    return replies


def test_bad_stock_jl_replies_give_one_line_errors() -> None:
    case = JL_SMALL
    params = case["replies"][1]["params"]
    assert "has 0 ciphertexts, expected 1 for 9 values" in reason(
        jl_aggregate(case, edited(case, 1, params=[]))
    )
    longer = edited(case, 1, params=[*params, params[0]])
    assert "has 2 ciphertexts, expected 1" in reason(jl_aggregate(case, longer))
    for bad in (1.5, "7", True, None, -3, 0, case["biprime"] ** 2):
        assert "not a ciphertext" in reason(jl_aggregate(case, edited(case, 2, params=[bad])))
    assert "has no encryption factor" in reason(jl_aggregate(case, edited(case, 0, encryption_factor=None)))
    assert "not one encrypted value" in reason(jl_aggregate(case, edited(case, 0, encryption_factor=[1, 2])))
    assert "expected 3 encrypted updates, got 2" in reason(jl_aggregate(case, case["replies"][:2]))
    assert "not an encrypted update" in reason(jl_aggregate(case, edited(case, 0, encrypted=False)))
    assert "sample_size" in reason(jl_aggregate(case, edited(case, 0, sample_size=0)))
    assert "decrypts to" in reason(jl_aggregate(case, secagg_random=case["secagg_random"] + 0.01))
    assert "do not decrypt" in reason(jl_aggregate(case, round_number=case["round"] + 1))
    # without validation a missing factor is no error, as in 6.4.1
    assert (
        jl_aggregate(case, edited(case, 0, encryption_factor=None), secagg_random=None).unwrap().factor
        is None
    )


def test_bad_stock_lom_replies_give_one_line_errors() -> None:
    case = LOM_SMALL
    params = case["replies"][1]["params"]
    assert "has 8 values, expected 9" in reason(lom_aggregate(case, edited(case, 1, params=params[:-1])))
    for bad in (1.5, "7", True, None, -1, 2**64):
        assert "not an integer in [0, 2**64)" in reason(
            lom_aggregate(case, edited(case, 1, params=[bad, *params[1:]]))
        )
    assert "has no encryption factor" in reason(lom_aggregate(case, edited(case, 0, encryption_factor=None)))
    assert "not one encrypted value" in reason(lom_aggregate(case, edited(case, 0, encryption_factor=[1, 2])))
    assert "decrypts to" in reason(lom_aggregate(case, secagg_random=case["secagg_random"] + 0.05))
    # a missing node leaves its peers' masks in the sum
    assert "masks did not cancel" in reason(
        lom_aggregate(case, case["replies"][:1], n_nodes=1, secagg_random=None)
    )
    assert "expected 2 encrypted updates, got 1" in reason(lom_aggregate(case, case["replies"][:1]))
    assert "does not say how many" in reason(lom_aggregate(case, n_params=None))


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(),
    st.text(max_size=3),
    st.integers(max_value=-1),
    st.integers(min_value=2**64),
    st.lists(st.integers(0, 9), max_size=2),
)


@settings(max_examples=60, deadline=None)
@given(
    scheme=st.sampled_from(["jl", "lom"]),
    node=st.integers(0, 1),
    change=st.sampled_from(["value", "drop", "add", "factor", "field"]),
    value=junk,
    data=st.data(),
)
def test_corrupted_stock_replies_are_refused_in_one_line(
    scheme: str, node: int, change: str, value: Any, data: st.DataObject
) -> None:
    """Whatever is wrong with a stock reply, the researcher gets a one-line refusal, never an exception."""
    case = JL_SMALL if scheme == "jl" else LOM_SMALL
    reply = dict(case["replies"][node])
    params = list(reply["params"])
    at = data.draw(st.integers(0, len(params) - 1))
    if change == "value":
        params[at] = value
    elif change == "drop":
        del params[at]
    elif change == "add":
        params.insert(at, params[at])
    reply["params"] = params
    if change == "factor":
        reply["encryption_factor"] = value if not isinstance(value, list) else [*value, 1]
    if change == "field":
        reply[data.draw(st.sampled_from(["sample_size", "encrypted", "params"]))] = value
    replies = [*case["replies"][:node], reply, *case["replies"][node + 1 :]]
    outcome = jl_aggregate(case, replies) if scheme == "jl" else lom_aggregate(case, replies)
    if isinstance(outcome, Failure):
        reason(outcome)
    else:  # only a change that keeps the reply valid may decrypt
        assert change == "field" and value is True


@pytest.mark.parametrize(
    "case",
    # the test biprimes of the other cases are below the 1024 bits fedpipe's compatible packing needs
    [c for c in STOCK["jl"] if c["weighted"] and c["biprime"].bit_length() >= 1024],
    ids=lambda c: c["name"],
)
def test_fedbiomed_mode_encrypts_bit_for_bit_as_a_stock_node(case: dict[str, Any]) -> None:
    """The node's crypter in a Fed-BioMed federation (no checksum, 6.4.1's quantisation) is a stock node."""

    crypter = JoyeLibertCrypter(
        encoding=Encoding(checksum=False, quantization=Quantization.FEDBIOMED), pool=MaskPool(workers=0)
    )
    parties = ("researcher", *case["parties"])
    biprime = Biprime(secagg_id="s", biprime=case["biprime"])
    clip = case["clipping_range"]
    for key, reply in zip(case["node_keys"], case["replies"], strict=True):
        share = ServerKeyShare(secagg_id="s", job_id="j", parties=parties, key=key)
        common = {
            "key": share,
            "biprime": biprime,
            "round_number": case["round"],
            "weight": reply["sample_size"],
        }
        cipher = crypter.encrypt(reply["clear_params"], clipping_range=clip, **common).unwrap()
        factor = crypter.encrypt([case["secagg_random"]], clipping_range=clip, **common).unwrap()
        assert cipher == reply["params"]
        assert factor == reply["encryption_factor"]
