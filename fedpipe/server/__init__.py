"""The reference file-exchange server (Starlette on uvicorn): uploads, downloads, metric sink.

``create_app(root, max_bytes=..., public_url=...)`` builds the ASGI app; ``serve(host, port, root)``
runs it; ``fedpipe.server.testing.running_server(root)`` runs it in a thread for tests.
"""

from pathlib import Path

from fedpipe.server.app import DEFAULT_MAX_BYTES, create_app

__all__ = ["DEFAULT_MAX_BYTES", "create_app", "serve"]


def serve(
    host: str,
    port: int,
    root: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    public_url: str | None = None,
    log_level: str = "info",
) -> None:
    """Run the file exchange over ``root`` on ``host:port`` until interrupted.

    ``public_url`` defaults to ``http://host:port``; pass it when clients reach the server through
    another name (a proxy, a container network).
    """
    import uvicorn

    url = public_url or f"http://{host}:{port}"
    uvicorn.run(
        create_app(Path(root), max_bytes=max_bytes, public_url=url),
        host=host,
        port=port,
        log_level=log_level,
        lifespan="off",
    )
