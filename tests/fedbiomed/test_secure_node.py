"""Secure aggregation between fedpipe nodes of a Fed-BioMed federation, the researcher played by a relay.

Three real ``FedbiomedNode``s (SQLite stores, the sent Fed-BioMed plan, CSV shards) answer the
set-up requests of a 6.4.1 researcher; a relay routes their ``OverlayMessage``s by
``dest_node_id`` as the researcher does. The nodes then train one secure round each, and the
ciphertexts are aggregated and decrypted with 6.4.1's rules (LOM: sum mod 2^64; Joye-Libert:
product, server key = minus the sum of the share sums, default biprime), which must give the
weighted mean of what the same nodes send in a plain round, within the quantisation step.
"""

import itertools
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from returns.result import Success

from fedpipe.bootstrap import Node, OfflineExchange
from fedpipe.fedbiomed.messages import decode_message, encode_message
from fedpipe.fedbiomed.node import FedbiomedNode
from fedpipe.fedbiomed.secure import DEFAULT_BIPRIME, SETUP_TIMEOUT_SECONDS
from fedpipe.plan import DatasetRecord
from fedpipe.ports import Approval
from fedpipe.secagg import jl
from fedpipe.secagg.lom import lom_decrypt_mean
from fedpipe.secagg.pack import unpack
from fedpipe.secagg.params import Encoding
from fedpipe.secagg.quantize import reverse_quantize
from fedpipe.settings import NodeSettings
from tests.fedbiomed.plans.support import FBM_ARGS, shard
from tests.fedbiomed.test_node import MAX_BYTES, RESEARCHER, SENT, RecordingLink, _params, _request

NODES = ("NODE_a", "NODE_b", "NODE_c")
EXPERIMENT = "exper_secure"
CLIP, T = 3, 2**13


class Federation:
    """Three fedpipe nodes behind one relay that plays the researcher's routing."""

    def __init__(self, tmp_path: Path, *, validation: bool = True) -> None:
        self.links: dict[str, RecordingLink] = {}
        self.servers: dict[str, FedbiomedNode] = {}
        self.nodes: list[Node] = []
        for i, node_id in enumerate(NODES):
            settings = NodeSettings(node_id=node_id, root=tmp_path / node_id)
            node = Node.open(settings, exchange=OfflineExchange())
            rows = (150, 180, 200)[i]  # unequal shards: the weights of the mean differ
            folder = tmp_path / f"data{i}"
            folder.mkdir(parents=True, exist_ok=True)
            csv = shard(folder, rows, start=150 * i)
            if not node.datasets.list():  # a restarted node keeps its dataset and approval
                node.approvals.register(SENT, status=Approval.APPROVED)
                node.datasets.add(
                    DatasetRecord(
                        dataset_id="bc",
                        name="bc",
                        path=str(csv),
                        data_type="csv",
                        shape=(rows, 31),
                        tags=("bc",),
                    )
                )
            link = RecordingLink()
            self.nodes.append(node)
            self.links[node_id] = link
            self.servers[node_id] = FedbiomedNode(
                node,
                link,
                researcher_id=RESEARCHER,
                node_name=node_id.lower(),
                max_message_bytes=MAX_BYTES,
                insecure_validation=validation,
            )
        self.to_researcher: dict[str, list[tuple[str, dict[str, Any]]]] = {n: [] for n in NODES}
        self.relayed = 0

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def pump(self, rng: random.Random | None = None) -> None:
        """Deliver relayed messages until none is left; keep what goes to the researcher.

        With ``rng``, the relay delivers the waiting messages in a random order (a real
        researcher relays each node's messages as they come, interleaved with the others').
        """
        if rng is not None:
            pool: list[bytes] = []
            while True:
                for node_id, link in self.links.items():
                    sent, link.sent = link.sent, []
                    for data in sent:
                        message = decode_message(data, max_bytes=MAX_BYTES).unwrap()
                        if message.kind == "OverlayMessage":
                            pool.append(data)
                        else:
                            self.to_researcher[node_id].append((message.kind, dict(message.fields)))
                if not pool:
                    return
                data = pool.pop(rng.randrange(len(pool)))
                self.relayed += 1
                dest = decode_message(data, max_bytes=MAX_BYTES).unwrap().fields["dest_node_id"]
                self.servers[dest].handle(data)
        moved = True
        while moved:
            moved = False
            for node_id, link in self.links.items():
                sent, link.sent = link.sent, []
                for data in sent:
                    message = decode_message(data, max_bytes=MAX_BYTES).unwrap()
                    if message.kind == "OverlayMessage":
                        self.relayed += 1
                        self.servers[message.fields["dest_node_id"]].handle(data)
                        moved = True
                    else:
                        self.to_researcher[node_id].append((message.kind, dict(message.fields)))

    def set_up(
        self, kind: str, secagg_id: str, element: int, rng: random.Random | None = None
    ) -> dict[str, dict[str, Any]]:
        for node_id in NODES:
            self.servers[node_id].handle(
                _request(
                    kind,
                    request_id=f"setup_{node_id}",
                    secagg_id=secagg_id,
                    element=element,
                    experiment_id=EXPERIMENT,
                    parties=list(NODES),
                )
            )
            if rng is not None:
                self.pump(rng)  # the other nodes' requests may arrive before this one starts
        self.pump(rng)
        replies = {}
        for node_id in NODES:
            (reply_kind, fields), *rest = self.to_researcher[node_id]
            assert not rest
            assert reply_kind == ("SecaggReply" if element == 1 else "AdditiveSSSetupReply"), fields
            assert (fields["success"], fields["request_id"], fields["secagg_id"]) == (
                True,
                f"setup_{node_id}",
                secagg_id,
            )
            replies[node_id] = fields
            self.to_researcher[node_id] = []
        return replies

    def train(self, secagg: dict[str, Any] | None, round_number: int) -> dict[str, dict[str, Any]]:
        out = {}
        for node_id in NODES:
            data = _request(
                "TrainRequest",
                request_id=f"train_{node_id}_{round_number}",
                experiment_id=EXPERIMENT,
                state_id=None,
                training_args={**FBM_ARGS, "epochs": 1},
                dataset_id="bc",
                training=True,
                model_args={
                    "in_features": 30,
                    "hidden": 16,
                    "feature_mean": [0.0] * 30,
                    "feature_std": [1.0] * 30,
                },
                params=_params(),
                training_plan=SENT,
                training_plan_class="BreastCancerPlan",
                round=round_number,
                aggregator_args={},
                secagg_arguments=secagg or {},
                optim_aux_var=None,
            )
            self.servers[node_id].train(decode_message(data, max_bytes=MAX_BYTES).unwrap())
            self.pump()
            (kind, fields), *_ = self.to_researcher[node_id]
            assert kind == "TrainReply", fields
            self.to_researcher[node_id] = []
            out[node_id] = fields
        return out


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    fed = Federation(tmp_path)
    yield fed
    fed.close()


def _plain_mean(replies: dict[str, dict[str, Any]]) -> tuple[np.ndarray, int]:
    total = sum(r["sample_size"] for r in replies.values())
    names = list(_params())
    flat = {
        n: torch.cat([r["params"][name].reshape(-1).to(torch.float64) for name in names]).numpy()
        for n, r in replies.items()
    }
    mean = sum(flat[n] * replies[n]["sample_size"] for n in NODES) / total
    return np.asarray(mean), total


def test_lom_setup_then_a_secure_round_decrypts_to_the_plain_mean(federation: Federation) -> None:
    federation.set_up("SecaggRequest", "secagg_dh_1", 1)
    assert federation.relayed == 3 * 2 * 2 * 2  # per node and peer: channel set-up + key, request + reply
    for node in federation.nodes:
        stored = node.secagg_keys.dh_context("secagg_dh_1", EXPERIMENT).unwrap()
        assert stored is not None and set(stored.parties) == set(NODES) and len(stored.pairwise) == 2
    plain = federation.train(None, 1)
    secagg = {
        "secagg_random": 0.844,
        "secagg_clipping_range": None,
        "secagg_scheme": 2,
        "parties": list(NODES),
        "secagg_dh_id": "secagg_dh_1",
    }
    secure = federation.train(secagg, 1)
    n_values = sum(t.numel() for t in _params().values())
    for reply in secure.values():
        assert reply["success"] and reply["encrypted"] is True
        assert len(reply["params"]) == n_values and all(0 <= c < 2**64 for c in reply["params"])
        assert len(reply["encryption_factor"]) == 1
    total = sum(r["sample_size"] for r in secure.values())
    mean = lom_decrypt_mean([r["params"] for r in secure.values()], total_sample_size=total)
    factor = lom_decrypt_mean([r["encryption_factor"] for r in secure.values()], total_sample_size=total)
    assert abs(float(factor[0]) - 0.844) <= 0.03  # 6.4.1's validation
    expected, _ = _plain_mean(plain)
    # 6.4.1's quantisation truncates: at most one step 2c/(T-1) below, plus the truncated division
    step = 2 * CLIP / (T - 1)
    assert np.max(np.abs(mean - expected)) <= 2 * step + 1e-9


@pytest.mark.parametrize("seed", range(8))
def test_setups_complete_whatever_the_relay_order(tmp_path: Path, seed: int) -> None:
    fed = Federation(tmp_path)
    try:
        rng = random.Random(seed)
        fed.set_up("AdditiveSSSetupRequest", "secagg_servkey_r", 0, rng)
        fed.set_up("SecaggRequest", "secagg_dh_r", 1, rng)
        contexts = [n.secagg_keys.dh_context("secagg_dh_r", EXPERIMENT).unwrap() for n in fed.nodes]
        assert all(c is not None and len(c.pairwise) == 2 for c in contexts)
        a, b = contexts[0], contexts[1]
        assert a is not None and b is not None and a.pairwise["NODE_b"] == b.pairwise["NODE_a"]
    finally:
        fed.close()


def test_the_same_round_is_never_masked_twice(federation: Federation) -> None:
    federation.set_up("SecaggRequest", "secagg_dh_2", 1)
    secagg = {
        "secagg_random": None,
        "secagg_scheme": 2,
        "parties": list(NODES),
        "secagg_dh_id": "secagg_dh_2",
    }
    first = federation.train(secagg, 4)
    assert all(r["success"] and r["encryption_factor"] is None for r in first.values())
    again = federation.train(secagg, 4)
    for reply in again.values():
        assert reply["success"] is False and reply["params"] is None
        assert "round" in reply["msg"].lower()


def test_joye_libert_setup_then_a_secure_round_decrypts_to_the_plain_mean(federation: Federation) -> None:
    shares = federation.set_up("AdditiveSSSetupRequest", "secagg_servkey_1", 0)
    server_key = -sum(int(fields["share"]) for fields in shares.values())
    for node in federation.nodes:
        biprime = node.secagg_keys.biprime("secagg_servkey_1").unwrap()
        assert biprime is not None and biprime.biprime == DEFAULT_BIPRIME
    plain = federation.train(None, 2)
    secagg = {
        "secagg_random": 0.25,
        "secagg_clipping_range": None,
        "secagg_scheme": 1,
        "parties": list(NODES),
        "secagg_servkey_id": "secagg_servkey_1",
    }
    secure = federation.train(secagg, 2)
    n_values = sum(t.numel() for t in _params().values())
    encoding = Encoding(checksum=False)
    slot_bits, slots = encoding.slot_bits(3), encoding.slots(3, DEFAULT_BIPRIME)
    expected_count = -(-n_values // slots)
    for reply in secure.values():
        assert reply["success"] and reply["encrypted"] is True and len(reply["params"]) == expected_count

    def decrypt(vectors: list[list[int]], count: int) -> np.ndarray:
        summed = jl.aggregate(vectors, DEFAULT_BIPRIME)
        server_masks = jl.masks(0, len(summed), 2, server_key, DEFAULT_BIPRIME)
        plaintexts, bad = jl.unmask(summed, server_masks, DEFAULT_BIPRIME)
        assert bad == 0
        return unpack(plaintexts, slot_bits, slots)[:count].astype(np.float64)

    total = sum(r["sample_size"] for r in secure.values())
    sums = decrypt([r["params"] for r in secure.values()], n_values)
    mean = reverse_quantize(sums / total, CLIP, T)
    factor = reverse_quantize(decrypt([r["encryption_factor"] for r in secure.values()], 1) / total, CLIP, T)
    assert abs(float(factor[0]) - 0.25) <= 0.03
    expected, _ = _plain_mean(plain)
    step = 2 * CLIP / (T - 1)
    assert np.max(np.abs(mean - expected)) <= 2 * step + 1e-9  # 6.4.1 truncates, as for LOM


def test_a_secure_round_without_its_setup_is_refused(federation: Federation) -> None:
    secagg = {
        "secagg_random": 0.5,
        "secagg_scheme": 2,
        "parties": list(NODES),
        "secagg_dh_id": "never_set_up",
    }
    replies = federation.train(secagg, 1)
    for reply in replies.values():
        assert reply["success"] is False
        assert "`never_set_up` is not set up on this node" in reply["msg"]


def test_validation_off_sends_no_factor(tmp_path: Path) -> None:
    fed = Federation(tmp_path, validation=False)
    try:
        fed.set_up("SecaggRequest", "secagg_dh_3", 1)
        secagg = {
            "secagg_random": 0.5,
            "secagg_scheme": 2,
            "parties": list(NODES),
            "secagg_dh_id": "secagg_dh_3",
        }
        replies = fed.train(secagg, 1)
        assert all(
            r["success"] and r["encrypted"] and r["encryption_factor"] is None for r in replies.values()
        )
    finally:
        fed.close()


def test_a_setup_whose_peer_never_answers_times_out_with_an_error(federation: Federation) -> None:
    clock = itertools.count(0.0, 1.0)
    server = federation.servers["NODE_a"]
    server.secagg.clock = lambda: float(next(clock))
    server.handle(
        _request(
            "SecaggRequest",
            request_id="lonely",
            secagg_id="secagg_dh_lonely",
            element=1,
            experiment_id=EXPERIMENT,
            parties=list(NODES),
        )
    )
    federation.links["NODE_a"].sent.clear()  # the relay loses everything
    assert server.secagg.expire() == []
    for _ in range(int(SETUP_TIMEOUT_SECONDS) + 1):
        next(clock)
    ((kind, fields),) = server.secagg.expire()
    assert kind == "ErrorMessage" and fields["request_id"] == "lonely"
    assert "did not complete" in fields["extra_msg"]
    assert server.secagg.waiting == 0


def test_channel_keys_survive_a_restart(tmp_path: Path) -> None:
    fed = Federation(tmp_path)
    fed.set_up("SecaggRequest", "secagg_dh_4", 1)
    keys = {n.settings.node_id: n.secagg_keys.channel_keys() for n in fed.nodes}
    fed.close()
    assert all(set(k) == set(NODES) - {node} for node, k in keys.items())
    again = Federation(tmp_path)
    try:
        again.relayed = 0
        again.set_up("AdditiveSSSetupRequest", "secagg_servkey_2", 0)
        # channel set-up again (peer keys are kept in memory only, as 6.4.1), then the sharing
        assert again.relayed == 3 * 2 * 2 * 2
    finally:
        again.close()


@pytest.mark.parametrize(
    "fields",
    [
        {"element": 5},
        {"parties": ["NODE_a"]},
        {"parties": ["NODE_x", "NODE_y"]},
        {"secagg_id": "bad id\n"},
    ],
)
def test_bad_setup_requests_get_an_error_reply(federation: Federation, fields: dict[str, Any]) -> None:
    base = {
        "request_id": "bad_1",
        "secagg_id": "s1",
        "element": 1,
        "experiment_id": EXPERIMENT,
        "parties": list(NODES),
    }
    federation.servers["NODE_a"].handle(_request("SecaggRequest", **{**base, **fields}))
    replies = federation.links["NODE_a"].replies()
    assert [k for k, _ in replies] == ["ErrorMessage"]
    assert replies[0][1]["request_id"] == "bad_1"


def test_a_garbled_overlay_message_is_dropped_without_reply(federation: Federation) -> None:
    federation.set_up("SecaggRequest", "secagg_dh_5", 1)  # the channels are ready
    data = encode_message(
        "OverlayMessage",
        {
            "protocol_version": "7",
            "researcher_id": RESEARCHER,
            "node_id": "NODE_b",
            "dest_node_id": "NODE_a",
            "overlay": b"\x00" * 64,
            "setup": False,
            "salt": b"\x01" * 32,
            "nonce": b"\x02" * 16,
        },
    )
    federation.servers["NODE_a"].handle(data)
    assert federation.links["NODE_a"].sent == []
    assert isinstance(decode_message(data, max_bytes=MAX_BYTES), Success)
