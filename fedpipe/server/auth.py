"""Bearer credentials of the server: issue, list, revoke, and check tokens (stored hashed in SQLite).

A token reads ``fp1.<token_id>.<secret>``: ``token_id`` is 16 lowercase hex characters (the
public handle, used to list and revoke), ``secret`` 43 urlsafe-base64 characters (32 random
bytes). The server keeps ``sha256(secret)`` only, in ``<root>/board.sqlite`` next to the task
board; checking a token is one lookup by primary key and a constant-time comparison of digests,
and sees a revocation made by another process (``fedpipe tokens revoke``) on the next request.

A token has a role (``node`` or ``researcher``) and a subject (the node id or researcher name).
"""

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from attrs import frozen
from starlette.requests import Request
from starlette.responses import JSONResponse

from fedpipe.server.board_db import connect

__all__ = [
    "ROLES",
    "IssuedToken",
    "Principal",
    "TokenInfo",
    "TokenStore",
    "authorize",
    "bearer",
    "forbidden",
    "parse_token",
    "principal_of",
    "unauthorized",
    "valid_subject",
]

ROLES = ("node", "researcher")
_TOKEN = re.compile(r"fp1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")
_SUBJECT = re.compile(r"[A-Za-z0-9_.-]{1,128}")
# Checked when the token id is unknown too, so that a miss costs what a hit does.
_DUMMY_DIGEST = hashlib.sha256(b"fedpipe: no such token").digest()


@frozen(kw_only=True)
class Principal:
    """Who a request is from: ``role`` ("node" or "researcher") and ``subject`` (node id or name)."""

    role: str
    subject: str


@frozen(kw_only=True)
class IssuedToken:
    """A token just issued: ``token`` is the only copy of the secret (the server keeps its hash)."""

    token_id: str
    token: str
    role: str
    subject: str


@frozen(kw_only=True)
class TokenInfo:
    """What the server knows of a token (never its secret); times are epoch seconds."""

    token_id: str
    role: str
    subject: str
    created: float
    revoked: float | None


def valid_subject(subject: str) -> bool:
    """Whether ``subject`` may name a node or researcher: 1-128 of ``[A-Za-z0-9_.-]``.

    >>> valid_subject("node-1"), valid_subject("a/b"), valid_subject("")
    (True, False, False)
    """
    return isinstance(subject, str) and _SUBJECT.fullmatch(subject) is not None


def parse_token(token: str) -> tuple[str, str] | None:
    """Split ``fp1.<token_id>.<secret>`` into (token_id, secret), or None when malformed.

    >>> parse_token("fp1.0123456789abcdef." + "A" * 43)[0]
    '0123456789abcdef'
    >>> parse_token("fp1.XYZ.secret") is None
    True
    """
    match = _TOKEN.fullmatch(token)
    return None if match is None else (match.group(1), match.group(2))


def bearer(token: str) -> dict[str, str]:
    """The request headers that present ``token``: ``{"Authorization": "Bearer <token>"}``."""
    return {"Authorization": f"Bearer {token}"}


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


class TokenStore:
    """The tokens of the server over ``root`` (``<root>/board.sqlite``), safe across threads and processes.

    Usable while the server runs (another process, the CLI): every write is committed at once
    and every check reads the table, so issues and revocations take effect on the next request.
    """

    def __init__(self, root: Path) -> None:
        self._conn = connect(Path(root))
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the database connection; the store is unusable afterwards."""
        with self._lock:
            self._conn.close()

    def issue(self, role: str, subject: str) -> IssuedToken:
        """A new token for ``role`` ("node"/"researcher") and ``subject``; ValueError when either is invalid."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        if not valid_subject(subject):
            raise ValueError("a subject is 1-128 characters among A-Z a-z 0-9 _ . -")
        while True:
            token_id = secrets.token_hex(8)
            secret = secrets.token_urlsafe(32)
            try:
                with self._lock:
                    self._conn.execute(
                        "INSERT INTO tokens (token_id, role, subject, secret_sha256, created, revoked)"
                        " VALUES (?, ?, ?, ?, ?, NULL)",
                        (token_id, role, subject, _digest(secret), time.time()),
                    )
            except sqlite3.IntegrityError:  # a token id drawn twice (2**-64): draw again
                continue
            return IssuedToken(
                token_id=token_id, token=f"fp1.{token_id}.{secret}", role=role, subject=subject
            )

    def revoke(self, token_id: str) -> bool:
        """Revoke ``token_id``; False when no such token is live (unknown or already revoked)."""
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE tokens SET revoked = ? WHERE token_id = ? AND revoked IS NULL",
                (time.time(), token_id),
            )
        return cursor.rowcount > 0

    def list(self) -> list[TokenInfo]:
        """Every token issued, oldest first (revoked ones included, with their revocation time)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT token_id, role, subject, created, revoked FROM tokens ORDER BY created, token_id"
            ).fetchall()
        return [TokenInfo(token_id=r[0], role=r[1], subject=r[2], created=r[3], revoked=r[4]) for r in rows]

    def check(self, token: str) -> Principal | None:
        """The principal ``token`` authenticates, or None (malformed, unknown, wrong secret, revoked)."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        token_id, secret = parsed
        with self._lock:
            row = self._conn.execute(
                "SELECT role, subject, secret_sha256, revoked FROM tokens WHERE token_id = ?", (token_id,)
            ).fetchone()
        stored = row[2] if row is not None else _DUMMY_DIGEST
        matches = hmac.compare_digest(_digest(secret), stored)
        if row is None or not matches or row[3] is not None:
            return None
        return Principal(role=row[0], subject=row[1])

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal of an ``Authorization`` header value (``Bearer <token>``), or None."""
        if authorization is None:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.check(token.strip())


def unauthorized() -> JSONResponse:
    """401 for a missing, malformed, unknown, wrong or revoked credential: no detail of which."""
    return JSONResponse({"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


def forbidden() -> JSONResponse:
    """403 for a valid credential on a route (or task) its role or subject may not use."""
    return JSONResponse({"error": "forbidden"}, status_code=403)


def principal_of(request: Request, tokens: TokenStore) -> Principal | None:
    """The principal of ``request``'s bearer token, or None when it has no valid one."""
    return tokens.authenticate(request.headers.get("authorization"))


def authorize(request: Request, tokens: TokenStore, *roles: str) -> Principal | JSONResponse:
    """The principal of ``request`` when its token is valid and has one of ``roles``; else the answer.

    The answer is ``unauthorized()`` (no valid token) or ``forbidden()`` (another role): every
    route starts with this, so all of them refuse alike.
    """
    principal = principal_of(request, tokens)
    if principal is None:
        return unauthorized()
    return principal if principal.role in roles else forbidden()
