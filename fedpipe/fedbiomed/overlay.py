"""Fed-BioMed 6.4.1's node-to-node overlay: sealed inner messages, channel set-up, LOM DH and JL sharing.

Nodes of a Fed-BioMed federation talk to each other only through the researcher, which relays an
``OverlayMessage`` by its ``dest_node_id`` and never reads its ``overlay`` payload. This module is
that protocol as a pure library (no I/O, no clock, no grpc), byte-compatible with 6.4.1's nodes:

- **Payload** (``seal`` / ``open_sealed``): msgpack of ``{"message": inner.to_dict(), "signature":
  sig}``, where ``sig`` is ECDSA-P256-SHA256 (DER) by the sender over msgpack of ``inner.to_dict()``
  (the inner message's fields in class order, then ``__type_message__``), the whole encrypted with
  ChaCha20 (16-byte ``nonce``: cryptography's 4-byte little-endian counter + 12-byte nonce form)
  under a 32-byte key = ConcatKDF-SHA256(ECDH(own key, peer key), otherinfo = ``salt`` + the two
  node ids concatenated in string order). Each message has a fresh 32-byte ``salt`` and 16-byte
  ``nonce``, sent in clear in the ``OverlayMessage``. The receiver verifies the signature over its
  own re-encoding of the decoded inner message, as 6.4.1 does.
- **Keys**: set-up messages (``setup=True``: ``ChannelSetupRequest`` / ``ChannelSetupReply``) use one
  key pair shipped inside the Fed-BioMed package (``BOOTSTRAP_KEY_PEM``) on both sides: ECDH of that
  key with itself, signed by it. Anyone holding the package (it is public) can therefore read, forge
  and alter set-up messages, including the channel public keys they carry: the set-up is neither
  secret nor authenticated, and the channel is only as good as the relay that carries it. Every
  later message (``setup=False``) uses per-pair keys: each node draws one P-256 key pair per peer
  (persisted by 6.4.1 in its database, table ``ChannelManager``, as base64 of the PKCS8 PEM), and
  learns the peer's public key from a ``ChannelSetupReply`` (kept in memory only, so a restarted
  node sets the channel up again). For fedpipe-to-fedpipe pairs, ``Overlay`` can instead seal the
  set-up under node identity keys pinned by the owners (``pinned_peers``), which a bystander with
  the package cannot forge.
- **LOM (Diffie-Hellman)**: per ``secagg_id`` each node draws a fresh P-256 key pair, asks every
  other party for its public key (``KeyRequest`` / ``KeyReply``) and keeps, per peer, the 32-byte
  ``dh_secret`` = ConcatKDF-SHA256(ECDH, otherinfo = utf-8 of ``secagg_id`` + sorted node ids);
  6.4.1 stores ``{peer id: secret}`` (base64) with the parties and experiment id.
- **Joye-Libert (additive sharing)**: per ``secagg_id`` each node draws a 2040-bit user key, splits
  it into one additive share per party (``split_additive``), answers each peer's
  ``AdditiveSSharingRequest`` with the share meant for it, asks each peer for the share meant for
  itself, and replies to the researcher with its own share + the shares it received; 6.4.1 stores
  ``{"server_key": user key, "biprime": default biprime}``.

``Overlay`` is the per-node state machine: feed it the fields of every incoming ``OverlayMessage``
and the start of every set-up; it returns the ``OverlayMessage`` fields to send (for
``fedpipe.fedbiomed.messages.encode_message("OverlayMessage", ...)``), the secrets when a set-up
completes, and the channel keys to persist. Timeouts are the driver's: ``forget`` a set-up that
took too long. It is stricter than 6.4.1 where 6.4.1 is lax by accident: set-up classes only with
``setup=True`` and the others only with ``setup=False``, replies only to requests it sent, requests
only from the parties of the set-up, printable ids, bounded sizes and counts.
"""

import secrets
import uuid
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

from attrs import field, frozen
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from returns.result import Failure, Result, Success

from fedpipe.codec import CodecError, Limits, dumps, loads
from fedpipe.errors import printable
from fedpipe.fedbiomed.messages import (
    ENVELOPE_KEY,
    MESSAGE_MODULE,
    PROTOCOL_VERSION,
    FieldSpec,
    field_problem,
    is_compatible_version,
)
from fedpipe.request import is_identifier_text
from fedpipe.secagg.identity import read_p256_private, read_p256_public

__all__ = [
    "BOOTSTRAP_KEY_PEM",
    "INNER_FIELDS",
    "JL_KEY_BITS",
    "NONCE_BYTES",
    "SALT_BYTES",
    "SETUP_KINDS",
    "DhSecrets",
    "Overlay",
    "OverlayError",
    "SharedKey",
    "Step",
    "agree",
    "dh_secret",
    "inner_dict",
    "load_private_key",
    "load_public_key",
    "new_private_key",
    "open_sealed",
    "private_pem",
    "public_pem",
    "seal",
    "split_additive",
]

# The key pair Fed-BioMed 6.4.1 ships in its package (share/fedbiomed/envs/common/default_keys/
# default_n2n_key.pem) and every stock node uses, on both ends, for channel set-up messages. It is
# public: knowing it protects nothing, but a node must use it to set a channel up with a stock node.
BOOTSTRAP_KEY_PEM: Final = (
    b"-----BEGIN PRIVATE KEY-----\n"
    b"MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgo0+8iUgUibpAw7gj\n"
    b"duqcCXXcc1YeEQkzQaixpnJP4R+hRANCAATIZJixHBIRJnujJKWRgHyMM+UOqtT8\n"
    b"VFDAMJPYX2VdJgWR1PIh0268KMxi0igWALA60mMPyyq3wRItZihhaHy1\n"
    b"-----END PRIVATE KEY-----\n"
)
SALT_BYTES: Final = 32
NONCE_BYTES: Final = 16
KEY_BYTES: Final = 32
JL_KEY_BITS: Final = 2040  # 6.4.1's user key size for Joye-Libert
REQUEST_PREFIX: Final = "request_"
MAX_OVERLAY_BYTES: Final = 64 * 1024  # 6.4.1's overlay payloads are under 1 KiB
MAX_PEM_BYTES: Final = 1024
MAX_SHARE_BITS: Final = 4096  # a share of a 2040-bit key among a few hundred parties fits easily


def _payload_limits(max_bytes: int) -> Limits:
    """What decoding a payload may build: no arrays or tensors, shallow, small."""
    return Limits(
        max_bytes=max_bytes,
        max_depth=8,
        max_elements=4096,
        max_str_bytes=64 * 1024,
        max_int_bytes=MAX_SHARE_BITS // 8 + 1,
        dtypes=frozenset(),
        memory_constant=4 * 1024**2,
    )


def _f(name: str, *kinds: str, default: Any = None, required: bool = True) -> FieldSpec:
    if required:
        return FieldSpec(name=name, kinds=kinds)
    return FieldSpec(name=name, kinds=kinds, default=default)


_INNER_HEAD = (
    _f("protocol_version", "str", default=PROTOCOL_VERSION, required=False),
    _f("node_id", "str"),
    _f("dest_node_id", "str"),
    _f("request_id", "str", "none", required=False),
)
INNER_FIELDS: Final[Mapping[str, tuple[FieldSpec, ...]]] = MappingProxyType(
    {
        "ChannelSetupRequest": _INNER_HEAD,
        "ChannelSetupReply": (*_INNER_HEAD, _f("public_key", "bytes")),
        "KeyRequest": (*_INNER_HEAD, _f("secagg_id", "str")),
        "KeyReply": (*_INNER_HEAD, _f("public_key", "bytes"), _f("secagg_id", "str")),
        "AdditiveSSharingRequest": (*_INNER_HEAD, _f("secagg_id", "str")),
        "AdditiveSSharingReply": (*_INNER_HEAD, _f("secagg_id", "str"), _f("share", "int", "list")),
    }
)
"""The inner (node-to-node) classes of 6.4.1 -> their fields, in 6.4.1's ``to_dict`` order."""

SETUP_KINDS: Final = frozenset({"ChannelSetupRequest", "ChannelSetupReply"})
"""The inner classes 6.4.1 sends with ``setup=True`` (under the bootstrap key); the others use ``setup=False``."""


@frozen(kw_only=True)
class OverlayError:
    """Why an overlay message or a set-up step is refused: one printable line naming no secret."""

    reason: str


# -- keys ------------------------------------------------------------------------------------------


def load_private_key(pem: bytes) -> Result[ec.EllipticCurvePrivateKey, OverlayError]:
    """Read an unencrypted PEM (PKCS8 or SEC1) private key; only P-256 keys are accepted. Never raises."""
    return read_p256_private(pem, "private key").alt(lambda reason: OverlayError(reason=reason))


def load_public_key(pem: object) -> Result[ec.EllipticCurvePublicKey, OverlayError]:
    """Read a PEM SubjectPublicKeyInfo public key, as 6.4.1 sends them; only P-256. Never raises."""
    return read_p256_public(pem).alt(lambda reason: OverlayError(reason=reason))


def new_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 private key (what 6.4.1 draws per channel and per DH set-up)."""
    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The key as 6.4.1 stores it: unencrypted PKCS8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    """The public key as 6.4.1 sends it: PEM SubjectPublicKeyInfo."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def agree(
    *,
    local_id: str,
    local_key: ec.EllipticCurvePrivateKey,
    peer_id: str,
    peer_public_key: ec.EllipticCurvePublicKey,
    salt: bytes,
) -> bytes:
    """6.4.1's key agreement: ConcatKDF-SHA256 (32 bytes) of the ECDH secret, ``otherinfo`` = ``salt``
    + the two node ids concatenated in ascending string order (so both ends derive the same key).

    Used with a message's ``salt`` for overlay keys and with the ``secagg_id`` for LOM secrets.
    Raises ``UnicodeEncodeError`` for ids that are not UTF-8 encodable (``Overlay`` checks them).
    """
    shared = local_key.exchange(ec.ECDH(), peer_public_key)
    ids = local_id + peer_id if local_id < peer_id else peer_id + local_id
    kdf = ConcatKDFHash(algorithm=hashes.SHA256(), length=KEY_BYTES, otherinfo=salt + ids.encode("utf-8"))
    return kdf.derive(shared)


def dh_secret(
    *,
    local_id: str,
    local_key: ec.EllipticCurvePrivateKey,
    peer_id: str,
    peer_public_key: ec.EllipticCurvePublicKey,
    secagg_id: str,
) -> bytes:
    """The LOM pairwise secret of two nodes for ``secagg_id``, as 6.4.1 derives and stores it (32 bytes)."""
    return agree(
        local_id=local_id,
        local_key=local_key,
        peer_id=peer_id,
        peer_public_key=peer_public_key,
        salt=secagg_id.encode("utf-8"),
    )


def split_additive(secret: int, parties: int) -> list[int]:
    """Split ``secret`` into ``parties`` additive shares that sum to it, as 6.4.1's ``AdditiveSecret``.

    The first ``parties - 1`` shares are uniform in [0, 2**b] (b = the secret's bit length), drawn
    here from ``secrets`` (6.4.1 uses the non-cryptographic ``random``); the last is the secret minus
    their sum (so it may be negative). 6.4.1 keeps the last share for the splitting node itself.

    >>> shares = split_additive(2**100 + 7, 4)
    >>> len(shares), sum(shares) == 2**100 + 7
    (4, True)
    """
    if parties < 1:
        raise ValueError("at least one share is needed")
    bound = 2 ** secret.bit_length() + 1
    shares = [secrets.randbelow(bound) for _ in range(parties - 1)]
    return [*shares, secret - sum(shares)]


# -- sealed payloads -------------------------------------------------------------------------------


def _problem(kind: str, fields: Mapping[Any, Any], *, sending: bool) -> str | None:
    return field_problem(
        kind, fields, sending=sending, table=INNER_FIELDS, family="a node-to-node message class"
    )


def inner_dict(kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """6.4.1's ``inner.to_dict()``: the fields in class order (absent defaults filled), then the envelope.

    Raises ``ValueError`` when ``fields`` are not exactly the fields of inner class ``kind``.
    """
    specs = INNER_FIELDS.get(kind)
    if specs is None:
        raise ValueError(f"{kind!r} is not a node-to-node message class")
    filled = {
        spec.name: fields.get(spec.name, spec.default)
        for spec in specs
        if not spec.required or spec.name in fields
    }
    filled.update(fields)
    problem = _problem(kind, filled, sending=True)
    if problem is not None:
        raise ValueError(f"cannot seal this {kind}: {problem}")
    ordered: dict[str, Any] = {spec.name: filled[spec.name] for spec in specs}
    ordered[ENVELOPE_KEY] = {"module": MESSAGE_MODULE, "class": kind}
    return ordered


def _chacha20(key: bytes, nonce: bytes, data: bytes) -> bytes:
    cipher = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
    return cipher.update(data) + cipher.finalize()


def seal(
    inner_kind: str,
    inner_fields: Mapping[str, Any],
    *,
    sender_key: ec.EllipticCurvePrivateKey,
    peer_public_key: ec.EllipticCurvePublicKey,
    salt: bytes,
    nonce: bytes,
    signature: bytes | None = None,
) -> bytes:
    """Seal one inner message into an ``OverlayMessage.overlay`` payload, byte for byte as 6.4.1 does.

    The key derivation takes the node ids from the inner ``node_id`` (the sender) and
    ``dest_node_id``. ``sender_key`` signs and, with ``peer_public_key``, keys the cipher: the
    bootstrap key pair for set-up messages, the channel keys otherwise. ECDSA signatures are
    randomised; ``signature`` replaces the fresh one (only to reproduce a recorded payload). Raises
    ``ValueError`` for fields that do not fit the class or a salt / nonce of the wrong length.
    """
    if len(salt) != SALT_BYTES or len(nonce) != NONCE_BYTES:
        raise ValueError(f"the salt must be {SALT_BYTES} bytes and the nonce {NONCE_BYTES}")
    message = inner_dict(inner_kind, inner_fields)
    signed = dumps(message)
    if signature is None:
        signature = sender_key.sign(signed, ec.ECDSA(hashes.SHA256()))
    key = agree(
        local_id=message["node_id"],
        local_key=sender_key,
        peer_id=message["dest_node_id"],
        peer_public_key=peer_public_key,
        salt=salt,
    )
    return _chacha20(key, nonce, dumps({"message": message, "signature": signature}))


def _refuse(reason: str) -> Result[tuple[str, Mapping[str, Any]], OverlayError]:
    return Failure(OverlayError(reason=reason))


def open_sealed(
    overlay: object,
    *,
    sender_id: str,
    receiver_id: str,
    receiver_key: ec.EllipticCurvePrivateKey,
    peer_public_key: ec.EllipticCurvePublicKey,
    salt: object,
    nonce: object,
    max_bytes: int = MAX_OVERLAY_BYTES,
) -> Result[tuple[str, Mapping[str, Any]], OverlayError]:
    """Open a payload from ``sender_id`` to ``receiver_id``: (inner class name, its fields). Never raises.

    Decrypts as ``seal`` encrypts, decodes the ``{"message", "signature"}`` map (no arrays, small
    limits), verifies the signature with ``peer_public_key`` over the re-encoded inner message (as
    6.4.1 does), then checks the inner message: a known inner class, a compatible protocol version,
    exactly its fields with 6.4.1's types (absent defaults filled), printable ids, and inner
    ``node_id`` / ``dest_node_id`` equal to ``sender_id`` / ``receiver_id``.
    """
    if not isinstance(overlay, bytes) or len(overlay) > max_bytes:
        return _refuse(f"the overlay payload is not bytes of at most {max_bytes} bytes")
    if not isinstance(salt, bytes) or len(salt) != SALT_BYTES:
        return _refuse(f"the overlay salt is not {SALT_BYTES} bytes")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        return _refuse(f"the overlay nonce is not {NONCE_BYTES} bytes")
    if not (is_identifier_text(sender_id) and is_identifier_text(receiver_id)):
        return _refuse("the overlay node ids are not printable ids")
    key = agree(
        local_id=receiver_id,
        local_key=receiver_key,
        peer_id=sender_id,
        peer_public_key=peer_public_key,
        salt=salt,
    )
    decoded = loads(_chacha20(key, nonce, overlay), _payload_limits(max_bytes))
    if isinstance(decoded, Failure):
        return _refuse("the overlay payload does not decrypt to a readable message")
    raw = decoded.unwrap()
    if type(raw) is not dict or set(raw) != {"message", "signature"}:
        return _refuse("the overlay payload is not a signed message")
    message, signature = raw["message"], raw["signature"]
    if type(message) is not dict or type(signature) is not bytes:
        return _refuse("the overlay payload is not a signed message")
    try:
        peer_public_key.verify(signature, dumps(message), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, CodecError, ValueError, TypeError, OverflowError):
        return _refuse("the overlay message's signature does not verify")
    return _inner_of(message, sender_id=sender_id, receiver_id=receiver_id)


def _inner_of(
    message: dict[Any, Any], *, sender_id: str, receiver_id: str
) -> Result[tuple[str, Mapping[str, Any]], OverlayError]:
    envelope = message.get(ENVELOPE_KEY)
    if (
        type(envelope) is not dict
        or set(envelope) != {"class", "module"}
        or not isinstance(envelope["class"], str)
        or not isinstance(envelope["module"], str)
    ):
        return _refuse(f"the inner message has no valid `{ENVELOPE_KEY}` entry")
    kind = envelope["class"]
    specs = INNER_FIELDS.get(kind)
    if specs is None:
        return _refuse(f"`{printable(kind)}` is not a node-to-node message class")
    if not is_compatible_version(message.get("protocol_version")):
        return _refuse("the inner message's protocol version is not compatible with this node's")
    values = {key: value for key, value in message.items() if key != ENVELOPE_KEY}
    filled = {
        spec.name: values.get(spec.name, spec.default)
        for spec in specs
        if not spec.required or spec.name in values
    }
    filled.update(values)
    problem = _problem(kind, filled, sending=False)
    if problem is not None:
        return _refuse(problem)
    for name in ("node_id", "dest_node_id", "request_id", "secagg_id"):
        if name in filled and not is_identifier_text(filled[name]):
            return _refuse(f"`{kind}.{name}` is not a printable id")
    if filled["node_id"] != sender_id or filled["dest_node_id"] != receiver_id:
        return _refuse(f"the `{kind}`'s node ids do not match the overlay message's")
    ordered = {spec.name: filled[spec.name] for spec in specs}
    return Success((kind, MappingProxyType(ordered)))


# -- the state machine -----------------------------------------------------------------------------


@frozen(kw_only=True)
class DhSecrets:
    """A finished LOM key agreement: ``pairwise`` is 6.4.1's DIFFIE_HELLMAN element context
    (``{peer id: 32-byte secret}``), stored with the parties (and the request's experiment id)."""

    secagg_id: str
    parties: tuple[str, ...]
    pairwise: Mapping[str, bytes] = field(repr=False)


@frozen(kw_only=True)
class SharedKey:
    """A finished JL sharing: the user key (6.4.1 stores it as ``server_key``, with the default
    biprime) and the share sum the node sends the researcher in ``AdditiveSSSetupReply.share``."""

    secagg_id: str
    parties: tuple[str, ...]
    user_key: int = field(repr=False)
    share_sum: int = field(repr=False)


@frozen(kw_only=True)
class Step:
    """What one event produced.

    ``send``: ``OverlayMessage`` fields to send, in order. ``received``: the inner messages opened
    (class name, fields). ``done``: set-ups that completed. ``new_channels``: (peer id, PKCS8 PEM of
    this node's new key for that peer) to persist, as 6.4.1 does, and pass back to ``Overlay`` on
    restart. ``refused``: why messages that waited for a channel were dropped once it was ready.
    """

    send: tuple[Mapping[str, Any], ...] = ()
    received: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    done: tuple[DhSecrets | SharedKey, ...] = ()
    new_channels: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    refused: tuple[str, ...] = ()


class _Out:
    """A Step under construction."""

    def __init__(self) -> None:
        self.send: list[Mapping[str, Any]] = []
        self.received: list[tuple[str, Mapping[str, Any]]] = []
        self.done: list[DhSecrets | SharedKey] = []
        self.new_channels: list[tuple[str, bytes]] = []
        self.refused: list[str] = []

    def step(self) -> Step:
        return Step(
            send=tuple(self.send),
            received=tuple(self.received),
            done=tuple(self.done),
            new_channels=tuple(self.new_channels),
            refused=tuple(self.refused),
        )


class _Channel:
    def __init__(self, local_key: ec.EllipticCurvePrivateKey) -> None:
        self.local_key = local_key
        self.distant_key: ec.EllipticCurvePublicKey | None = None
        self.setup_request: str | None = None  # the ChannelSetupRequest awaiting its reply
        self.waiting_in: list[Mapping[str, Any]] = []  # incoming messages that need the peer's key
        self.waiting_out: list[tuple[str, dict[str, Any], str]] = []  # (kind, fields, researcher id)


class _Session:
    def __init__(self, secagg_id: str, parties: tuple[str, ...], researcher_id: str) -> None:
        self.secagg_id = secagg_id
        self.parties = parties
        self.researcher_id = researcher_id
        self.pending: dict[str, str] = {}  # request id -> peer asked
        self.finished = False


class _DhSession(_Session):
    def __init__(
        self, secagg_id: str, parties: tuple[str, ...], researcher_id: str, key: ec.EllipticCurvePrivateKey
    ) -> None:
        super().__init__(secagg_id, parties, researcher_id)
        self.key = key
        self.public = public_pem(key)
        self.secrets: dict[str, bytes] = {}


class _JlSession(_Session):
    def __init__(
        self,
        secagg_id: str,
        parties: tuple[str, ...],
        researcher_id: str,
        user_key: int,
        shares: dict[str, int],
        own: int,
    ) -> None:
        super().__init__(secagg_id, parties, researcher_id)
        self.user_key = user_key
        self.shares = shares  # peer -> the share meant for it
        self.own = own
        self.received: dict[str, int] = {}


class Overlay:
    """One node's overlay state: channels per peer, LOM and JL set-ups per ``secagg_id``. Pure, clock-free.

    Channel states per peer: none -> this node's key drawn (``new_channels``) -> set-up request
    sent -> peer key known (ready). A ``setup=False`` message to or from a peer whose key is not
    known waits until its ``ChannelSetupReply`` arrives; a peer's request for a ``secagg_id`` this
    node has not started yet waits for ``start_dh`` / ``start_sharing`` (6.4.1 waits 30 s; the
    driver ``forget``s on its own clock). Waiting messages and channels are bounded.

    ``channel_keys``: this node's stored key per peer (PEM), from earlier ``new_channels``.
    ``bootstrap_key``: the set-up key pair shared by all stock nodes. ``identity_key`` and
    ``pinned_peers`` (peer id -> public PEM, exchanged by the owners): when ``pinned_peers`` is
    given, set-up messages are sealed and signed with this node's identity key and the peer's pinned
    key instead of the bootstrap key, and set-up with any other peer is refused (fedpipe-only
    federations). The constructor raises ``ValueError`` for an invalid id or key (the caller's
    configuration); every other method is total.
    """

    def __init__(
        self,
        *,
        node_id: str,
        channel_keys: Mapping[str, bytes] | None = None,
        bootstrap_key: bytes = BOOTSTRAP_KEY_PEM,
        identity_key: bytes | None = None,
        pinned_peers: Mapping[str, bytes] | None = None,
        max_channels: int = 1024,
        max_waiting: int = 64,
        max_overlay_bytes: int = MAX_OVERLAY_BYTES,
    ) -> None:
        if not is_identifier_text(node_id):
            raise ValueError("the node id must be a printable id")
        self.node_id = node_id
        self._max_channels = max_channels
        self._max_waiting = max_waiting
        self._max_bytes = max_overlay_bytes
        self._channels: dict[str, _Channel] = {}
        for peer, pem in (channel_keys or {}).items():
            if not is_identifier_text(peer):
                raise ValueError("a stored channel's peer id is not a printable id")
            self._channels[peer] = _Channel(_key_or_raise(pem, "a stored channel key"))
        self._bootstrap = _key_or_raise(bootstrap_key, "the bootstrap key")
        self._pinned: dict[str, ec.EllipticCurvePublicKey] | None = None
        self._identity: ec.EllipticCurvePrivateKey | None = None
        if pinned_peers is not None:
            if identity_key is None:
                raise ValueError("pinned peers need this node's identity key")
            self._identity = _key_or_raise(identity_key, "the identity key")
            self._pinned = {}
            for peer, pem in pinned_peers.items():
                loaded = load_public_key(pem)
                if isinstance(loaded, Failure):
                    raise ValueError(f"the pinned key of a peer is invalid: {loaded.failure().reason}")
                self._pinned[peer] = loaded.unwrap()
        self._dh: dict[str, _DhSession] = {}
        self._jl: dict[str, _JlSession] = {}
        self._early: dict[str, list[tuple[str, Mapping[str, Any], str]]] = {}  # secagg id -> requests

    # -- public API ------------------------------------------------------------------------------

    def channel_ready(self, peer: str) -> bool:
        """True when this node knows ``peer``'s channel key (set-up done in this process)."""
        channel = self._channels.get(peer)
        return channel is not None and channel.distant_key is not None

    def receive(self, fields: Mapping[str, Any]) -> Result[Step, OverlayError]:
        """Handle one incoming ``OverlayMessage`` (its decoded fields). Never raises.

        Refused (Failure, nothing changes): a message not for this node, ill-formed, undecryptable,
        badly signed, an unexpected class for its ``setup`` flag, a reply to no request of ours, a
        request from a non-party. Success carries the replies, completions and channel keys.
        """
        try:
            problem = field_problem("OverlayMessage", fields)
        except Exception:  # a hostile mapping may raise anything; refuse it
            problem = "not a mapping of fields"
        if problem is not None:
            return Failure(OverlayError(reason=f"bad overlay message: {problem}"))
        sender = fields["node_id"]
        if fields["dest_node_id"] != self.node_id:
            return Failure(OverlayError(reason="the overlay message is for another node"))
        if not is_identifier_text(sender) or sender == self.node_id:
            return Failure(OverlayError(reason="the overlay message's sender is not a valid peer id"))
        if not is_identifier_text(fields["researcher_id"]):
            return Failure(OverlayError(reason="the overlay message's researcher id is not a printable id"))
        if len(fields["overlay"]) > self._max_bytes:
            return Failure(OverlayError(reason=f"the overlay payload is larger than {self._max_bytes} bytes"))
        out = _Out()
        outcome = self._receive(fields, out)
        if isinstance(outcome, Failure):
            return Failure(outcome.failure())
        return Success(out.step())

    def start_dh(
        self, *, secagg_id: str, parties: Sequence[str], researcher_id: str
    ) -> Result[Step, OverlayError]:
        """Start a LOM key agreement (on ``SecaggRequest``): draw this node's key for ``secagg_id``,
        ask every other party for its public key (setting channels up first where needed), and answer
        the parties' requests that arrived early. ``done`` holds ``DhSecrets`` once every peer answered.
        """
        checked = self._check_start(secagg_id, parties, researcher_id)
        if isinstance(checked, Failure):
            return Failure(checked.failure())
        session = _DhSession(secagg_id, checked.unwrap(), researcher_id, new_private_key())
        self._dh[secagg_id] = session
        return Success(self._start(session, "KeyRequest"))

    def start_sharing(
        self, *, secagg_id: str, parties: Sequence[str], researcher_id: str, user_key: int | None = None
    ) -> Result[Step, OverlayError]:
        """Start a JL sharing (on ``AdditiveSSSetupRequest``): draw a 2040-bit user key (or use
        ``user_key``), split it into one share per party (this node keeps the last), ask every other
        party for the share it made for this node, and answer early requests. ``done`` holds
        ``SharedKey`` once every peer answered.
        """
        checked = self._check_start(secagg_id, parties, researcher_id)
        if isinstance(checked, Failure):
            return Failure(checked.failure())
        ordered = checked.unwrap()
        if user_key is not None and (type(user_key) is not int or user_key <= 0):
            return Failure(OverlayError(reason="the user key must be a positive int"))
        key = secrets.randbits(JL_KEY_BITS) if user_key is None else user_key
        shares = split_additive(key, len(ordered))
        others = [p for p in ordered if p != self.node_id]
        session = _JlSession(
            secagg_id, ordered, researcher_id, key, dict(zip(others, shares, strict=False)), shares[-1]
        )
        self._jl[secagg_id] = session
        return Success(self._start(session, "AdditiveSSharingRequest"))

    def forget(self, secagg_id: str) -> None:
        """Drop a set-up (finished, deleted or timed out) and the requests that waited for it."""
        self._dh.pop(secagg_id, None)
        self._jl.pop(secagg_id, None)
        self._early.pop(secagg_id, None)

    def forget_waiting(self, peer: str) -> None:
        """Drop the messages waiting for ``peer``'s channel (its set-up timed out); a later message
        starts the set-up again."""
        channel = self._channels.get(peer)
        if channel is not None:
            channel.setup_request = None
            channel.waiting_in.clear()
            channel.waiting_out.clear()

    # -- internals -------------------------------------------------------------------------------

    def _check_start(
        self, secagg_id: str, parties: Sequence[str], researcher_id: str
    ) -> Result[tuple[str, ...], OverlayError]:
        if not is_identifier_text(secagg_id) or not is_identifier_text(researcher_id):
            return Failure(OverlayError(reason="the secagg id and researcher id must be printable ids"))
        if secagg_id in self._dh or secagg_id in self._jl:
            return Failure(OverlayError(reason=f"secagg element `{secagg_id}` is already being set up"))
        ordered = tuple(parties) if isinstance(parties, Sequence) and not isinstance(parties, str) else ()
        if not all(is_identifier_text(p) for p in ordered) or len(set(ordered)) != len(ordered):
            return Failure(OverlayError(reason="the parties must be distinct printable node ids"))
        if self.node_id not in ordered or len(ordered) < 2:
            return Failure(OverlayError(reason="the parties must hold this node and at least one other"))
        if len(ordered) > self._max_channels:
            return Failure(OverlayError(reason="too many parties"))
        return Success(ordered)

    def _start(self, session: _Session, kind: str) -> Step:
        out = _Out()
        for peer in session.parties:
            if peer == self.node_id:
                continue
            request_id = _request_id()
            session.pending[request_id] = peer
            inner = {
                "node_id": self.node_id,
                "dest_node_id": peer,
                "request_id": request_id,
                "secagg_id": session.secagg_id,
            }
            self._send_channel(peer, kind, inner, session.researcher_id, out)
        for kind_in, inner_in, researcher_id in self._early.pop(session.secagg_id, []):
            answered = self._answer(kind_in, inner_in, researcher_id, out)
            if isinstance(answered, Failure):
                out.refused.append(answered.failure().reason)
        return out.step()

    def _channel(self, peer: str, out: _Out) -> _Channel | None:
        channel = self._channels.get(peer)
        if channel is None:
            if len(self._channels) >= self._max_channels:
                return None
            key = new_private_key()
            channel = self._channels[peer] = _Channel(key)
            out.new_channels.append((peer, private_pem(key)))
        return channel

    def _setup_keys(self, peer: str) -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey] | None:
        if self._pinned is None:
            return self._bootstrap, self._bootstrap.public_key()
        pinned = self._pinned.get(peer)
        if pinned is None or self._identity is None:
            return None
        return self._identity, pinned

    def _overlay(
        self,
        peer: str,
        kind: str,
        inner: Mapping[str, Any],
        researcher_id: str,
        *,
        setup: bool,
        keys: tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey],
    ) -> dict[str, Any]:
        salt, nonce = secrets.token_bytes(SALT_BYTES), secrets.token_bytes(NONCE_BYTES)
        payload = seal(kind, inner, sender_key=keys[0], peer_public_key=keys[1], salt=salt, nonce=nonce)
        return {
            "protocol_version": PROTOCOL_VERSION,
            "researcher_id": researcher_id,
            "node_id": self.node_id,
            "dest_node_id": peer,
            "overlay": payload,
            "setup": setup,
            "salt": salt,
            "nonce": nonce,
        }

    def _request_setup(
        self, peer: str, channel: _Channel, researcher_id: str, out: _Out
    ) -> Result[None, OverlayError]:
        if channel.setup_request is not None:
            return Success(None)
        keys = self._setup_keys(peer)
        if keys is None:
            return Failure(OverlayError(reason="no pinned key for this peer: channel set-up refused"))
        channel.setup_request = _request_id()
        inner = {"node_id": self.node_id, "dest_node_id": peer, "request_id": channel.setup_request}
        out.send.append(
            self._overlay(peer, "ChannelSetupRequest", inner, researcher_id, setup=True, keys=keys)
        )
        return Success(None)

    def _send_channel(
        self, peer: str, kind: str, inner: dict[str, Any], researcher_id: str, out: _Out
    ) -> None:
        channel = self._channel(peer, out)
        if channel is None:
            out.refused.append("too many node-to-node channels: message not sent")
            return
        if channel.distant_key is not None:
            keys = (channel.local_key, channel.distant_key)
            out.send.append(self._overlay(peer, kind, inner, researcher_id, setup=False, keys=keys))
            return
        channel.waiting_out.append((kind, inner, researcher_id))
        started = self._request_setup(peer, channel, researcher_id, out)
        if isinstance(started, Failure):
            out.refused.append(started.failure().reason)

    def _receive(self, fields: Mapping[str, Any], out: _Out) -> Result[None, OverlayError]:
        sender: str = fields["node_id"]
        if fields["setup"]:
            keys = self._setup_keys(sender)
            if keys is None:
                return Failure(OverlayError(reason="no pinned key for this peer: channel set-up refused"))
        else:
            channel = self._channel(sender, out)
            if channel is None:
                return Failure(OverlayError(reason="too many node-to-node channels"))
            if channel.distant_key is None:
                if len(channel.waiting_in) >= self._max_waiting:
                    return Failure(OverlayError(reason="too many messages wait for this peer's channel"))
                started = self._request_setup(sender, channel, fields["researcher_id"], out)
                if isinstance(started, Failure):
                    return started
                channel.waiting_in.append(fields)
                return Success(None)
            keys = (channel.local_key, channel.distant_key)
        opened = open_sealed(
            fields["overlay"],
            sender_id=sender,
            receiver_id=self.node_id,
            receiver_key=keys[0],
            peer_public_key=keys[1],
            salt=fields["salt"],
            nonce=fields["nonce"],
            max_bytes=self._max_bytes,
        )
        if isinstance(opened, Failure):
            return Failure(opened.failure())
        kind, inner = opened.unwrap()
        if (kind in SETUP_KINDS) != fields["setup"]:
            return Failure(OverlayError(reason=f"a `{kind}` must not come with setup={fields['setup']}"))
        position = len(out.received)  # before the messages this one releases
        handled = self._answer(kind, inner, fields["researcher_id"], out)
        if isinstance(handled, Success):
            out.received.insert(position, (kind, inner))
        return handled

    def _answer(
        self, kind: str, inner: Mapping[str, Any], researcher_id: str, out: _Out
    ) -> Result[None, OverlayError]:
        sender: str = inner["node_id"]
        reply: dict[str, Any] = {
            "node_id": self.node_id,
            "dest_node_id": sender,
            "request_id": inner["request_id"],
        }
        if kind == "ChannelSetupRequest":
            channel = self._channel(sender, out)
            keys = self._setup_keys(sender)
            if channel is None or keys is None:
                return Failure(OverlayError(reason="channel set-up refused for this peer"))
            reply["public_key"] = public_pem(channel.local_key)
            out.send.append(
                self._overlay(sender, "ChannelSetupReply", reply, researcher_id, setup=True, keys=keys)
            )
            return Success(None)
        if kind == "ChannelSetupReply":
            return self._channel_reply(sender, inner, out)
        secagg_id: str = inner["secagg_id"]
        if kind in ("KeyRequest", "AdditiveSSharingRequest"):
            session: _Session | None = (self._dh if kind == "KeyRequest" else self._jl).get(secagg_id)
            if secagg_id in (self._jl if kind == "KeyRequest" else self._dh):
                return Failure(OverlayError(reason=f"`{kind}` for a set-up of the other scheme"))
            if session is None:
                waiting = self._early.get(secagg_id, [])
                total = sum(len(requests) for requests in self._early.values())
                if len(waiting) >= self._max_waiting or total >= 4 * self._max_waiting:
                    return Failure(OverlayError(reason="too many requests wait for set-ups not started"))
                self._early.setdefault(secagg_id, []).append((kind, inner, researcher_id))
                return Success(None)
            if sender not in session.parties:
                return Failure(OverlayError(reason=f"`{kind}` from a node that is not a party of the set-up"))
            reply["secagg_id"] = secagg_id
            if isinstance(session, _DhSession):
                reply["public_key"] = session.public
                self._send_channel(sender, "KeyReply", reply, researcher_id, out)
            elif isinstance(session, _JlSession):
                reply["share"] = session.shares[sender]
                self._send_channel(sender, "AdditiveSSharingReply", reply, researcher_id, out)
            return Success(None)
        return self._set_up_reply(kind, sender, inner, out)

    def _channel_reply(self, sender: str, inner: Mapping[str, Any], out: _Out) -> Result[None, OverlayError]:
        channel = self._channels.get(sender)
        if channel is None or channel.setup_request is None or inner["request_id"] != channel.setup_request:
            return Failure(
                OverlayError(reason="a `ChannelSetupReply` to no channel set-up request of this node")
            )
        loaded = load_public_key(inner["public_key"])
        if isinstance(loaded, Failure):
            return Failure(loaded.failure())
        channel.distant_key, channel.setup_request = loaded.unwrap(), None
        waiting_out, channel.waiting_out = channel.waiting_out, []
        for kind, inner_out, researcher_id in waiting_out:
            keys = (channel.local_key, channel.distant_key)
            out.send.append(self._overlay(sender, kind, inner_out, researcher_id, setup=False, keys=keys))
        waiting_in, channel.waiting_in = channel.waiting_in, []
        for fields in waiting_in:
            outcome = self._receive(fields, out)
            if isinstance(outcome, Failure):
                out.refused.append(outcome.failure().reason)
        return Success(None)

    def _set_up_reply(
        self, kind: str, sender: str, inner: Mapping[str, Any], out: _Out
    ) -> Result[None, OverlayError]:
        secagg_id: str = inner["secagg_id"]
        session: _Session | None = (self._dh if kind == "KeyReply" else self._jl).get(secagg_id)
        if session is None or session.pending.get(inner["request_id"]) != sender:
            return Failure(OverlayError(reason=f"a `{kind}` to no request of this node"))
        if isinstance(session, _DhSession):
            loaded = load_public_key(inner["public_key"])
            if isinstance(loaded, Failure):
                return Failure(loaded.failure())
            session.secrets[sender] = dh_secret(
                local_id=self.node_id,
                local_key=session.key,
                peer_id=sender,
                peer_public_key=loaded.unwrap(),
                secagg_id=secagg_id,
            )
        elif isinstance(session, _JlSession):
            share = inner["share"]
            if type(share) is not int or abs(share).bit_length() > MAX_SHARE_BITS:
                return Failure(
                    OverlayError(reason=f"the share must be an int of at most {MAX_SHARE_BITS} bits")
                )
            session.received[sender] = share
        del session.pending[inner["request_id"]]
        if not session.pending and not session.finished:
            session.finished = True
            out.done.append(_result(session))
        return Success(None)


def _result(session: _Session) -> DhSecrets | SharedKey:
    if isinstance(session, _DhSession):
        return DhSecrets(
            secagg_id=session.secagg_id,
            parties=session.parties,
            pairwise=MappingProxyType(dict(session.secrets)),
        )
    assert isinstance(session, _JlSession)
    return SharedKey(
        secagg_id=session.secagg_id,
        parties=session.parties,
        user_key=session.user_key,
        share_sum=session.own + sum(session.received.values()),
    )


def _request_id() -> str:
    return REQUEST_PREFIX + str(uuid.uuid4())


def _key_or_raise(pem: bytes, what: str) -> ec.EllipticCurvePrivateKey:
    loaded = load_private_key(pem)
    if isinstance(loaded, Failure):
        raise ValueError(f"{what} is invalid: {loaded.failure().reason}")
    return loaded.unwrap()
