"""Shared test settings and fixtures: hypothesis profiles, the real server with credentials, a fault proxy.

Hypothesis runs the "dev" profile, or "ci" under CI=true (HYPOTHESIS_PROFILE chooses either).
"""

import collections
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from attrs import define, field
from hypothesis import HealthCheck, settings

from fedpipe.server import create_app
from fedpipe.server.auth import TokenStore, bearer
from fedpipe.server.testing import running_app

settings.register_profile("dev", max_examples=40, deadline=None)
settings.register_profile(
    "ci", max_examples=60, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@define
class Fault:
    """What the proxy does to one connection.

    kind: "status" (answer ``status`` without asking the server), "reset" (send ``keep`` body
    bytes then a TCP reset), "truncate" (send ``keep`` body bytes then close), "corrupt" (flip
    one body byte), "delay" (wait ``seconds`` before answering), "pass" (forward untouched).
    ``ranges=False`` also hides the server's ``Accept-Ranges`` (a server that cannot resume).
    """

    kind: str
    ranges: bool = True
    status: int = 500
    keep: int = 0
    seconds: float = 0.0
    headers: dict[str, str] = field(factory=dict)


@define
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class FaultProxy:
    """A one-request-per-connection HTTP proxy in front of the real server, scripted per connection."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.faults: collections.deque[Fault] = collections.deque()
        self.always: Fault | None = None
        self.seen: list[Seen] = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def script(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read_request(conn: socket.socket) -> tuple[bytes, bytes] | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = conn.recv(1 << 20)
            if not chunk:
                return None
            body += chunk
        return head, body

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            request = self._read_request(conn)
            if request is None:
                return
            head, body = request
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            self.seen.append(Seen(method, path, headers))
            fault = self.faults.popleft() if self.faults else (self.always or Fault("pass"))
            if fault.kind == "status":
                extra = "".join(f"{k}: {v}\r\n" for k, v in fault.headers.items())
                conn.sendall(
                    f"HTTP/1.1 {fault.status} Injected\r\nContent-Length: 0\r\nConnection: close\r\n{extra}\r\n".encode()
                )
                return
            if fault.kind == "delay":
                time.sleep(fault.seconds)
            kept = [ln for ln in lines[1:] if not ln.lower().startswith("connection:")]
            forward = "\r\n".join([lines[0], *kept, "Connection: close"]).encode() + b"\r\n\r\n" + body
            response = b""
            try:
                with socket.create_connection(self.upstream) as up:
                    up.sendall(forward)
                    while chunk := up.recv(1 << 20):
                        response += chunk
            except OSError:
                return  # the server is gone (test teardown)
            rhead, _, rbody = response.partition(b"\r\n\r\n")
            if not fault.ranges:
                rhead = b"\r\n".join(
                    ln for ln in rhead.split(b"\r\n") if not ln.lower().startswith(b"accept-ranges")
                )
            if fault.kind == "corrupt" and rbody:
                rbody = bytes([rbody[0] ^ 0xFF]) + rbody[1:]
            if fault.kind in ("reset", "truncate"):
                conn.sendall(rhead + b"\r\n\r\n" + rbody[: fault.keep])
                if fault.kind == "reset":
                    time.sleep(0.3)  # let the client read what was sent: a reset drops unread data
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                return
            with contextlib.suppress(OSError):  # the client may have given up (a timeout test)
                conn.sendall(rhead + b"\r\n\r\n" + rbody)


@pytest.fixture
def server_root(tmp_path: Path) -> Path:
    return tmp_path / "exchange"


@pytest.fixture
def server(server_root: Path) -> Iterator[str]:
    """The real server (file exchange, monitor, task board) over ``server_root`` on loopback: its base URL."""
    with running_app(create_app(server_root, max_bytes=8 * 1024 * 1024)) as url:
        yield url


@pytest.fixture
def token_store(server_root: Path) -> Iterator[TokenStore]:
    """The credentials of ``server`` (``<server_root>/board.sqlite``): issue more with ``.issue(role, subject)``."""
    store = TokenStore(server_root)
    yield store
    store.close()


@pytest.fixture
def node_headers(token_store: TokenStore) -> dict[str, str]:
    """The ``Authorization`` header of a token of node "node-1", valid on the ``server`` fixture's app."""
    return bearer(token_store.issue("node", "node-1").token)


@pytest.fixture
def researcher_headers(token_store: TokenStore) -> dict[str, str]:
    """The ``Authorization`` header of a token of researcher "researcher-1", valid on ``server``."""
    return bearer(token_store.issue("researcher", "researcher-1").token)


@pytest.fixture
def proxy(server: str) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of ``server`` (another origin): files uploaded through it get
    download URLs that point at it, as the server names files by the URL a request came to."""
    p = FaultProxy(server)
    yield p
    p.close()
