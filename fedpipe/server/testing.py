"""Run the server on 127.0.0.1 for tests and demos: in a thread (HTTP or HTTPS) or in a child process."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from fedpipe.server import KEEPALIVE_S
from fedpipe.server.app import create_app

__all__ = ["ServerProcess", "running_app", "running_server"]


@contextlib.contextmanager
def running_app(
    app: ASGIApp,
    *,
    startup_timeout: float = 10.0,
    certfile: str | Path | None = None,
    keyfile: str | Path | None = None,
) -> Iterator[str]:
    """Serve ``app`` on a free loopback port while the block runs; yield its base URL.

    With ``certfile`` and ``keyfile`` (PEM) it serves HTTPS and yields an ``https://`` URL. The
    port is bound before the server starts (no race for it); on exit the server finishes the
    requests in flight and the thread is joined.
    """
    if (certfile is None) != (keyfile is None):
        raise ValueError("HTTPS needs both a certificate file and a key file")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=KEEPALIVE_S,
        ssl_certfile=None if certfile is None else str(certfile),
        ssl_keyfile=None if keyfile is None else str(keyfile),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"exchange-{port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the file-exchange server did not start")
        time.sleep(0.01)
    try:
        yield f"{'http' if certfile is None else 'https'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@contextlib.contextmanager
def running_server(
    root: Path,
    *,
    certfile: str | Path | None = None,
    keyfile: str | Path | None = None,
    **options: Any,
) -> Iterator[str]:
    """Serve the server over ``root`` (see ``create_app`` for ``options``); yield its base URL.

    Uploads go to ``<url>/upload``; tokens are issued with ``TokenStore(root)`` (also while it
    runs). With ``certfile`` and ``keyfile`` it serves HTTPS. To inspect the app (its monitor
    events, say), build it with ``create_app`` and serve it with ``running_app`` instead.
    """
    with running_app(create_app(root, **options), certfile=certfile, keyfile=keyfile) as url:
        yield url


class ServerProcess:
    """``fedpipe.server.serve`` over ``root`` in a child process on a loopback port, for crash tests.

    The port (``port``, else a free one chosen once, here) stays the same across restarts, so a
    restarted server comes back at the same ``url``, as the nodes and clients that know it expect.
    ``start()`` waits until the port accepts connections; ``kill()`` sends SIGKILL (no cleanup of
    any kind runs, as in a power cut) and reaps the child; ``stop()`` asks it to exit. ``options``
    go to ``serve`` and must be literals (they are written into the child's command line).
    """

    def __init__(self, root: Path, *, port: int | None = None, **options: Any) -> None:
        self.root = Path(root)
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None
        if port is None:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = int(probe.getsockname()[1])
        self.port = port
        self.url = f"{'https' if options.get('certfile') else 'http'}://127.0.0.1:{port}"

    @property
    def pid(self) -> int:
        """The child's process id (the server is running)."""
        if self.proc is None:
            raise RuntimeError("the server process is not running")
        return self.proc.pid

    def start(self, startup_timeout: float = 30.0) -> str:
        """Start the child (RuntimeError while one runs); ``url`` once it accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("the server process is already running")
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        code = (
            "from fedpipe.server import serve; "
            f"serve('127.0.0.1', {self.port}, {str(self.root)!r}, log_level='warning'{options})"
        )
        # the child imports this very fedpipe, installed or not
        here = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p),
        }
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=env)
        deadline = time.monotonic() + startup_timeout
        while True:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError("the server process exited at start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self.url
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError("the server process did not start") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the child and reap it."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None

    def stop(self) -> None:
        """Ask the child to exit (SIGTERM), SIGKILL it if it takes more than 20 s."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
            self.proc = None

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
