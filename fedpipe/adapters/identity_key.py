"""The node's identity key in a file of its root (PKCS8 PEM, mode 0600), created on first use.

``FileIdentityKey`` is the ``NodeIdentity`` port: it signs and hands out the public key, never the
private one. The file is written once, atomically and private to its owner;
an existing file that is not a P-256 private key is never replaced (that would change the node's
identity behind its peers' backs): the owner has to move it away. Two processes that create it at
once (the owner's command and the node) end up with the same key.
"""

import contextlib
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec
from returns.result import Failure, Result, Success

from fedpipe.adapters.sqlite.db import NodeAdminError
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.secagg.identity import (
    fingerprint,
    load_identity_key,
    new_identity_key,
    private_pem,
    public_pem,
    sign,
)

__all__ = ["IDENTITY_FILE", "FileIdentityKey"]

IDENTITY_FILE: Final = "identity.pem"
"""The identity key's file name in a node root."""


class FileIdentityKey:
    """A node identity key kept in ``path`` (created there, 0600, on first use)."""

    def __init__(self, path: Path | str) -> None:
        """Use the key file at ``path`` (nothing is read or written until the key is needed)."""
        self.path = Path(path)
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._lock = threading.Lock()

    @classmethod
    def of_root(cls, root: Path | str) -> "FileIdentityKey":
        """The identity key of the node root ``root`` (``<root>/identity.pem``)."""
        return cls(Path(root) / IDENTITY_FILE)

    def key(self) -> ec.EllipticCurvePrivateKey:
        """The private key, read from the file or created in it; ``NodeAdminError`` (one line) if unusable."""
        with self._lock:
            if self._key is None:
                self._key = self._load_or_create()
            return self._key

    def _load_or_create(self) -> ec.EllipticCurvePrivateKey:
        try:
            pem = self.path.read_bytes()
        except FileNotFoundError:
            try:
                pem = _create(self.path)
            except OSError as err:
                raise NodeAdminError(f"cannot write the identity key {self.path}: {err}") from err
        except OSError as err:
            raise NodeAdminError(f"cannot read the identity key {self.path}: {err}") from err
        loaded = load_identity_key(pem)
        if isinstance(loaded, Failure):
            raise NodeAdminError(f"{self.path}: {loaded.failure().reason}; move it away to create a new one")
        _private(self.path)
        return loaded.unwrap()

    def public_pem(self) -> bytes:
        """The public key (PEM SubjectPublicKeyInfo) to hand to the owners of the peers."""
        return public_pem(self.key())

    def fingerprint(self) -> str:
        """``SHA256:<hex>`` of the public key, for owners to compare by another channel."""
        return fingerprint(self.key())

    def sign(self, message: bytes) -> Result[bytes, RoundError]:
        """Sign ``message`` (ECDSA-P256-SHA256, DER); a failure when the key file is unusable."""
        try:
            key = self.key()
        except NodeAdminError as err:
            return Failure(
                RoundError(
                    code=ErrorCode.SECAGG_CONFIG,
                    step="",
                    detail=str(err),
                    public="The identity key of this node is unusable; its owner must repair it.",
                )
            )
        return Success(sign(key, message))


def _create(path: Path) -> bytes:
    """Write a new key to ``path`` unless one appeared there meanwhile; the PEM now in ``path``.

    The key goes to a private temporary file first, then is hard-linked into place: a link never
    replaces a file, so two processes creating the key at once end up with the same one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = private_pem(new_identity_key())
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:  # mkstemp creates the file 0600
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_bytes()
        return pem
    finally:
        tmp.unlink(missing_ok=True)


def _private(path: Path) -> None:
    """Take group and other access off a key file of this user (a copied file may have kept them)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        info = path.stat()
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and info.st_mode & 0o077:
            path.chmod(info.st_mode & 0o700)
