"""LOM rounds of fedpipe's own federation over fakes: the request fields, the rules, key agreement, decryption."""

import threading
from pathlib import Path
from typing import Any

import pytest
from attrs import evolve
from returns.result import Success

from fedpipe.codec import loads
from fedpipe.errors import ErrorCode
from fedpipe.ports import LomPorts
from fedpipe.request import parse_request
from fedpipe.researcher.experiment import ExperimentStopped, NodeResult
from fedpipe.researcher.secure import FedpipeLomAggregation
from fedpipe.runner import RoundRun, execute_round
from fedpipe.secagg.identity import encode_offer, new_identity_key, offer_message, sign
from fedpipe.secagg.lom import FEDPIPE_TARGET_RANGE
from fedpipe.settings import NodeSettings
from fedpipe.testing import (
    FakeClock,
    FakeNode,
    InMemoryIdentity,
    InMemoryLomKeys,
    InMemorySecaggRelay,
    ScriptedPlan,
    lom_federation,
)

NODES = ("node-1", "node-2", "node-3")
CONTEXT = "lom-ctx-1"
STEP = 2 * 3 / (FEDPIPE_TARGET_RANGE - 1)


def lom_fields(parties: tuple[str, ...] = NODES, **changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "secagg_scheme": "lom",
        "secagg_dh_id": CONTEXT,
        "secagg_parties": list(parties),
        "secagg_random": 0.375,
        "secagg_clipping_range": 3,
    }
    fields.update(changes)
    return fields


def make_node(tmp_path: Path, node_id: str, lom: LomPorts | None, clock: FakeClock | None = None) -> FakeNode:
    return FakeNode(
        settings=NodeSettings(node_id=node_id, root=tmp_path / node_id), lom=lom, clock=clock or FakeClock()
    )


def plan_of(i: int) -> Any:
    # different data sizes and targets, so the nodes' updates and weights differ
    return lambda: ScriptedPlan(n_samples=8 * (i + 1), target=0.5 + i, lr=0.05)


def request_of(node: FakeNode, i: int, round_number: int = 0, **fields: Any) -> dict[str, Any]:
    return node.request(plan=plan_of(i), round=round_number, **fields)


def results_of(node: FakeNode, run: RoundRun) -> dict[str, Any]:
    assert run.reply.success, run.reply.error
    decoded = loads(node.exchange.uploads[run.reply.params_url])
    assert isinstance(decoded, Success)
    value = decoded.unwrap()
    assert isinstance(value, dict)
    return value


def run_together(nodes: list[FakeNode], requests: list[dict[str, Any]]) -> list[RoundRun]:
    """The nodes' rounds at once, in threads (they meet on the relay)."""
    runs: list[RoundRun | None] = [None] * len(nodes)

    def go(i: int) -> None:
        runs[i] = execute_round(requests[i], nodes[i].ports, nodes[i].settings)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None for r in runs)
    return [r for r in runs if r is not None]


def plain_weights(tmp_path: Path) -> tuple[list[list[float]], list[int]]:
    """What the same nodes send in a plain round: their weights and sample sizes."""
    nodes = [make_node(tmp_path / "plain", n, None) for n in NODES]
    weights, sizes = [], []
    for i, node in enumerate(nodes):
        run = execute_round(request_of(node, i), node.ports, node.settings)
        results = results_of(node, run)
        weights.append(results["model_weights"]["w"])
        sizes.append(int(results["sample_size"]))
    return weights, sizes


def assert_refused(run: RoundRun, step: str, *texts: str) -> str:
    reply = run.reply
    assert reply.success is False and reply.error is not None
    assert (reply.error.code, reply.error.step) == (ErrorCode.SECAGG_CONFIG, step), reply.error
    assert "\n" not in reply.msg
    for text in texts:
        assert text in reply.msg, reply.msg
    return reply.msg


# --- the request --------------------------------------------------------------------------------


def test_the_lom_fields_parse_and_an_old_request_reads_as_before(tmp_path: Path) -> None:
    node = make_node(tmp_path, "node-1", None)
    old = node.request()
    parsed = parse_request(old).unwrap()
    assert (parsed.secagg_scheme, parsed.secagg_dh_id, parsed.secagg_parties) == (None, None, None)
    assert not {"secagg_scheme", "secagg_dh_id", "secagg_parties"} & set(parsed.to_dict())
    lom = parse_request({**old, **lom_fields()}).unwrap()
    assert lom.lom_requested and lom.secagg_parties == NODES
    assert parse_request(lom.to_dict()).unwrap() == lom


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("secagg_scheme", "paillier", 'must be "joye-libert", "lom" or null'),
        ("secagg_scheme", 2, 'must be "joye-libert", "lom" or null'),
        ("secagg_parties", ["node-1", "node-1"], "distinct node ids"),
        ("secagg_parties", ["node-1"], "distinct node ids"),
        ("secagg_parties", "node-1,node-2", "distinct node ids"),
        ("secagg_parties", ["node-1", ""], "distinct node ids"),
        ("secagg_dh_id", "", "non-empty string"),
    ],
)
def test_bad_lom_fields_are_refused_by_name(tmp_path: Path, field: str, value: Any, rule: str) -> None:
    request = {**make_node(tmp_path, "node-1", None).request(), field: value}
    error = parse_request(request).failure()
    assert error.code is ErrorCode.BAD_REQUEST
    assert f"`{field}`" in error.public and rule in error.public


# --- the rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "settings", "text"),
    [
        ({**lom_fields(), "secagg_servkey_id": "sk"}, {}, "must not name Joye-Libert contexts"),
        ({"secagg_dh_id": CONTEXT}, {}, 'need `secagg_scheme` "lom"'),
        ({"secagg_parties": list(NODES)}, {}, 'need `secagg_scheme` "lom"'),
        ({"secagg_scheme": "joye-libert"}, {}, "must contain `secagg_servkey_id`"),
        (lom_fields(secagg_dh_id=None), {}, "`secagg_dh_id`"),
        (lom_fields(secagg_parties=None), {}, "`secagg_parties`"),
        (lom_fields(parties=("node-2", "node-3")), {}, "not a party"),
        (lom_fields(secagg_random=None), {}, "`secagg_random`"),
        (lom_fields(secagg_random=3.5), {}, "within the clipping range"),
        (lom_fields(secagg_clipping_range=0), {}, "must be positive"),
        (lom_fields(), {"secure_aggregation": False}, "not activated"),
        ({}, {"force_secure_aggregation": True}, "requires secure aggregation"),
    ],
)
def test_lom_rules_refuse_in_check_secagg(
    tmp_path: Path, fields: dict[str, Any], settings: dict[str, Any], text: str
) -> None:
    lom = lom_federation(NODES)["node-1"]
    node = make_node(tmp_path, "node-1", lom)
    node.settings = evolve(node.settings, **settings)
    assert_refused(
        execute_round(request_of(node, 0, **fields), node.ports, node.settings), "check_secagg", text
    )
    assert lom.relay.published == []  # type: ignore[attr-defined]


def test_a_node_without_a_relay_refuses_a_lom_round(tmp_path: Path) -> None:
    node = make_node(tmp_path, "node-1", None)
    run = execute_round(request_of(node, 0, **lom_fields()), node.ports, node.settings)
    assert_refused(run, "agree_keys", "no key relay")


# --- agreement and decryption -----------------------------------------------------------------------


def test_three_nodes_agree_and_their_sum_decrypts_to_the_weighted_mean(tmp_path: Path) -> None:
    relay = InMemorySecaggRelay()
    federation = lom_federation(NODES, relay=relay)
    nodes = [make_node(tmp_path, n, federation[n]) for n in NODES]
    secagg = FedpipeLomAggregation(node_ids=NODES, secagg_id=CONTEXT)
    expected_w, sizes = plain_weights(tmp_path)
    total = sum(sizes)
    expected = [sum(n * w[k] for n, w in zip(sizes, expected_w, strict=True)) / total for k in range(3)]

    for round_number in (0, 1):
        fields = secagg.request_fields(round_number)
        runs = run_together(
            nodes, [request_of(node, i, round_number, **fields) for i, node in enumerate(nodes)]
        )
        results = [
            NodeResult(
                node_id=node.settings.node_id, success=True, sample_size=size, results=results_of(node, run)
            )
            for node, run, size in zip(nodes, runs, sizes, strict=True)
        ]
        for r in results:  # what the researcher sees: masked words, no plaintext
            assert r.results["encrypted"] is True and len(r.results["model_weights"]) == 3
            assert r.results["metadata"]["secagg"]["factor_index"] == 3
        weights, _ = secagg.decrypt(results, round_number, n_params=3)
        assert all(abs(float(w) - e) <= 2 * STEP for w, e in zip(weights, expected, strict=True))
    # the context was agreed once, on the first round: one offer per node, then none
    assert sorted(relay.published) == sorted((CONTEXT, n) for n in NODES)
    for node_id in NODES:
        keys = federation[node_id].keys
        assert isinstance(keys, InMemoryLomKeys) and keys.stored == 1
        stored = keys.contexts[CONTEXT]
        assert set(stored.pairwise) == set(NODES) - {node_id} and stored.parties == NODES
    # both ends of a pair hold the same secret
    contexts = {n: federation[n].keys.contexts[CONTEXT] for n in NODES}  # type: ignore[attr-defined]
    assert contexts["node-1"].pairwise["node-2"] == contexts["node-2"].pairwise["node-1"]
    assert contexts["node-1"].pairwise["node-2"] != contexts["node-1"].pairwise["node-3"]


def test_a_round_is_never_masked_twice(tmp_path: Path) -> None:
    federation = lom_federation(NODES[:2])
    nodes = [make_node(tmp_path, n, federation[n]) for n in NODES[:2]]
    fields = lom_fields(parties=NODES[:2])
    runs = run_together(nodes, [request_of(node, i, 4, **fields) for i, node in enumerate(nodes)])
    assert all(r.reply.success for r in runs)
    again = execute_round(request_of(nodes[0], 0, 4, **fields), nodes[0].ports, nodes[0].settings)
    assert_refused(again, "encrypt_update", "already encrypted")


def test_an_unpinned_peer_is_refused_by_name_and_nothing_is_stored_or_sent(tmp_path: Path) -> None:
    relay = InMemorySecaggRelay()
    lom = lom_federation(NODES, relay=relay)["node-1"]
    keys = lom.keys
    assert isinstance(keys, InMemoryLomKeys)
    del keys.pinned["node-3"]
    node = make_node(tmp_path, "node-1", lom)
    run = execute_round(request_of(node, 0, **lom_fields()), node.ports, node.settings)
    assert_refused(run, "agree_keys", "No identity key is pinned for peer `node-3`")
    assert keys.contexts == {} and relay.published == [] and node.exchange.uploads == {}


def _offer(
    node_id: str, *, context: str = CONTEXT, parties: tuple[str, ...] = NODES, key: Any = None
) -> bytes:
    fields: dict[str, Any] = {
        "secagg_id": context,
        "job_id": "job-1",
        "parties": parties,
        "node_id": node_id,
        "ephemeral": bytes(range(32)),
    }
    signature = sign(key if key is not None else new_identity_key(), offer_message(**fields))
    return encode_offer(**fields, signature=signature)


def test_a_forged_offer_is_refused_by_name_and_nothing_is_stored(tmp_path: Path) -> None:
    """An offer for node-2 that the relay (or anyone) made with a key other than the pinned one."""
    relay = InMemorySecaggRelay()
    federation = lom_federation(NODES[:2], relay=relay)
    relay.replace(CONTEXT, "node-2", _offer("node-2", parties=NODES[:2]))
    node = make_node(tmp_path, "node-1", federation["node-1"])
    run = execute_round(request_of(node, 0, **lom_fields(parties=NODES[:2])), node.ports, node.settings)
    assert_refused(run, "agree_keys", "peer `node-2`", "not signed by the key pinned for this peer")
    assert federation["node-1"].keys.contexts == {}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("offer", "reason"),
    [
        ({"context": "lom-old"}, "another context"),
        ({"parties": ("node-2", "node-1")}, "another list of parties"),
    ],
)
def test_a_replayed_offer_is_refused(tmp_path: Path, offer: dict[str, Any], reason: str) -> None:
    """A genuine offer of node-2, signed with its pinned key, but for another set-up."""
    relay = InMemorySecaggRelay()
    federation = lom_federation(NODES[:2], relay=relay)
    identity = federation["node-2"].identity
    assert isinstance(identity, InMemoryIdentity)
    relay.replace(CONTEXT, "node-2", _offer("node-2", key=identity.key, **{"parties": NODES[:2], **offer}))
    node = make_node(tmp_path, "node-1", federation["node-1"])
    run = execute_round(request_of(node, 0, **lom_fields(parties=NODES[:2])), node.ports, node.settings)
    assert_refused(run, "agree_keys", "peer `node-2`", reason)
    assert federation["node-1"].keys.contexts == {}  # type: ignore[attr-defined]


def test_a_peer_that_never_publishes_times_out_with_one_clear_error(tmp_path: Path) -> None:
    clock = FakeClock()
    relay = InMemorySecaggRelay(clock=clock, withheld={"node-3"})
    federation = lom_federation(NODES, relay=relay, agreement_seconds=60.0)
    relay.replace(CONTEXT, "node-2", b"node-2 posted something")  # present, so only node-3 is missing
    node = make_node(tmp_path, "node-1", federation["node-1"], clock=clock)
    run = execute_round(request_of(node, 0, **lom_fields()), node.ports, node.settings)
    message = assert_refused(run, "agree_keys", "timed out after 60 s", "no key offer from `node-3`")
    assert "node-2" not in message and run.reply.error is not None and run.reply.error.retryable
    assert federation["node-1"].keys.contexts == {}  # type: ignore[attr-defined]


def test_a_stored_context_with_other_parties_is_refused(tmp_path: Path) -> None:
    federation = lom_federation(NODES[:2])
    nodes = [make_node(tmp_path, n, federation[n]) for n in NODES[:2]]
    fields = lom_fields(parties=NODES[:2])
    assert all(
        r.reply.success
        for r in run_together(nodes, [request_of(n, i, 0, **fields) for i, n in enumerate(nodes)])
    )
    run = execute_round(request_of(nodes[0], 0, 1, **lom_fields()), nodes[0].ports, nodes[0].settings)
    assert_refused(run, "agree_keys", "do not match")


# --- the researcher's checks ----------------------------------------------------------------------------


def test_the_researcher_refuses_a_factor_that_is_not_at_its_own_index(tmp_path: Path) -> None:
    federation = lom_federation(NODES[:2])
    nodes = [make_node(tmp_path, n, federation[n]) for n in NODES[:2]]
    secagg = FedpipeLomAggregation(node_ids=NODES[:2], secagg_id=CONTEXT)
    fields = secagg.request_fields(0)
    runs = run_together(nodes, [request_of(n, i, 0, **fields) for i, n in enumerate(nodes)])
    results = [
        NodeResult(
            node_id=n.settings.node_id,
            success=True,
            sample_size=r.reply.sample_size or 0,
            results=results_of(n, r),
        )
        for n, r in zip(nodes, runs, strict=True)
    ]
    secagg.decrypt(results, 0, n_params=3)  # as sent: fine
    meta = results[1].results["metadata"]["secagg"]
    for change, text in (({"factor_index": 0}, "own index"), ({"mode": None}, "fedpipe's LOM mode")):
        bad = evolve(results[1], results={**results[1].results, "metadata": {"secagg": {**meta, **change}}})
        with pytest.raises(ExperimentStopped, match=text):
            secagg.decrypt([results[0], bad], 0, n_params=3)


def test_a_round_retried_after_a_timeout_offers_the_same_key_and_completes(tmp_path: Path) -> None:
    clock = FakeClock()
    relay = InMemorySecaggRelay(clock=clock)
    federation = lom_federation(NODES[:2], relay=relay)
    first = make_node(tmp_path, "node-1", federation["node-1"], clock=clock)
    fields = lom_fields(parties=NODES[:2])
    assert_refused(
        execute_round(request_of(first, 0, **fields), first.ports, first.settings), "agree_keys", "timed out"
    )
    offered = relay.offers[CONTEXT]["node-1"]
    relay.clock = None  # now node-2 comes, and both wait for each other for real
    nodes = [make_node(tmp_path / "again", n, federation[n]) for n in NODES[:2]]
    runs = run_together(nodes, [request_of(n, i, 0, **fields) for i, n in enumerate(nodes)])
    assert all(r.reply.success for r in runs), [r.reply.msg for r in runs]
    assert relay.offers[CONTEXT]["node-1"] == offered  # the very offer of the first try
    keys = {n: federation[n].keys for n in NODES[:2]}
    assert (
        keys["node-1"].contexts[CONTEXT].pairwise["node-2"]
        == keys["node-2"].contexts[CONTEXT].pairwise["node-1"]
    )  # type: ignore[attr-defined]
    assert keys["node-1"].pending == {} and keys["node-2"].pending == {}  # type: ignore[attr-defined]
