"""Node identity keys and the signed key offers of fedpipe's LOM key agreement (pure crypto, no I/O).

Each node has a long-lived P-256 identity key; owners exchange the public halves out of band and
pin each other's (``fedpipe peers add``). A LOM context is agreed lazily on its first secure round:
every party draws an ephemeral X25519 key, publishes a **key offer** through the server's relay and
collects every other party's offer. An offer says, signed by its node's identity key (ECDSA P-256,
SHA-256, DER):

    ``OFFER_DOMAIN`` + canonical JSON of {"secagg_id", "job_id", "parties_sha256", "node_id",
    "ephemeral"}

``parties_sha256`` is the SHA-256 of the canonical JSON list of the parties in the request's order,
``ephemeral`` the X25519 public key (base64). The relay sees offers and could drop or replay them,
but not forge one: a node accepts an offer only under the key its owner pinned for that peer, and
only for the context, job and party list of its own request. The pairwise secret of two parties is
HKDF-SHA256 of their X25519 shared secret, salt = the UTF-8 context id, info = ``SECRET_INFO`` +
canonical JSON of [sorted pair ids, parties]; so both ends derive the same 32 bytes and no two
contexts, pairs or party lists share one.

Failures are one-line strings (``OfferProblem.reason``) that name no secret and no path.
"""

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from typing import Any, Final

from attrs import frozen
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from returns.result import Failure, Result, Success

__all__ = [
    "EPHEMERAL_BYTES",
    "MAX_OFFER_BYTES",
    "MAX_PEM_BYTES",
    "OFFER_DOMAIN",
    "SECRET_BYTES",
    "SECRET_INFO",
    "KeyOffer",
    "OfferProblem",
    "decode_offer",
    "encode_offer",
    "ephemeral_public",
    "fingerprint",
    "load_identity_key",
    "load_public_key",
    "new_identity_key",
    "offer_message",
    "pairwise_secret",
    "parties_digest",
    "private_pem",
    "public_pem",
    "read_p256_private",
    "read_p256_public",
    "sign",
    "verify_offer",
]

OFFER_DOMAIN: Final = b"fedpipe-lom-offer-v1\n"
"""Prefix of every signed offer, so that an identity signature can mean nothing else."""
SECRET_INFO: Final = b"fedpipe-lom-dh-v1"
"""HKDF ``info`` prefix of a pairwise secret."""
EPHEMERAL_BYTES: Final = 32
SECRET_BYTES: Final = 32
MAX_OFFER_BYTES: Final = 4096
"""The largest offer accepted (a real one is about 400 bytes, whatever the number of parties)."""
MAX_PEM_BYTES: Final = 1024
"""The largest public-key PEM accepted (a P-256 one is 178 bytes)."""
_OFFER_FIELDS: Final = ("secagg_id", "job_id", "parties_sha256", "node_id", "ephemeral")


@frozen(kw_only=True)
class OfferProblem:
    """Why a key, an offer or an agreement is refused: one printable line naming no secret."""

    reason: str


@frozen(kw_only=True)
class KeyOffer:
    """One node's signed key offer for a LOM context (decoded, not yet verified)."""

    secagg_id: str
    job_id: str
    parties_sha256: str
    node_id: str
    ephemeral: bytes
    signature: bytes


def _canonical(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=True).encode("ascii")


# -- identity keys ---------------------------------------------------------------------------------


def new_identity_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 identity key."""
    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The key as stored in the node's key file: unencrypted PKCS8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    """The public key as owners exchange it: PEM SubjectPublicKeyInfo."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def read_p256_private(pem: object, what: str) -> Result[ec.EllipticCurvePrivateKey, str]:
    """Read an unencrypted PEM (PKCS8 or SEC1) P-256 private key; the failure names ``what``. Never raises."""
    if not isinstance(pem, bytes) or len(pem) > 4 * MAX_PEM_BYTES:
        return Failure(f"the {what} is not a PEM of acceptable size")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return Failure(f"the {what} is not a readable unencrypted PEM key")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        return Failure(f"the {what} is not a P-256 key")
    return Success(key)


def read_p256_public(pem: object) -> Result[ec.EllipticCurvePublicKey, str]:
    """Read a PEM SubjectPublicKeyInfo P-256 public key; the failure is one line. Never raises."""
    if not isinstance(pem, bytes) or len(pem) > MAX_PEM_BYTES:
        return Failure("the public key is not a PEM of acceptable size")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return Failure("the public key is not a readable PEM public key")
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        return Failure("the public key is not a P-256 key")
    return Success(key)


def load_identity_key(pem: bytes) -> Result[ec.EllipticCurvePrivateKey, OfferProblem]:
    """Read an unencrypted PEM private key; only P-256 keys are identity keys. Never raises."""
    return read_p256_private(pem, "identity key").alt(lambda reason: OfferProblem(reason=reason))


def load_public_key(pem: object) -> Result[ec.EllipticCurvePublicKey, OfferProblem]:
    """Read a PEM public key (SubjectPublicKeyInfo); only P-256. Never raises."""
    return read_p256_public(pem).alt(lambda reason: OfferProblem(reason=reason))


def fingerprint(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> str:
    """``SHA256:<64 lowercase hex>`` of the public key's DER SubjectPublicKeyInfo (what owners compare)."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA-P256-SHA256 signature (DER) of ``message``."""
    return key.sign(message, ec.ECDSA(hashes.SHA256()))


# -- offers ----------------------------------------------------------------------------------------


def parties_digest(parties: Sequence[str]) -> str:
    """Hex SHA-256 of the canonical JSON list of ``parties`` (order kept: it is the request's).

    >>> parties_digest(["a", "b"]) == parties_digest(["b", "a"])
    False
    """
    return hashlib.sha256(_canonical(list(parties))).hexdigest()


def ephemeral_public(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of an ephemeral key's public half."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _body(secagg_id: str, job_id: str, parties_sha256: str, node_id: str, ephemeral: bytes) -> dict[str, str]:
    return {
        "secagg_id": secagg_id,
        "job_id": job_id,
        "parties_sha256": parties_sha256,
        "node_id": node_id,
        "ephemeral": base64.b64encode(ephemeral).decode("ascii"),
    }


def offer_message(
    *, secagg_id: str, job_id: str, parties: Sequence[str], node_id: str, ephemeral: bytes
) -> bytes:
    """The bytes a node signs to offer ``ephemeral`` for the context (see the module docstring)."""
    return OFFER_DOMAIN + _canonical(_body(secagg_id, job_id, parties_digest(parties), node_id, ephemeral))


def encode_offer(
    *, secagg_id: str, job_id: str, parties: Sequence[str], node_id: str, ephemeral: bytes, signature: bytes
) -> bytes:
    """The offer as published: canonical JSON of the signed fields plus ``signature`` (base64)."""
    body: dict[str, Any] = _body(secagg_id, job_id, parties_digest(parties), node_id, ephemeral)
    body["signature"] = base64.b64encode(signature).decode("ascii")
    return _canonical(body)


def decode_offer(blob: object) -> Result[KeyOffer, OfferProblem]:
    """Read a published offer; checks its shape only (``verify_offer`` checks what it says). Never raises."""
    if not isinstance(blob, bytes) or len(blob) > MAX_OFFER_BYTES:
        return Failure(OfferProblem(reason="the key offer is not a blob of acceptable size"))
    try:
        data = json.loads(blob.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return Failure(OfferProblem(reason="the key offer is not ASCII JSON"))
    if not isinstance(data, dict) or set(data) != {*_OFFER_FIELDS, "signature"}:
        return Failure(OfferProblem(reason="the key offer does not have the offer's fields"))
    if not all(isinstance(data[k], str) for k in data):
        return Failure(OfferProblem(reason="the key offer's fields are not strings"))
    try:
        ephemeral = base64.b64decode(data["ephemeral"], validate=True)
        signature = base64.b64decode(data["signature"], validate=True)
    except (binascii.Error, ValueError):
        return Failure(OfferProblem(reason="the key offer's keys are not base64"))
    if len(ephemeral) != EPHEMERAL_BYTES or not signature:
        return Failure(OfferProblem(reason="the key offer's ephemeral key is not an X25519 public key"))
    return Success(
        KeyOffer(
            secagg_id=data["secagg_id"],
            job_id=data["job_id"],
            parties_sha256=data["parties_sha256"],
            node_id=data["node_id"],
            ephemeral=ephemeral,
            signature=signature,
        )
    )


def verify_offer(
    offer: KeyOffer,
    *,
    secagg_id: str,
    job_id: str,
    parties: Sequence[str],
    node_id: str,
    pinned: ec.EllipticCurvePublicKey,
) -> OfferProblem | None:
    """Why ``offer`` is not ``node_id``'s offer for this context under its ``pinned`` key; None if it is."""
    if offer.node_id != node_id:
        return OfferProblem(reason="the key offer is signed for another node")
    if offer.secagg_id != secagg_id or offer.job_id != job_id:
        return OfferProblem(reason="the key offer is for another context or experiment")
    if offer.parties_sha256 != parties_digest(parties):
        return OfferProblem(reason="the key offer is for another list of parties")
    message = offer_message(
        secagg_id=secagg_id, job_id=job_id, parties=parties, node_id=node_id, ephemeral=offer.ephemeral
    )
    try:
        pinned.verify(offer.signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return OfferProblem(reason="the key offer is not signed by the key pinned for this peer")
    return None


def pairwise_secret(
    own_key: X25519PrivateKey,
    peer_ephemeral: bytes,
    *,
    secagg_id: str,
    own_id: str,
    peer_id: str,
    parties: Sequence[str],
) -> Result[bytes, OfferProblem]:
    """The 32-byte secret of this node and ``peer_id`` for the context (both ends get the same bytes).

    >>> a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    >>> common = {"secagg_id": "ctx", "parties": ["x", "y"]}
    >>> s1 = pairwise_secret(a, ephemeral_public(b), own_id="x", peer_id="y", **common).unwrap()
    >>> s2 = pairwise_secret(b, ephemeral_public(a), own_id="y", peer_id="x", **common).unwrap()
    >>> s1 == s2, len(s1)
    (True, 32)
    """
    try:
        shared = own_key.exchange(X25519PublicKey.from_public_bytes(peer_ephemeral))
    except ValueError:  # a low-order point: the exchange would be all zeros
        return Failure(OfferProblem(reason="the peer's ephemeral key is not a usable X25519 key"))
    info = SECRET_INFO + _canonical([sorted((own_id, peer_id)), list(parties)])
    secret = HKDF(algorithm=hashes.SHA256(), length=SECRET_BYTES, salt=secagg_id.encode("utf-8"), info=info)
    return Success(secret.derive(shared))
