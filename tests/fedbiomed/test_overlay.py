"""The node-to-node overlay: 6.4.1's payloads, keys and secrets, the per-node state machine, bad input."""

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from returns.result import Failure, Success

from fedpipe.codec import dumps
from fedpipe.fedbiomed.messages import decode_message, encode_message
from fedpipe.fedbiomed.overlay import (
    BOOTSTRAP_KEY_PEM,
    INNER_FIELDS,
    DhSecrets,
    Overlay,
    SharedKey,
    Step,
    agree,
    dh_secret,
    inner_dict,
    load_private_key,
    load_public_key,
    new_private_key,
    open_sealed,
    private_pem,
    public_pem,
    seal,
    split_additive,
)

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "vectors" / "overlay.json").read_text())
RESEARCHER = VECTORS["researcher_id"]
SECAGG_ID = VECTORS["secagg_id"]
A, B, C = VECTORS["nodes"]
BOOT = load_private_key(BOOTSTRAP_KEY_PEM).unwrap()


def private(pem: str) -> ec.EllipticCurvePrivateKey:
    return load_private_key(pem.encode()).unwrap()


def public(pem: str) -> ec.EllipticCurvePublicKey:
    return load_public_key(pem.encode()).unwrap()


CHANNEL_KEY = {node: private(pem) for node, pem in VECTORS["channel_private_keys"].items()}
CHANNEL_PUBLIC = {node: public(pem) for node, pem in VECTORS["channel_public_keys"].items()}
DH_KEY = {node: private(pem) for node, pem in VECTORS["dh_private_keys"].items()}
DH_PUBLIC = {node: public(pem) for node, pem in VECTORS["dh_public_keys"].items()}


def untag(value: Any) -> Any:
    if isinstance(value, dict):
        return (
            bytes.fromhex(value["hex"]) if set(value) == {"hex"} else {k: untag(v) for k, v in value.items()}
        )
    if isinstance(value, list):
        return [untag(v) for v in value]
    return value


def keys_for(
    vector: Mapping[str, Any], *, receiving: bool
) -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey]:
    """The (own private, peer public) keys of the sender or receiver of a vector payload."""
    if vector["setup"]:
        return BOOT, BOOT.public_key()
    me, peer = (vector["dest"], vector["sender"]) if receiving else (vector["sender"], vector["dest"])
    return CHANNEL_KEY[me], CHANNEL_PUBLIC[peer]


PAYLOADS = {vector["name"]: vector for vector in VECTORS["payloads"]}


# -- 6.4.1's vectors -------------------------------------------------------------------------------


def test_the_bootstrap_key_is_the_one_fedbiomed_ships() -> None:
    assert VECTORS["bootstrap_key_pem"].encode() == BOOTSTRAP_KEY_PEM


@pytest.mark.parametrize("entry", VECTORS["channel_kdf"], ids=lambda e: f"{e['node']}-setup{e['setup']}")
def test_channel_keys_are_derived_as_fedbiomed_derives_them(entry: dict[str, Any]) -> None:
    if entry["setup"]:
        own, peer = BOOT, BOOT.public_key()
    else:
        own, peer = CHANNEL_KEY[entry["node"]], CHANNEL_PUBLIC[entry["peer"]]
    key = agree(
        local_id=entry["node"],
        local_key=own,
        peer_id=entry["peer"],
        peer_public_key=peer,
        salt=bytes.fromhex(entry["salt"]),
    )
    assert key.hex() == entry["key"]


def test_lom_pairwise_secrets_are_fedbiomeds() -> None:
    for u, row in VECTORS["dh_secrets"].items():
        for v, expected in row.items():
            got = dh_secret(
                local_id=u, local_key=DH_KEY[u], peer_id=v, peer_public_key=DH_PUBLIC[v], secagg_id=SECAGG_ID
            )
            assert got.hex() == expected
            assert expected == VECTORS["dh_secrets"][v][u]  # both ends hold the same secret


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_a_payload_sealed_by_fedbiomed_opens_to_the_same_inner_message(name: str) -> None:
    vector = PAYLOADS[name]
    own, peer = keys_for(vector, receiving=True)
    opened = open_sealed(
        bytes.fromhex(vector["overlay"]),
        sender_id=vector["sender"],
        receiver_id=vector["dest"],
        receiver_key=own,
        peer_public_key=peer,
        salt=bytes.fromhex(vector["salt"]),
        nonce=bytes.fromhex(vector["nonce"]),
    )
    kind, fields = opened.unwrap()
    assert kind == vector["kind"]
    assert dict(fields) == untag(vector["fields"])
    assert list(fields) == [spec.name for spec in INNER_FIELDS[kind]]


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_our_payload_is_byte_identical_to_fedbiomeds(name: str) -> None:
    vector = PAYLOADS[name]
    own, peer = keys_for(vector, receiving=False)
    ours = seal(
        vector["kind"],
        untag(vector["fields"]),
        sender_key=own,
        peer_public_key=peer,
        salt=bytes.fromhex(vector["salt"]),
        nonce=bytes.fromhex(vector["nonce"]),
        signature=bytes.fromhex(vector["signature"]),
    )
    assert ours.hex() == vector["overlay"]
    # the signed bytes are ours too: 6.4.1's signature verifies over our encoding of the message
    own.public_key().verify(
        bytes.fromhex(vector["signature"]),
        dumps(inner_dict(vector["kind"], untag(vector["fields"]))),
        ec.ECDSA(_sha256()),
    )


def _sha256() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_a_freshly_signed_payload_opens_on_the_other_end(name: str) -> None:
    vector = PAYLOADS[name]
    own, peer = keys_for(vector, receiving=False)
    salt, nonce = bytes(range(32)), bytes(16)
    sealed = seal(
        vector["kind"], untag(vector["fields"]), sender_key=own, peer_public_key=peer, salt=salt, nonce=nonce
    )
    receiver, sender_public = keys_for(vector, receiving=True)
    opened = open_sealed(
        sealed,
        sender_id=vector["sender"],
        receiver_id=vector["dest"],
        receiver_key=receiver,
        peer_public_key=sender_public,
        salt=salt,
        nonce=nonce,
    )
    assert dict(opened.unwrap()[1]) == untag(vector["fields"])


def test_the_overlay_message_around_a_payload_encodes_as_fedbiomeds() -> None:
    for vector in PAYLOADS.values():
        fields = {
            "researcher_id": RESEARCHER,
            "node_id": vector["sender"],
            "dest_node_id": vector["dest"],
            "overlay": bytes.fromhex(vector["overlay"]),
            "setup": vector["setup"],
            "salt": bytes.fromhex(vector["salt"]),
            "nonce": bytes.fromhex(vector["nonce"]),
        }
        assert encode_message("OverlayMessage", fields).hex() == vector["overlay_message"]


def decoded(hex_message: str) -> Mapping[str, Any]:
    message = decode_message(bytes.fromhex(hex_message), max_bytes=1 << 20).unwrap()
    assert message.kind == "OverlayMessage"
    return message.fields


def test_a_node_answers_fedbiomeds_channel_setup_and_key_requests() -> None:
    """B (ours, with the vector channel key) gets 6.4.1's bytes from A: a set-up request, then a key
    request that waits for B's own set-up with A and for B's DH start."""
    node_b = Overlay(node_id=B, channel_keys={A: VECTORS["channel_private_keys"][B].encode()})
    step = node_b.receive(decoded(PAYLOADS["ChannelSetupRequest"]["overlay_message"])).unwrap()
    assert step.received == (("ChannelSetupRequest", step.received[0][1]),)
    (reply,) = step.send
    assert reply["setup"] is True and reply["dest_node_id"] == A
    kind, fields = open_sealed(
        reply["overlay"],
        sender_id=B,
        receiver_id=A,
        receiver_key=BOOT,
        peer_public_key=BOOT.public_key(),
        salt=reply["salt"],
        nonce=reply["nonce"],
    ).unwrap()
    assert kind == "ChannelSetupReply"
    assert fields["request_id"] == "request_c1"
    assert fields["public_key"] == VECTORS["channel_public_keys"][B].encode()

    # A's key request (6.4.1's bytes, per-pair keys): B does not know A's key yet, so it asks for it
    step = node_b.receive(decoded(PAYLOADS["KeyRequest"]["overlay_message"])).unwrap()
    (setup_request,) = step.send
    assert setup_request["setup"] is True and step.received == ()
    _, request = open_sealed(
        setup_request["overlay"],
        sender_id=B,
        receiver_id=A,
        receiver_key=BOOT,
        peer_public_key=BOOT.public_key(),
        salt=setup_request["salt"],
        nonce=setup_request["nonce"],
    ).unwrap()
    # A answers with its channel key (as a 6.4.1 node would); the waiting key request then opens
    salt, nonce = bytes(32), bytes(16)
    answer = seal(
        "ChannelSetupReply",
        {
            "node_id": A,
            "dest_node_id": B,
            "request_id": request["request_id"],
            "public_key": VECTORS["channel_public_keys"][A].encode(),
        },
        sender_key=BOOT,
        peer_public_key=BOOT.public_key(),
        salt=salt,
        nonce=nonce,
    )
    step = node_b.receive(overlay_fields(A, B, answer, setup=True, salt=salt, nonce=nonce)).unwrap()
    assert [kind for kind, _ in step.received] == ["ChannelSetupReply", "KeyRequest"]
    assert step.send == ()  # B has not started this DH yet: the request waits
    step = node_b.start_dh(secagg_id=SECAGG_ID, parties=[A, B], researcher_id=RESEARCHER).unwrap()
    replies = {}
    for message in step.send:
        kind, fields = open_sealed(
            message["overlay"],
            sender_id=B,
            receiver_id=A,
            receiver_key=CHANNEL_KEY[A],
            peer_public_key=CHANNEL_PUBLIC[B],
            salt=message["salt"],
            nonce=message["nonce"],
        ).unwrap()
        replies[kind] = fields
    assert set(replies) == {"KeyRequest", "KeyReply"}
    assert replies["KeyReply"]["request_id"] == "request_k1"
    assert load_public_key(replies["KeyReply"]["public_key"]).unwrap().curve.name == "secp256r1"


def overlay_fields(
    sender: str, dest: str, payload: bytes, *, setup: bool, salt: bytes, nonce: bytes
) -> dict[str, Any]:
    return {
        "protocol_version": "7",
        "researcher_id": RESEARCHER,
        "node_id": sender,
        "dest_node_id": dest,
        "overlay": payload,
        "setup": setup,
        "salt": salt,
        "nonce": nonce,
    }


# -- two or more of our nodes through a relay --------------------------------------------------------


class Relay:
    """The researcher's part: carries each OverlayMessage, as bytes, to its dest_node_id."""

    def __init__(self, nodes: Mapping[str, Overlay], rng: random.Random | None = None) -> None:
        self.nodes = nodes
        self.queue: list[bytes] = []
        self.done: dict[str, list[DhSecrets | SharedKey]] = {name: [] for name in nodes}
        self.sent: dict[str, int] = dict.fromkeys(nodes, 0)
        self.new_channels: dict[str, dict[str, bytes]] = {name: {} for name in nodes}
        self.rng = rng

    def take(self, node: str, step: Step) -> None:
        self.done[node].extend(step.done)
        self.new_channels[node].update(step.new_channels)
        assert step.refused == ()
        for fields in step.send:
            assert fields["node_id"] == node
            self.sent[node] += 1
            self.queue.append(encode_message("OverlayMessage", fields))

    def run(self) -> None:
        while self.queue:
            index = self.rng.randrange(len(self.queue)) if self.rng else 0
            message = decode_message(self.queue.pop(index), max_bytes=1 << 20).unwrap()
            dest = message.fields["dest_node_id"]
            self.take(dest, self.nodes[dest].receive(message.fields).unwrap())


def dh(relay: Relay, parties: list[str], secagg_id: str = "secagg_1") -> dict[str, DhSecrets]:
    for name in parties:
        relay.take(
            name,
            relay.nodes[name]
            .start_dh(secagg_id=secagg_id, parties=parties, researcher_id=RESEARCHER)
            .unwrap(),
        )
    relay.run()
    out = {}
    for name in parties:
        (result,) = [d for d in relay.done[name] if d.secagg_id == secagg_id]
        assert isinstance(result, DhSecrets)
        out[name] = result
    return out


def test_two_fresh_nodes_set_channels_up_and_agree_with_four_messages_each() -> None:
    nodes = {A: Overlay(node_id=A), B: Overlay(node_id=B)}
    relay = Relay(nodes)
    secrets = dh(relay, [A, B])
    assert secrets[A].pairwise[B] == secrets[B].pairwise[A]
    assert len(secrets[A].pairwise[B]) == 32
    assert relay.sent == {A: 4, B: 4}  # as 6.4.1's nodes: set-up request/reply, key request/reply
    assert set(relay.new_channels[A]) == {B} and set(relay.new_channels[B]) == {A}
    # a second set-up reuses the channels
    relay.sent = dict.fromkeys(nodes, 0)
    again = dh(relay, [A, B], "secagg_2")
    assert relay.sent == {A: 2, B: 2}
    assert again[A].pairwise[B] != secrets[A].pairwise[B]


@settings(max_examples=15)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 5), late=st.integers(0, 4))
def test_parties_agree_pairwise_whatever_the_relay_order(seed: int, n: int, late: int) -> None:
    names = [f"NODE_{i}" for i in range(n)]
    nodes = {name: Overlay(node_id=name) for name in names}
    relay = Relay(nodes, random.Random(seed))
    # one node starts late: its peers' requests wait for it
    early = [name for i, name in enumerate(names) if i != late % n]
    for name in early:
        relay.take(
            name, nodes[name].start_dh(secagg_id="secagg_x", parties=names, researcher_id=RESEARCHER).unwrap()
        )
    relay.run()
    last = names[late % n]
    relay.take(
        last, nodes[last].start_dh(secagg_id="secagg_x", parties=names, researcher_id=RESEARCHER).unwrap()
    )
    relay.run()
    results = {name: next(d for d in relay.done[name] if isinstance(d, DhSecrets)) for name in names}
    for u in names:
        assert set(results[u].pairwise) == set(names) - {u}
        for v in names:
            if u != v:
                assert results[u].pairwise[v] == results[v].pairwise[u]


def test_a_restarted_node_reuses_its_stored_channel_keys() -> None:
    nodes = {A: Overlay(node_id=A), B: Overlay(node_id=B)}
    relay = Relay(nodes)
    dh(relay, [A, B])
    stored = relay.new_channels[A]
    restarted = {A: Overlay(node_id=A, channel_keys=stored), B: nodes[B]}
    relay = Relay(restarted)
    secrets = dh(relay, [A, B], "secagg_after_restart")
    assert secrets[A].pairwise[B] == secrets[B].pairwise[A]
    assert relay.new_channels[A] == {}  # no new key: the stored one was used
    # A's peer key lived in memory only: A sets the channel up again (B answers it); B still knows
    # A's stored key, so B needs no set-up of its own
    assert relay.sent == {A: 3, B: 3}


def test_additive_shares_sum_to_the_user_keys() -> None:
    names = [A, B, C]
    nodes = {name: Overlay(node_id=name) for name in names}
    relay = Relay(nodes, random.Random(7))
    keys = {A: 2**2039 + 11, B: 12345, C: 2**2000 - 1}
    for name in names:
        step = nodes[name].start_sharing(
            secagg_id="secagg_jl", parties=names, researcher_id=RESEARCHER, user_key=keys[name]
        )
        relay.take(name, step.unwrap())
    relay.run()
    results = [relay.done[name][0] for name in names]
    assert all(isinstance(r, SharedKey) for r in results)
    assert [r.user_key for r in results if isinstance(r, SharedKey)] == [keys[n] for n in names]
    # the researcher sums the share sums: the sum of the user keys (its server key is minus that)
    assert sum(r.share_sum for r in results if isinstance(r, SharedKey)) == sum(keys.values())


def test_a_drawn_user_key_has_fedbiomeds_size() -> None:
    nodes = {A: Overlay(node_id=A), B: Overlay(node_id=B)}
    relay = Relay(nodes)
    for name in nodes:
        relay.take(
            name, nodes[name].start_sharing(secagg_id="s", parties=[A, B], researcher_id=RESEARCHER).unwrap()
        )
    relay.run()
    results = [relay.done[name][0] for name in nodes]
    assert all(isinstance(r, SharedKey) and r.user_key.bit_length() <= 2040 for r in results)
    assert sum(r.share_sum for r in results if isinstance(r, SharedKey)) == sum(
        r.user_key for r in results if isinstance(r, SharedKey)
    )


@given(secret=st.integers(1, 2**2100), parties=st.integers(1, 8))
def test_split_additive_shares_sum_to_the_secret(secret: int, parties: int) -> None:
    shares = split_additive(secret, parties)
    assert len(shares) == parties and sum(shares) == secret
    assert all(0 <= s <= 2 ** secret.bit_length() for s in shares[:-1])


def test_the_fedbiomed_split_vector_sums_too() -> None:
    assert sum(VECTORS["additive"]["shares"]) == VECTORS["additive"]["secret"]


# -- owner-pinned set-up keys (fedpipe-only federations) --------------------------------------------


def pinned_pair() -> tuple[dict[str, Overlay], dict[str, ec.EllipticCurvePrivateKey]]:
    identity = {A: new_private_key(), B: new_private_key()}
    pins = {name: public_pem(key) for name, key in identity.items()}
    nodes = {
        name: Overlay(
            node_id=name,
            identity_key=private_pem(identity[name]),
            pinned_peers={p: pins[p] for p in pins if p != name},
        )
        for name in identity
    }
    return nodes, identity


def test_pinned_nodes_agree_without_the_bootstrap_key() -> None:
    nodes, _ = pinned_pair()
    secrets = dh(Relay(nodes), [A, B])
    assert secrets[A].pairwise[B] == secrets[B].pairwise[A]


def test_a_pinned_node_refuses_set_up_sealed_with_the_bootstrap_key() -> None:
    nodes, _ = pinned_pair()
    salt, nonce = bytes(32), bytes(16)
    forged = seal(
        "ChannelSetupRequest",
        {"node_id": B, "dest_node_id": A, "request_id": "request_x"},
        sender_key=BOOT,
        peer_public_key=BOOT.public_key(),
        salt=salt,
        nonce=nonce,
    )
    outcome = nodes[A].receive(overlay_fields(B, A, forged, setup=True, salt=salt, nonce=nonce))
    assert isinstance(outcome, Failure)
    assert "signature" in outcome.failure().reason or "readable" in outcome.failure().reason
    # and a peer that is not pinned gets no channel at all
    stranger = nodes[A].receive(overlay_fields(C, A, forged, setup=True, salt=salt, nonce=nonce))
    assert "pinned" in stranger.failure().reason


# -- refusals ---------------------------------------------------------------------------------------


def sealed_from(
    sender: str,
    dest: str,
    kind: str,
    fields: dict[str, Any],
    *,
    setup: bool,
    key: ec.EllipticCurvePrivateKey,
    peer: ec.EllipticCurvePublicKey,
) -> dict[str, Any]:
    salt, nonce = bytes(range(32)), bytes(range(16))
    payload = seal(
        kind,
        {"node_id": sender, "dest_node_id": dest, **fields},
        sender_key=key,
        peer_public_key=peer,
        salt=salt,
        nonce=nonce,
    )
    return overlay_fields(sender, dest, payload, setup=setup, salt=salt, nonce=nonce)


def test_a_key_reply_under_the_bootstrap_key_is_refused() -> None:
    """6.4.1 would take it: anyone with the package could then plant a LOM public key."""
    node = Overlay(node_id=A)
    node.start_dh(secagg_id="s", parties=[A, B], researcher_id=RESEARCHER).unwrap()
    message = sealed_from(
        B,
        A,
        "KeyReply",
        {"request_id": "request_1", "public_key": public_pem(new_private_key()), "secagg_id": "s"},
        setup=True,
        key=BOOT,
        peer=BOOT.public_key(),
    )
    assert "setup=True" in node.receive(message).failure().reason


def test_replies_to_no_request_and_requests_from_outsiders_are_refused() -> None:
    nodes = {A: Overlay(node_id=A), B: Overlay(node_id=B)}
    relay = Relay(nodes)
    dh(relay, [A, B])
    # B's channel keys as A knows them: seal as B would
    channel_b = private(relay.new_channels[B][A].decode())
    channel_a_public = load_private_key(relay.new_channels[A][B]).unwrap().public_key()
    stray = sealed_from(
        B,
        A,
        "ChannelSetupReply",
        {"request_id": "request_none", "public_key": public_pem(channel_b)},
        setup=True,
        key=BOOT,
        peer=BOOT.public_key(),
    )
    assert "no channel set-up request" in nodes[A].receive(stray).failure().reason
    late = sealed_from(
        B,
        A,
        "KeyReply",
        {"request_id": "request_z", "public_key": public_pem(new_private_key()), "secagg_id": "secagg_1"},
        setup=False,
        key=channel_b,
        peer=channel_a_public,
    )
    assert "no request" in nodes[A].receive(late).failure().reason
    nodes[A].start_dh(secagg_id="only_a_c", parties=[A, C], researcher_id=RESEARCHER).unwrap()
    outsider = sealed_from(
        B,
        A,
        "KeyRequest",
        {"request_id": "request_o", "secagg_id": "only_a_c"},
        setup=False,
        key=channel_b,
        peer=channel_a_public,
    )
    assert "not a party" in nodes[A].receive(outsider).failure().reason


def test_a_message_for_another_node_or_from_itself_is_refused() -> None:
    node = Overlay(node_id=A)
    message = sealed_from(
        B, C, "ChannelSetupRequest", {"request_id": "r"}, setup=True, key=BOOT, peer=BOOT.public_key()
    )
    assert "another node" in node.receive(message).failure().reason
    own = sealed_from(
        A, A, "ChannelSetupRequest", {"request_id": "r"}, setup=True, key=BOOT, peer=BOOT.public_key()
    )
    assert isinstance(node.receive(own), Failure)


def vector_open(vector: Mapping[str, Any], overlay: bytes, **changes: Any) -> Any:
    own, peer = keys_for(vector, receiving=True)
    arguments: dict[str, Any] = {
        "sender_id": vector["sender"],
        "receiver_id": vector["dest"],
        "receiver_key": own,
        "peer_public_key": peer,
        "salt": bytes.fromhex(vector["salt"]),
        "nonce": bytes.fromhex(vector["nonce"]),
    }
    arguments.update(changes)
    return open_sealed(overlay, **arguments)


@settings(max_examples=60)
@given(name=st.sampled_from(sorted(PAYLOADS)), data=st.data())
def test_a_tampered_payload_is_refused(name: str, data: st.DataObject) -> None:
    vector = PAYLOADS[name]
    overlay = bytearray.fromhex(vector["overlay"])
    index = data.draw(st.integers(0, len(overlay) - 1))
    overlay[index] ^= data.draw(st.integers(1, 255))
    assert isinstance(vector_open(vector, bytes(overlay)), Failure)


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_a_wrong_signer_salt_or_sender_is_refused(name: str) -> None:
    vector = PAYLOADS[name]
    overlay = bytes.fromhex(vector["overlay"])
    assert isinstance(vector_open(vector, overlay), Success)
    other = new_private_key()
    # the right cipher key, but the signature checked against another key
    if vector["setup"]:
        forged = seal(
            vector["kind"],
            untag(vector["fields"]),
            sender_key=other,
            peer_public_key=BOOT.public_key(),
            salt=bytes.fromhex(vector["salt"]),
            nonce=bytes.fromhex(vector["nonce"]),
        )
        # sealed by `other`: neither its cipher key nor its signature is the bootstrap key's
        assert isinstance(vector_open(vector, forged), Failure)
    bad_signature = seal(
        vector["kind"],
        untag(vector["fields"]),
        sender_key=keys_for(vector, receiving=False)[0],
        peer_public_key=keys_for(vector, receiving=False)[1],
        salt=bytes.fromhex(vector["salt"]),
        nonce=bytes.fromhex(vector["nonce"]),
        signature=other.sign(b"something else", ec.ECDSA(_sha256())),
    )
    assert "signature" in vector_open(vector, bad_signature).failure().reason
    assert isinstance(vector_open(vector, overlay, salt=bytes(32)), Failure)
    assert isinstance(vector_open(vector, overlay, peer_public_key=other.public_key()), Failure)
    # the ids are part of the key: a payload replayed as from another node does not open
    assert isinstance(vector_open(vector, overlay, sender_id="NODE_other"), Failure)


def test_a_signed_message_whose_ids_differ_from_the_overlay_is_refused() -> None:
    salt, nonce = bytes(32), bytes(16)
    # signed and sealed for A->B but claiming, inside, to come from C
    payload = seal(
        "ChannelSetupRequest",
        {"node_id": C, "dest_node_id": B, "request_id": "r"},
        sender_key=BOOT,
        peer_public_key=BOOT.public_key(),
        salt=salt,
        nonce=nonce,
    )
    # C's and A's ids are both in the key derivation: open as if from C to B, then claim A
    ok = open_sealed(
        payload,
        sender_id=C,
        receiver_id=B,
        receiver_key=BOOT,
        peer_public_key=BOOT.public_key(),
        salt=salt,
        nonce=nonce,
    )
    assert isinstance(ok, Success)
    node = Overlay(node_id=B)
    assert isinstance(
        node.receive(overlay_fields(A, B, payload, setup=True, salt=salt, nonce=nonce)), Failure
    )


@settings(max_examples=200)
@given(
    overlay=st.binary(max_size=600),
    salt=st.binary(min_size=32, max_size=32) | st.binary(max_size=40),
    nonce=st.binary(min_size=16, max_size=16) | st.binary(max_size=20),
)
def test_open_sealed_never_raises_on_arbitrary_bytes(overlay: bytes, salt: bytes, nonce: bytes) -> None:
    outcome = open_sealed(
        overlay,
        sender_id=A,
        receiver_id=B,
        receiver_key=BOOT,
        peer_public_key=BOOT.public_key(),
        salt=salt,
        nonce=nonce,
    )
    assert isinstance(outcome, Failure)


def plaintext_sealed(plain: Any, salt: bytes, nonce: bytes) -> bytes:
    """Arbitrary msgpack, encrypted as a real payload would be (so decoding and checks are reached)."""
    from fedpipe.fedbiomed.overlay import _chacha20

    key = agree(local_id=A, local_key=BOOT, peer_id=B, peer_public_key=BOOT.public_key(), salt=salt)
    return _chacha20(key, nonce, dumps(plain))


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8) | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=150)
@given(
    plain=st.dictionaries(st.sampled_from(["message", "signature", "x"]), _values, max_size=3)
    | st.fixed_dictionaries(
        {
            "message": st.dictionaries(
                st.sampled_from(
                    [
                        "__type_message__",
                        "node_id",
                        "dest_node_id",
                        "request_id",
                        "protocol_version",
                        "public_key",
                    ]
                ),
                _values,
            ),
            "signature": st.binary(max_size=80),
        }
    )
    | _values
)
def test_open_sealed_refuses_arbitrary_well_encrypted_content(plain: Any) -> None:
    salt, nonce = bytes(32), bytes(16)
    outcome = open_sealed(
        plaintext_sealed(plain, salt, nonce),
        sender_id=A,
        receiver_id=B,
        receiver_key=BOOT,
        peer_public_key=BOOT.public_key(),
        salt=salt,
        nonce=nonce,
    )
    assert isinstance(outcome, Failure)


@settings(max_examples=100)
@given(kind=st.sampled_from(sorted(INNER_FIELDS)), data=st.data())
def test_any_signed_but_ill_typed_inner_message_is_refused(kind: str, data: st.DataObject) -> None:
    """Signed with the bootstrap key (anyone can): the checks after the signature must hold."""
    good = {
        "protocol_version": "7",
        "node_id": A,
        "dest_node_id": B,
        "request_id": "request_1",
        "secagg_id": "s",
        "public_key": b"k",
        "share": 1,
    }
    message: dict[str, Any] = {spec.name: good[spec.name] for spec in INNER_FIELDS[kind]}
    victim = data.draw(st.sampled_from(sorted(message)))
    message[victim] = data.draw(
        _values.filter(
            lambda v: (
                v != good[victim]
                and not (victim in ("public_key",) and isinstance(v, bytes))
                and not (victim == "share" and isinstance(v, int | list))
                # any text is a well-typed request or secagg id (and None a request id)
                and not (victim == "request_id" and (v is None or isinstance(v, str)))
                and not (victim == "secagg_id" and isinstance(v, str))
            )
        )
    )
    message["__type_message__"] = {"module": "fedbiomed.common.message", "class": kind}
    encoded = dumps(message)
    plain = {"message": message, "signature": BOOT.sign(encoded, ec.ECDSA(_sha256()))}
    salt, nonce = bytes(32), bytes(16)
    outcome = open_sealed(
        plaintext_sealed(plain, salt, nonce),
        sender_id=A,
        receiver_id=B,
        receiver_key=BOOT,
        peer_public_key=BOOT.public_key(),
        salt=salt,
        nonce=nonce,
    )
    assert isinstance(outcome, Failure)


_field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=10),
    st.binary(max_size=40),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=150)
@given(
    fields=st.dictionaries(
        st.sampled_from(
            [
                "protocol_version",
                "researcher_id",
                "node_id",
                "dest_node_id",
                "overlay",
                "setup",
                "salt",
                "nonce",
                "other",
            ]
        ),
        _field_values,
    )
    | st.fixed_dictionaries(
        {
            "protocol_version": st.just("7"),
            "researcher_id": st.sampled_from([RESEARCHER, "", "R\n"]),
            "node_id": st.sampled_from([B, C, A, "x\x00"]),
            "dest_node_id": st.sampled_from([A, B]),
            "overlay": st.binary(max_size=300),
            "setup": st.booleans(),
            "salt": st.binary(min_size=32, max_size=32),
            "nonce": st.binary(min_size=16, max_size=16),
        }
    )
)
def test_receive_never_raises_on_arbitrary_fields(fields: dict[str, Any]) -> None:
    node = Overlay(node_id=A, max_waiting=4, max_channels=8)
    for _ in range(2):
        outcome = node.receive(fields)
        assert isinstance(outcome, Success | Failure)
        if isinstance(outcome, Success):
            # only a setup=False message from an unknown peer is accepted: it waits for the channel
            assert fields["setup"] is False and outcome.unwrap().received == ()


def test_waiting_messages_and_channels_are_bounded() -> None:
    node = Overlay(node_id=A, max_waiting=3, max_channels=2)
    salt, nonce = bytes(32), bytes(16)
    outcomes = [
        node.receive(overlay_fields(B, A, b"x", setup=False, salt=salt, nonce=nonce)) for _ in range(5)
    ]
    assert [isinstance(o, Success) for o in outcomes] == [True, True, True, False, False]
    assert sum(len(o.unwrap().send) for o in outcomes[:3]) == 1  # one set-up request for all of them
    node.receive(overlay_fields(C, A, b"x", setup=False, salt=salt, nonce=nonce)).unwrap()
    third = node.receive(overlay_fields("NODE_d", A, b"x", setup=False, salt=salt, nonce=nonce))
    assert "too many" in third.failure().reason


def test_start_refuses_bad_parties_and_reuse() -> None:
    node = Overlay(node_id=A)
    for parties in ([A], [B, C], [A, B, B], [A, ""], "AB"):
        assert isinstance(node.start_dh(secagg_id="s", parties=parties, researcher_id=RESEARCHER), Failure)  # type: ignore[arg-type]
    node.start_dh(secagg_id="s", parties=[A, B], researcher_id=RESEARCHER).unwrap()
    assert (
        "already"
        in node.start_sharing(secagg_id="s", parties=[A, B], researcher_id=RESEARCHER).failure().reason
    )
    node.forget("s")
    assert isinstance(node.start_sharing(secagg_id="s", parties=[A, B], researcher_id=RESEARCHER), Success)


def test_keys_other_than_p256_are_refused() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    other = ec.generate_private_key(ec.SECP384R1())
    assert isinstance(load_public_key(public_pem(other)), Failure)
    assert isinstance(load_private_key(private_pem(other)), Failure)
    edwards = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert isinstance(load_public_key(edwards), Failure)
    assert isinstance(
        load_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"), Failure
    )
    with pytest.raises(ValueError, match="bootstrap"):
        Overlay(node_id=A, bootstrap_key=b"junk")


def test_forgetting_a_stalled_channel_set_up_lets_a_later_message_start_it_again() -> None:
    node = Overlay(node_id=A)
    salt, nonce = bytes(32), bytes(16)
    first = node.receive(overlay_fields(B, A, b"x", setup=False, salt=salt, nonce=nonce)).unwrap()
    again = node.receive(overlay_fields(B, A, b"x", setup=False, salt=salt, nonce=nonce)).unwrap()
    assert (len(first.send), len(again.send)) == (1, 0)  # the set-up request is sent once
    node.forget_waiting(B)
    retry = node.receive(overlay_fields(B, A, b"x", setup=False, salt=salt, nonce=nonce)).unwrap()
    assert len(retry.send) == 1 and retry.send[0]["setup"] is True
    assert not node.channel_ready(B)
