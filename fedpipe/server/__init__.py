"""The reference server (Starlette on uvicorn): file exchange, metric sink, task board and key relay, with tokens.

``create_app(root, ...)`` builds the ASGI app; ``serve(host, port, root)`` runs it (HTTPS with
``certfile``/``keyfile``); ``fedpipe.server.auth.TokenStore(root)`` issues the bearer tokens it
accepts; ``fedpipe.server.testing.running_server(root)`` runs it in a thread for tests.
"""

from pathlib import Path
from typing import Any

from fedpipe.server.app import DEFAULT_MAX_BYTES, create_app

__all__ = ["DEFAULT_MAX_BYTES", "KEEPALIVE_S", "create_app", "serve"]

KEEPALIVE_S = 5
"""How long the server keeps an idle client connection open; its clients drop theirs sooner
(``fedpipe.adapters.http_exchange.KEEPALIVE_EXPIRY_S``)."""


def serve(
    host: str,
    port: int,
    root: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    public_url: str | None = None,
    log_level: str = "info",
    certfile: str | Path | None = None,
    keyfile: str | Path | None = None,
    **options: Any,
) -> None:
    """Run the server over ``root`` on ``host:port`` until interrupted.

    With both ``certfile`` and ``keyfile`` (PEM) it serves HTTPS only; with one of them it
    refuses to start (ValueError). ``public_url`` defaults to ``http[s]://host:port``; pass it
    when clients reach the server through another name (a proxy, a container network).
    ``options`` go to ``create_app`` (lease_seconds, max_tasks_per_node, monitor_bytes, ...).
    """
    import uvicorn

    if (certfile is None) != (keyfile is None):
        raise ValueError("HTTPS needs both a certificate file and a key file")
    scheme = "https" if certfile is not None else "http"
    url = public_url or f"{scheme}://{host}:{port}"
    uvicorn.run(
        create_app(Path(root), max_bytes=max_bytes, public_url=url, **options),
        host=host,
        port=port,
        log_level=log_level,
        lifespan="off",
        timeout_keep_alive=KEEPALIVE_S,
        ssl_certfile=None if certfile is None else str(certfile),
        ssl_keyfile=None if keyfile is None else str(keyfile),
    )
