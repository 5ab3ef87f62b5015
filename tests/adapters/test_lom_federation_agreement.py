"""LOM key agreement between real nodes (SQLite stores, identity key files) through the real server's relay."""

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from attrs import define, field
from returns.result import Failure, Result

from fedpipe.adapters.secagg_relay import HttpSecaggRelay
from fedpipe.bootstrap import Node, OfflineExchange, open_owner
from fedpipe.compose import NamedStep, run_steps
from fedpipe.context import RoundContext, new_context
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.request import parse_request
from fedpipe.secagg.identity import encode_offer, new_identity_key, offer_message, sign
from fedpipe.server import create_app
from fedpipe.server.auth import TokenStore
from fedpipe.server.relay import KeyRelay
from fedpipe.server.testing import running_app
from fedpipe.settings import NodeSettings
from fedpipe.steps.agree import agree_keys
from fedpipe.steps.secagg import check_secagg

CONTEXT = "lom-real-1"
PARTIES = ("node-a", "node-b")


@define
class Federation:
    url: str
    work: Path
    relay: KeyRelay
    tokens: TokenStore
    clients: list[HttpSecaggRelay] = field(factory=list)

    def root(self, node_id: str) -> Path:
        return self.work / node_id

    def token(self, node_id: str) -> str:
        return self.tokens.issue("node", node_id).token

    def pin(self, owner_of: str, peer: str, pem: bytes | None = None) -> None:
        """``owner_of``'s owner pins ``peer``'s identity key (or ``pem``)."""
        if pem is None:
            with open_owner(self.root(peer), node_id=peer) as owner:
                pem = owner.identity.public_pem()
        with open_owner(self.root(owner_of), node_id=owner_of) as owner:
            owner.peers.add(peer, pem)

    def node(self, node_id: str, *, agreement_seconds: float = 30.0) -> Node:
        client = HttpSecaggRelay(self.url, token=self.token(node_id))
        self.clients.append(client)
        settings = NodeSettings(node_id=node_id, root=self.root(node_id))
        return Node.open(
            settings, exchange=OfflineExchange(), relay=client, agreement_seconds=agreement_seconds
        )


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    relay = KeyRelay()
    tokens = TokenStore(tmp_path / "server")
    with running_app(create_app(tmp_path / "server", relay=relay)) as url:
        fed = Federation(url=url, work=tmp_path, relay=relay, tokens=tokens)
        for node_id in PARTIES:
            with open_owner(fed.root(node_id), node_id=node_id):
                pass
        yield fed
        for client in fed.clients:
            client.close()
    tokens.close()


def request(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "researcher_id": "researcher-1",
        "job_id": "job-1",
        "params_url": "http://exchange.example/params",
        "dataset_id": "ds",
        "training_plan_url": "http://exchange.example/plan",
        "training_plan_class": "Plan",
        "training": True,
        "secagg_scheme": "lom",
        "secagg_dh_id": CONTEXT,
        "secagg_parties": list(PARTIES),
        "secagg_random": 0.5,
    }
    fields.update(changes)
    return fields


def agree(node: Node, tmp_path: Path) -> Result[RoundContext, RoundError]:
    """The round's secagg check and key agreement, on the node's real ports."""
    ctx = new_context(parse_request(request()).unwrap(), node.settings, tmp_path, None)
    steps = (
        NamedStep("check_secagg", check_secagg(node.ports.secagg_keys)),
        NamedStep("agree_keys", agree_keys(node.ports.lom, node.ports.clock)),
    )
    return run_steps(ctx, steps)


def refusal(outcome: Result[RoundContext, RoundError]) -> RoundError:
    assert isinstance(outcome, Failure), outcome
    error = outcome.failure()
    assert (error.code, error.step) == (ErrorCode.SECAGG_CONFIG, "agree_keys"), error
    assert "\n" not in error.public
    return error


def test_two_nodes_agree_the_same_secret_through_the_server(federation: Federation, tmp_path: Path) -> None:
    federation.pin("node-a", "node-b")
    federation.pin("node-b", "node-a")
    nodes = {n: federation.node(n) for n in PARTIES}
    outcomes: dict[str, Result[RoundContext, RoundError]] = {}

    def run(node_id: str) -> None:
        outcomes[node_id] = agree(nodes[node_id], tmp_path)

    threads = [threading.Thread(target=run, args=(n,)) for n in PARTIES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert all(not isinstance(o, Failure) for o in outcomes.values()), outcomes
        a = nodes["node-a"].secagg_keys.dh_context(CONTEXT, "job-1").unwrap()
        b = nodes["node-b"].secagg_keys.dh_context(CONTEXT, "job-1").unwrap()
        assert a is not None and b is not None and a.parties == b.parties == PARTIES
        assert a.pairwise["node-b"] == b.pairwise["node-a"]
        # the server carried two public offers, nothing else
        offers = federation.relay.offers(CONTEXT, "node-a")
        assert offers is not None and set(offers) == set(PARTIES)
        assert all(a.pairwise["node-b"] not in offer for offer in offers.values())
    finally:
        for node in nodes.values():
            node.close()


def test_an_unpinned_peer_is_refused_and_nothing_is_stored_or_sent(
    federation: Federation, tmp_path: Path
) -> None:
    node = federation.node("node-a")
    try:
        error = refusal(agree(node, tmp_path))
        assert "No identity key is pinned for peer `node-b`" in error.public
        assert node.secagg_keys.dh_context(CONTEXT, "job-1").unwrap() is None
        assert federation.relay.setups == 0
    finally:
        node.close()


def test_an_offer_under_another_key_is_refused_and_nothing_is_stored(
    federation: Federation, tmp_path: Path
) -> None:
    """node-b's credential posts an offer signed by a key that node-a's owner did not pin."""
    federation.pin("node-a", "node-b")
    forger = HttpSecaggRelay(federation.url, token=federation.token("node-b"))
    federation.clients.append(forger)
    offer: dict[str, Any] = {
        "secagg_id": CONTEXT,
        "job_id": "job-1",
        "parties": PARTIES,
        "node_id": "node-b",
        "ephemeral": bytes(range(32)),
    }
    blob = encode_offer(**offer, signature=sign(new_identity_key(), offer_message(**offer)))
    assert not isinstance(forger.publish(CONTEXT, "node-b", blob), Failure)
    node = federation.node("node-a")
    try:
        error = refusal(agree(node, tmp_path))
        assert "peer `node-b`" in error.public and "not signed by the key pinned" in error.public
        assert node.secagg_keys.dh_context(CONTEXT, "job-1").unwrap() is None
    finally:
        node.close()


def test_a_peer_that_never_publishes_times_out_with_one_clear_error(
    federation: Federation, tmp_path: Path
) -> None:
    federation.pin("node-a", "node-b")
    node = federation.node("node-a", agreement_seconds=1.0)
    try:
        error = refusal(agree(node, tmp_path))
        assert error.public == (
            f"LOM key agreement for context `{CONTEXT}` timed out after 1 s: no key offer from `node-b`."
        )
        assert error.retryable
        assert node.secagg_keys.dh_context(CONTEXT, "job-1").unwrap() is None
    finally:
        node.close()


def test_a_restarted_node_offers_its_first_key_again_and_the_agreement_completes(
    federation: Federation, tmp_path: Path
) -> None:
    """node-a times out alone; restarted (a new process on the same root), it meets node-b."""
    federation.pin("node-a", "node-b")
    federation.pin("node-b", "node-a")
    alone = federation.node("node-a", agreement_seconds=0.5)
    try:
        assert "timed out" in refusal(agree(alone, tmp_path)).public
    finally:
        alone.close()
    nodes = {n: federation.node(n) for n in PARTIES}
    outcomes: dict[str, Result[RoundContext, RoundError]] = {}
    threads = [
        threading.Thread(target=lambda n=n: outcomes.__setitem__(n, agree(nodes[n], tmp_path)))
        for n in PARTIES
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert all(not isinstance(o, Failure) for o in outcomes.values()), outcomes
        a = nodes["node-a"].secagg_keys.dh_context(CONTEXT, "job-1").unwrap()
        b = nodes["node-b"].secagg_keys.dh_context(CONTEXT, "job-1").unwrap()
        assert a is not None and b is not None and a.pairwise["node-b"] == b.pairwise["node-a"]
    finally:
        for node in nodes.values():
            node.close()


def test_offers_lost_by_a_restarted_relay_are_posted_again(federation: Federation, tmp_path: Path) -> None:
    federation.pin("node-a", "node-b")
    federation.pin("node-b", "node-a")
    nodes = {n: federation.node(n) for n in PARTIES}
    outcomes: dict[str, Result[RoundContext, RoundError]] = {}
    first = threading.Thread(target=lambda: outcomes.__setitem__("node-a", agree(nodes["node-a"], tmp_path)))
    first.start()
    deadline = time.monotonic() + 30
    while federation.relay.offers(CONTEXT, "node-a") is None:  # node-a has posted and waits
        assert time.monotonic() < deadline, "node-a never posted its offer"
        time.sleep(0.05)
    federation.relay.clear()  # what a server restart does to the offers it held
    outcomes["node-b"] = agree(nodes["node-b"], tmp_path)
    first.join(timeout=60)
    try:
        assert all(not isinstance(o, Failure) for o in outcomes.values()), outcomes
        a = nodes["node-a"].secagg_keys.dh_context(CONTEXT, "job-1").unwrap()
        b = nodes["node-b"].secagg_keys.dh_context(CONTEXT, "job-1").unwrap()
        assert a is not None and b is not None and a.pairwise["node-b"] == b.pairwise["node-a"]
    finally:
        for node in nodes.values():
            node.close()
