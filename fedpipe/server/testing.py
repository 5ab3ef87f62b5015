"""Run the file-exchange server on 127.0.0.1 in a background thread, for tests and demos."""

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from fedpipe.server.app import create_app

__all__ = ["running_app", "running_server"]


@contextlib.contextmanager
def running_app(app: ASGIApp, *, startup_timeout: float = 10.0) -> Iterator[str]:
    """Serve ``app`` on a free loopback port while the block runs; yield its base URL.

    The port is bound before the server starts (no race for it); on exit the server finishes the
    requests in flight and the thread is joined.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=5
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
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@contextlib.contextmanager
def running_server(root: Path, **options: Any) -> Iterator[str]:
    """Serve a file exchange over ``root`` (see ``create_app`` for ``options``); yield its base URL.

    Uploads go to ``<url>/upload``. To inspect the app (its monitor events, say), build it with
    ``create_app`` and serve it with ``running_app`` instead.
    """
    with running_app(create_app(root, **options)) as url:
        yield url
