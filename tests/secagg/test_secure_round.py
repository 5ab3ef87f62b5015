"""Secure rounds over fakes with the real crypter; the researcher decrypts the uploads to the weighted mean."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from returns.result import Failure

from fedpipe.codec import loads
from fedpipe.compose import replace
from fedpipe.errors import ErrorCode
from fedpipe.reply import TrainReply
from fedpipe.rounds import standard_round
from fedpipe.runner import run_round
from fedpipe.secagg import (
    WEIGHT_RANGE,
    Encoding,
    JoyeLibertCrypter,
    KeyMaterial,
    MaskPool,
    PackingMode,
    aggregate_results,
    make_key_material,
)
from fedpipe.secagg.quantize import step_size
from fedpipe.settings import NodeSettings
from fedpipe.steps import encrypt_update
from fedpipe.testing import FakeNode, ScriptedPlan

SECAGG = {"secagg_servkey_id": "sk", "secagg_biprime_id": "bp", "secagg_random": 0.25}
STEP = step_size(3, 2**13)


@pytest.fixture(scope="module")
def km() -> KeyMaterial:
    """Full-size default key material: 2048-bit N, 4088-bit shares."""
    return make_key_material(3)


@pytest.fixture(scope="module")
def pool() -> Iterator[MaskPool]:
    p = MaskPool(workers=2, chunk=4)
    yield p
    p.close()


def make_node(tmp_path: Path, km: KeyMaterial, i: int, crypter: Any, *, n_parties: int = 3) -> FakeNode:
    settings = NodeSettings(node_id=f"node-{i}", root=tmp_path / f"node-{i}")
    node = FakeNode(settings=settings) if crypter is None else FakeNode(settings=settings, crypter=crypter)
    parties = ("researcher-1", *(f"node-{k}" for k in range(n_parties)))
    key, bp = km.node_records(i, secagg_id="sk", biprime_id="bp", job_id="job-1", parties=parties)
    node.secagg_keys.server_keys["sk"] = key
    node.secagg_keys.biprimes["bp"] = bp
    return node


def aggregate(
    results: list[dict[str, Any]], km: KeyMaterial, pool: MaskPool, *, round_number: int = 1, **options: Any
) -> Any:
    """The researcher's aggregation of ``results`` with this module's key material: 3 nodes,
    secagg_random 0.25 unless ``options`` say otherwise."""
    settings: dict[str, Any] = {"n_nodes": 3, "secagg_random": 0.25, **options}
    return aggregate_results(
        results,
        server_key=km.server_key,
        biprime=km.biprime,
        round_number=round_number,
        pool=pool,
        **settings,
    )


def results_of(node: FakeNode, reply: TrainReply) -> dict[str, Any]:
    assert reply.success, reply.error
    content = loads(node.exchange.uploads[reply.params_url]).unwrap()
    assert isinstance(content, dict)
    return content


def plan_factory(n_samples: int, index: int, *, target: float = 1.0, aux: bool = False) -> Any:
    def make() -> ScriptedPlan:
        aux_out: dict[str, Any] = (
            {"scaffold": {"delta": np.full((2, 2), 0.5 * index - 0.5), "steps": float(index), "name": "sgd"}}
            if aux
            else {}
        )
        return ScriptedPlan(n_samples=n_samples, target=target, lr=0.05, aux_out=aux_out)

    return make


def run_nodes(
    tmp_path: Path,
    km: KeyMaterial,
    crypter_of: Any,
    sizes: list[int],
    *,
    secure: bool,
    aux: bool = False,
    **fields: Any,
) -> list[dict[str, Any]]:
    out = []
    for i, n in enumerate(sizes):
        node = make_node(tmp_path / ("s" if secure else "p"), km, i, crypter_of(i))
        request = node.request(
            plan=plan_factory(n, i, aux=aux),
            round=fields.pop("round", 1),
            **(SECAGG if secure else {}),
            **fields,
        )
        out.append(results_of(node, run_round(request, node.ports, node.settings)))
    return out


def clear_mean(results: list[dict[str, Any]]) -> np.ndarray:
    weights = [np.asarray(r["model_weights"]["w"], dtype=np.float64) for r in results]
    return np.average(weights, axis=0, weights=[r["sample_size"] for r in results])


@pytest.mark.parametrize("mode", [PackingMode.COMPATIBLE, PackingMode.DENSE])
def test_secure_round_decrypts_to_the_weighted_mean(
    tmp_path: Path, km: KeyMaterial, pool: MaskPool, mode: PackingMode
) -> None:
    encoding = Encoding(mode=mode)
    sizes = [10, 57, 300]
    plain = run_nodes(tmp_path, km, lambda _: JoyeLibertCrypter(pool=pool), sizes, secure=False)
    secure = run_nodes(
        tmp_path, km, lambda _: JoyeLibertCrypter(encoding=encoding, pool=pool), sizes, secure=True
    )
    assert all(r["encrypted"] is True and all(isinstance(c, int) for c in r["model_weights"]) for r in secure)
    agg = aggregate(secure, km, pool, encoding=encoding).unwrap()
    assert agg.total_weight == sum(sizes)
    assert agg.out_of_range == 0
    assert agg.factor is not None
    assert abs(agg.factor - 0.25) <= STEP
    assert np.max(np.abs(agg.weights - clear_mean(plain))) <= STEP / 2 + 1e-9


def test_aux_vars_are_encrypted_in_the_same_pass(tmp_path: Path, km: KeyMaterial, pool: MaskPool) -> None:
    """D2: numeric aux vars never leave the node in clear; the researcher rebuilds their weighted mean."""
    sizes = [20, 40, 140]
    secure = run_nodes(tmp_path, km, lambda _: JoyeLibertCrypter(pool=pool), sizes, secure=True, aux=True)
    for r in secure:
        assert r["optim_aux_var"] == {"scaffold": {"name": "sgd"}}
        assert r["metadata"]["secagg"]["n_values"] == 3 + 5
    agg = aggregate(secure, km, pool).unwrap()
    deltas = [np.full((2, 2), 0.5 * i - 0.5) for i in range(3)]
    scaffold = agg.aux_vars["scaffold"]
    assert scaffold["name"] == "sgd"
    assert np.allclose(scaffold["delta"], np.average(deltas, axis=0, weights=sizes), atol=STEP)
    assert abs(scaffold["steps"] - np.average([0.0, 1.0, 2.0], weights=sizes)) <= STEP


def test_values_beyond_the_clipping_range_are_counted_and_reported(
    tmp_path: Path, km: KeyMaterial, pool: MaskPool
) -> None:
    node = make_node(tmp_path, km, 0, JoyeLibertCrypter(pool=pool))
    request = node.request(plan=lambda: ScriptedPlan(n_samples=50, target=5.0, lr=0.5), **SECAGG, round=1)
    result = results_of(node, run_round(request, node.ports, node.settings))
    assert result["metadata"]["secagg"]["out_of_range"] == 3  # clipped, counted, reported: never silent


def test_tau_reuse_is_refused(tmp_path: Path, km: KeyMaterial, pool: MaskPool) -> None:
    node = make_node(tmp_path, km, 0, JoyeLibertCrypter(pool=pool))
    assert run_round(node.request(**SECAGG, round=4), node.ports, node.settings).success
    reply = run_round(node.request(**SECAGG, round=4), node.ports, node.settings)
    assert reply.error is not None
    assert (reply.error.code, reply.error.step) == (
        ErrorCode.SECAGG_CONFIG,
        "encrypt_update",
    )


@pytest.mark.parametrize(
    ("fields", "n_parties", "node_index", "samples", "code"),
    [
        ({"secagg_random": 4.0}, 3, 0, 10, ErrorCode.SECAGG_CONFIG),  # factor outside the clipping range
        ({"secagg_random": 1.5, "secagg_clipping_range": 1}, 3, 0, 10, ErrorCode.SECAGG_CONFIG),
        ({}, 1, 0, 10, ErrorCode.SECAGG_CONFIG),  # a one-node context reveals the update
        ({}, 3, 5, 10, ErrorCode.SECAGG_CONFIG),  # this node is not a party
        ({}, 3, 0, WEIGHT_RANGE, ErrorCode.ENCRYPTION_FAILED),  # sample size beyond the weight range
    ],
    ids=["random-out-of-range", "random-beyond-clip", "one-node", "not-a-party", "weight-range"],
)
def test_node_side_validation(
    tmp_path: Path,
    km: KeyMaterial,
    pool: MaskPool,
    fields: dict[str, Any],
    n_parties: int,
    node_index: int,
    samples: int,
    code: ErrorCode,
) -> None:
    node = make_node(tmp_path, km, 0, JoyeLibertCrypter(pool=pool), n_parties=n_parties)
    node.settings = NodeSettings(node_id=f"node-{node_index}", root=tmp_path / "n")
    request = node.request(plan=lambda: ScriptedPlan(n_samples=samples), **{**SECAGG, **fields}, round=2)
    reply = run_round(request, node.ports, node.settings)
    assert reply.error is not None
    assert (reply.error.code, reply.error.step) == (code, "encrypt_update")
    assert (
        "sk",
        2,
    ) not in node.secagg_keys.claimed or code is ErrorCode.ENCRYPTION_FAILED  # checks come first


def test_researcher_refuses_a_wrong_factor_and_a_missing_node(
    tmp_path: Path, km: KeyMaterial, pool: MaskPool
) -> None:
    secure = run_nodes(tmp_path, km, lambda _: JoyeLibertCrypter(pool=pool), [5, 6, 7], secure=True)
    wrong_factor = aggregate(secure, km, pool, secagg_random=0.5)
    assert isinstance(wrong_factor, Failure)
    assert "secagg_random" in wrong_factor.failure().reason
    missing = aggregate(secure[:2], km, pool)
    assert isinstance(missing, Failure)
    assert "expected 3" in missing.failure().reason
    wrong_round = aggregate(secure, km, pool, round_number=2)
    assert isinstance(wrong_round, Failure)
    assert "do not decrypt" in wrong_round.failure().reason
    edited = [dict(r) for r in secure]
    edited[0] = {**edited[0], "sample_size": 500}  # a node lying about its weight
    lie = aggregate(edited, km, pool)
    assert isinstance(lie, Failure)
    assert "secagg_random" in lie.failure().reason


def test_fedbiomed_factor_option_uses_index_zero(tmp_path: Path, km: KeyMaterial, pool: MaskPool) -> None:
    results = []
    for i, n in enumerate([5, 6, 7]):
        node = make_node(tmp_path, km, i, JoyeLibertCrypter(pool=pool))
        rnd = replace(
            standard_round(node.ports),
            "encrypt_update",
            encrypt_update(node.crypter, node.secagg_keys, fedbiomed_factor=True),
        )
        request = node.request(plan=plan_factory(n, i), **SECAGG, round=3)
        results.append(results_of(node, run_round(request, node.ports, node.settings, rnd)))
    assert all(r["metadata"]["secagg"]["factor_index"] == 0 for r in results)
    agg = aggregate(results, km, pool, round_number=3).unwrap()
    assert agg.factor is not None
    assert abs(agg.factor - 0.25) <= STEP


def test_start_masks_runs_before_training_with_the_parameter_count(tmp_path: Path, km: KeyMaterial) -> None:
    node = make_node(tmp_path, km, 0, None)
    reply = run_round(node.request(**SECAGG, round=2, params={"w": [0.0] * 7}), node.ports, node.settings)
    assert node.crypter.started == [("sk", 2, 7)]
    assert node.crypter.first_indices == [0, 7]  # the factor follows the update: no tau index twice
    assert reply.success, reply.error
    plain = make_node(tmp_path / "plain", km, 0, None)
    assert run_round(plain.request(round=2), plain.ports, plain.settings).success
    assert plain.crypter.started == []
