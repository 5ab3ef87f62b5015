"""Regenerate overlay.json: Fed-BioMed 6.4.1's node-to-node overlay, keys and secrets (run once, by hand).

Run with the scratch environment that holds the real package (never from fedpipe's tests):

    .fbm-env/bin/python tests/fedbiomed/vectors/make_overlay_vectors.py

Everything here goes through 6.4.1's own code paths: ``OverlayChannel.format_outgoing_overlay``
seals each payload (with its own random salt, nonce and ECDSA signature, all recorded), the
receiving node's ``OverlayChannel.format_incoming_overlay`` opens it, ``_setup_use_channel_keys``
derives the channel keys and ``DHKeyAgreement`` the LOM pairwise secrets. The per-pair channel
keys and the DH keys are fixed (derived from small scalars) so the tests can redo every step.
"""

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from fedbiomed.common import message as m
from fedbiomed.common.channel_manager import ChannelManager
from fedbiomed.common.secagg import AdditiveSecret, DHKey, DHKeyAgreement
from fedbiomed.common.serializer import Serializer
from fedbiomed.node.requests import _overlay

HERE = Path(__file__).parent
RESEARCHER = "RESEARCHER_0b7f"
A, B, C = "NODE_a1f0", "NODE_b2e1", "NODE_c3d2"
SECAGG_ID = "secagg_5d9c7e0a"
FIXED_SALT = bytes(range(32))
# secret scalars of the fixed keys (test material, public on purpose)
CHANNEL_SCALARS = {A: 0xA11CE, B: 0xB0B}  # A's key for its channel to B, B's key for its channel to A
DH_SCALARS = {A: 0x1D1, B: 0x2D2, C: 0x3D3}  # each node's ECDH key for SECAGG_ID


def pem_of(scalar: int) -> bytes:
    key = ec.derive_private_key(scalar, ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem_of(scalar: int) -> bytes:
    return DHKey(private_key_pem=pem_of(scalar)).export_public_key()


def tagged(value: Any) -> Any:
    """JSON for message fields: bytes as {"hex": ...}, ints as they are (JSON keeps big ints)."""
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, dict):
        return {k: tagged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [tagged(v) for v in value]
    return value


def channel(node: str, peer: str, db: Path) -> _overlay.OverlayChannel:
    """A 6.4.1 overlay channel of ``node`` whose stored key for ``peer`` is the fixed one."""
    ChannelManager(str(db)).add(peer, pem_of(CHANNEL_SCALARS[node]))
    return _overlay.OverlayChannel(node, str(db), None)


async def generate(tmp: Path) -> dict[str, Any]:
    chan = {A: channel(A, B, tmp / "a.json"), B: channel(B, A, tmp / "b.json")}
    peer = {A: B, B: A}
    # each side learns the other's channel public key as a ChannelSetupReply would give it
    for node in (A, B):
        await chan[node]._channel_keys.add_pending_request(peer[node], "request_setup")
        assert await chan[node].set_distant_key(
            peer[node], public_pem_of(CHANNEL_SCALARS[peer[node]]), "request_setup"
        )
    channel_public = {node: await chan[node].get_local_public_key(peer[node]) for node in (A, B)}
    assert channel_public[A] == public_pem_of(CHANNEL_SCALARS[A])

    kdf = []
    for node in (A, B):
        for setup in (True, False):
            _, _, derived = await chan[node]._setup_use_channel_keys(
                peer[node], RESEARCHER, setup, FIXED_SALT
            )
            kdf.append(
                {
                    "node": node,
                    "peer": peer[node],
                    "setup": setup,
                    "salt": FIXED_SALT.hex(),
                    "key": derived.hex(),
                }
            )

    big_negative = -(2**2040) - 123456789
    inner = [
        (
            "ChannelSetupRequest",
            True,
            A,
            m.ChannelSetupRequest(request_id="request_c1", node_id=A, dest_node_id=B),
        ),
        (
            "ChannelSetupReply",
            True,
            B,
            m.ChannelSetupReply(
                request_id="request_c1", node_id=B, dest_node_id=A, public_key=channel_public[B]
            ),
        ),
        (
            "KeyRequest",
            False,
            A,
            m.KeyRequest(request_id="request_k1", node_id=A, dest_node_id=B, secagg_id=SECAGG_ID),
        ),
        (
            "KeyReply",
            False,
            B,
            m.KeyReply(
                request_id="request_k1",
                node_id=B,
                dest_node_id=A,
                public_key=public_pem_of(DH_SCALARS[B]),
                secagg_id=SECAGG_ID,
            ),
        ),
        (
            "AdditiveSSharingRequest",
            False,
            A,
            m.AdditiveSSharingRequest(
                request_id="request_s1", node_id=A, dest_node_id=B, secagg_id=SECAGG_ID
            ),
        ),
        (
            "AdditiveSSharingReply",
            False,
            B,
            m.AdditiveSSharingReply(
                request_id="request_s1", node_id=B, dest_node_id=A, secagg_id=SECAGG_ID, share=big_negative
            ),
        ),
        (
            "AdditiveSSharingReply_small",
            False,
            B,
            m.AdditiveSSharingReply(
                request_id="request_s2", node_id=B, dest_node_id=A, secagg_id=SECAGG_ID, share=42
            ),
        ),
    ]
    payloads = []
    for name, setup, sender, msg in inner:
        overlay, salt, nonce = await chan[sender].format_outgoing_overlay(msg, RESEARCHER, setup)
        _, _, key = await chan[sender]._setup_use_channel_keys(peer[sender], RESEARCHER, setup, salt)
        decryptor = Cipher(algorithms.ChaCha20(key, nonce), mode=None).decryptor()
        plain = decryptor.update(overlay) + decryptor.finalize()
        signed = Serializer.loads(plain)
        assert signed["message"] == msg.to_dict()
        outer = m.OverlayMessage(
            researcher_id=RESEARCHER,
            node_id=sender,
            dest_node_id=peer[sender],
            overlay=overlay,
            setup=setup,
            salt=salt,
            nonce=nonce,
        )
        opened = await chan[peer[sender]].format_incoming_overlay(outer)
        assert opened == msg, name
        payloads.append(
            {
                "name": name,
                "kind": type(msg).__name__,
                "setup": setup,
                "sender": sender,
                "dest": peer[sender],
                "salt": salt.hex(),
                "nonce": nonce.hex(),
                "key": key.hex(),
                "overlay": overlay.hex(),
                "plaintext": plain.hex(),
                "signature": signed["signature"].hex(),
                "fields": tagged({k: v for k, v in msg.to_dict().items() if k != "__type_message__"}),
                "overlay_message": Serializer.dumps(outer.to_dict()).hex(),
            }
        )

    dh = {}
    for u in (A, B, C):
        agreement = DHKeyAgreement(
            node_u_id=u,
            node_u_dh_key=DHKey(private_key_pem=pem_of(DH_SCALARS[u])),
            session_salt=bytes(SECAGG_ID, "utf-8"),
        )
        dh[u] = {v: agreement.agree(v, public_pem_of(DH_SCALARS[v])).hex() for v in (A, B, C) if v != u}

    secret = 2**2039 + 987654321
    shares = AdditiveSecret(secret).split(3).to_list()
    assert sum(shares) == secret

    default_pem = Path(_overlay._DEFAULT_KEY_DIR, _overlay._DEFAULT_N2N_KEY_FILE).read_bytes()
    return {
        "researcher_id": RESEARCHER,
        "nodes": [A, B, C],
        "secagg_id": SECAGG_ID,
        "bootstrap_key_pem": default_pem.decode(),
        "channel_private_keys": {n: pem_of(s).decode() for n, s in CHANNEL_SCALARS.items()},
        "channel_public_keys": {n: public_pem_of(s).decode() for n, s in CHANNEL_SCALARS.items()},
        "dh_private_keys": {n: pem_of(s).decode() for n, s in DH_SCALARS.items()},
        "dh_public_keys": {n: public_pem_of(s).decode() for n, s in DH_SCALARS.items()},
        "channel_kdf": kdf,
        "payloads": payloads,
        "dh_secrets": dh,
        "additive": {"secret": secret, "shares": shares},
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        vectors = asyncio.run(generate(Path(tmp)))
    (HERE / "overlay.json").write_text(json.dumps(vectors, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
