"""The file-exchange HTTP app: content-addressed uploads and downloads, plus a metric sink.

| route                 | does                                                                 |
|-----------------------|----------------------------------------------------------------------|
| POST /upload[/]       | multipart field ``file`` -> 201 ``{file, url, id, sha256, size}``    |
| GET|HEAD /files/{id}  | the file, with Range support and its digest in ``X-Content-SHA256``   |
| POST /monitor         | one JSON metric event (a node's ``MetricEvent.to_dict()``) -> 204    |
| GET /monitor          | the events received so far, oldest first                            |
| GET /health           | ``{"status": "ok"}``                                                 |

The id of a file is the SHA-256 of its bytes, so names are never taken from the client. More
routes (a task queue for nodes, say) are passed to ``create_app(routes=...)``.
"""

import base64
import collections
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from fedpipe.server.multipart import MultipartError, boundary_of, stream_file_part
from fedpipe.server.store import BlobStore, TooLarge, is_blob_id
from fedpipe.server.tasks import TaskBoard, task_routes

__all__ = ["DEFAULT_MAX_BYTES", "create_app", "digest_headers"]

DEFAULT_MAX_BYTES = 8 * 1024**3
MAX_EVENT_BYTES = 64 * 1024
_FORM_OVERHEAD = 64 * 1024


def digest_headers(blob_id: str) -> dict[str, str]:
    """The headers that carry a file's SHA-256 (hex, RFC 3230 ``Digest``) and its strong ETag.

    >>> digest_headers("00" * 32)["Digest"]
    'sha-256=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='
    """
    return {
        "X-Content-SHA256": blob_id,
        "Digest": "sha-256=" + base64.b64encode(bytes.fromhex(blob_id)).decode("ascii"),
        "ETag": f'"{blob_id}"',
    }


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Exchange:
    def __init__(self, store: BlobStore, public_url: str | None, monitor_capacity: int) -> None:
        self.store = store
        self.public_url = public_url.rstrip("/") if public_url else None
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=monitor_capacity)

    def base(self, request: Request) -> str:
        return self.public_url or str(request.base_url).rstrip("/")

    async def upload(self, request: Request) -> Response:
        boundary = boundary_of(request.headers.get("content-type", ""))
        if boundary is None:
            return _error(400, "expected a multipart/form-data body with a `file` part")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.store.max_bytes + _FORM_OVERHEAD:
            return _error(413, f"files are limited to {self.store.max_bytes} bytes")
        writer = await anyio.to_thread.run_sync(self.store.writer)
        try:
            found = await stream_file_part(request.stream(), boundary, "file", writer.write)
            if not found:
                writer.abort()
                return _error(400, "the form has no `file` part")
            blob_id = await anyio.to_thread.run_sync(writer.commit)
        except TooLarge:
            writer.abort()
            return _error(413, f"files are limited to {self.store.max_bytes} bytes")
        except MultipartError as err:
            writer.abort()
            return _error(400, str(err))
        except ClientDisconnect:
            writer.abort()
            return Response(status_code=400)
        except OSError:  # the server's disk is full or failing: the client may retry later
            writer.abort()
            return _error(507, "the file exchange cannot store the file")
        except BaseException:
            writer.abort()
            raise
        url = f"{self.base(request)}/files/{blob_id}"
        body = {"file": url, "url": url, "id": blob_id, "sha256": blob_id, "size": writer.size}
        return JSONResponse(body, status_code=201, headers={"Location": url})

    async def download(self, request: Request) -> Response:
        blob_id = request.path_params["blob_id"]
        if not is_blob_id(blob_id):
            return _error(404, "no such file")
        path = self.store.path(blob_id)
        if not await anyio.to_thread.run_sync(path.is_file):
            return _error(404, "no such file")
        headers = digest_headers(blob_id) | {"Cache-Control": "public, max-age=31536000, immutable"}
        return FileResponse(path, headers=headers, media_type="application/octet-stream")

    async def post_event(self, request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_EVENT_BYTES:
                return _error(413, "event too large")
        try:
            event = json.loads(body)
        except ValueError:
            return _error(400, "the body is not JSON")
        if not isinstance(event, dict):
            return _error(400, "an event is a JSON object")
        self.events.append(event)
        return Response(status_code=204)

    async def list_events(self, request: Request) -> Response:
        job_id = request.query_params.get("job_id")
        events = [e for e in self.events if job_id is None or e.get("job_id") == job_id]
        return JSONResponse(events)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})


def create_app(
    root: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    public_url: str | None = None,
    routes: Sequence[BaseRoute] = (),
    monitor_capacity: int = 100_000,
    board: TaskBoard | None = None,
) -> Starlette:
    """The file-exchange app storing files under ``root``.

    ``public_url`` is the base of the download URLs it hands out (default: the URL the request
    came to); ``max_bytes`` bounds one file; ``routes`` are added after the exchange's own.
    ``app.state.exchange.events`` holds the monitor events received; ``app.state.board`` is the
    task board nodes pull their train requests from (see ``fedpipe.server.tasks``).
    """
    exchange = _Exchange(BlobStore(Path(root), max_bytes), public_url, monitor_capacity)
    own = [
        Route("/upload", exchange.upload, methods=["POST"]),
        Route("/upload/", exchange.upload, methods=["POST"]),
        Route("/files/{blob_id}", exchange.download, methods=["GET", "HEAD"]),
        Route("/monitor", exchange.post_event, methods=["POST"]),
        Route("/monitor", exchange.list_events, methods=["GET"]),
        Route("/health", exchange.health, methods=["GET"]),
    ]
    board = board or TaskBoard()
    app = Starlette(routes=[*own, *task_routes(board), *routes])
    app.state.exchange = exchange
    app.state.board = board
    return app
