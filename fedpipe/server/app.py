"""The server HTTP app: content-addressed uploads and downloads, a metric sink, and the task board.

Every route but ``/health`` needs ``Authorization: Bearer <token>`` (``fedpipe.server.auth``): a
missing, malformed, unknown or revoked token gets 401 ``{"error": "unauthorized"}``, a valid one
on a route its role or subject may not use 403 ``{"error": "forbidden"}``, and nothing more.

| route                    | who                    | does                                                  |
|--------------------------|------------------------|-------------------------------------------------------|
| POST /upload[/]          | node, researcher       | multipart ``file`` -> 201 ``{file, url, id, sha256, size}`` |
| GET|HEAD /files/{id}     | node, researcher       | the file, with Range support, digest in ``X-Content-SHA256`` |
| POST /monitor            | node (event ``node_id`` = its own) | one JSON metric event -> 204               |
| GET /monitor[?job_id=J]  | researcher             | the events of the jobs it posted tasks for, oldest first |
| GET /health              | anyone                 | ``{"status": "ok"}``                                  |
| /tasks/..., /nodes       | see ``fedpipe.server.tasks``                                                    |
| /secagg/{id}/keys[/...]  | nodes: the LOM key relay, see ``fedpipe.server.relay``                          |

Limits, all enforced while the body streams in (a ``Content-Length`` over the limit -> 413 before
reading; a body that grows past it -> 413 as soon as it does): uploads ``max_bytes`` per file,
``/monitor`` events ``MAX_EVENT_BYTES``, board bodies as ``fedpipe.server.tasks`` says, key
offers as ``fedpipe.server.relay`` says (``max_key_setups``, ``max_key_parties``, ``key_setup_ttl_s``).
Monitor events are kept in memory, at most ``monitor_bytes`` in all and ``monitor_job_bytes``
per job (oldest out first); NaN, Infinity and -Infinity in an event are stored and served as the
strings "NaN", "Infinity" and "-Infinity", so ``GET /monitor`` is always valid JSON.

The id of a file is the SHA-256 of its bytes, so names are never taken from the client. The
task board and the tokens live in ``<root>/board.sqlite``; partial uploads left in
``<root>/tmp`` by a server that was killed are removed when the app is created. More routes are
passed to ``create_app(routes=...)``.
"""

import base64
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from fedpipe.server.auth import Principal, TokenStore, authorize, forbidden
from fedpipe.server.bodies import canonical, json_error, json_object, monitor_json
from fedpipe.server.events import EventBuffer
from fedpipe.server.multipart import MultipartError, boundary_of, stream_file_part
from fedpipe.server.relay import (
    DEFAULT_MAX_PARTIES,
    DEFAULT_MAX_SETUPS,
    DEFAULT_SETUP_TTL_S,
    KeyRelay,
    relay_routes,
)
from fedpipe.server.store import BlobStore, is_blob_id
from fedpipe.server.store import TooLarge as FileTooLarge
from fedpipe.server.tasks import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_BOARD_BYTES,
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_MAX_TASKS_PER_NODE,
    DEFAULT_REPLY_RETENTION_S,
    TaskBoard,
    task_routes,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MONITOR_BYTES",
    "DEFAULT_MONITOR_JOB_BYTES",
    "MAX_EVENT_BYTES",
    "create_app",
    "digest_headers",
]

DEFAULT_MAX_BYTES = 8 * 1024**3
DEFAULT_MONITOR_BYTES = 64 * 1024 * 1024
DEFAULT_MONITOR_JOB_BYTES = 8 * 1024 * 1024
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


class _Exchange:
    def __init__(
        self,
        store: BlobStore,
        public_url: str | None,
        events: EventBuffer,
        tokens: TokenStore,
        board: TaskBoard,
    ) -> None:
        self.store = store
        self.public_url = public_url.rstrip("/") if public_url else None
        self.events = events
        self.tokens = tokens
        self.board = board

    def base(self, request: Request) -> str:
        return self.public_url or str(request.base_url).rstrip("/")

    async def upload(self, request: Request) -> Response:
        who = authorize(request, self.tokens, "node", "researcher")
        if not isinstance(who, Principal):
            return who
        boundary = boundary_of(request.headers.get("content-type", ""))
        if boundary is None:
            return json_error(400, "expected a multipart/form-data body with a `file` part")
        declared = request.headers.get("content-length", "")
        if (
            declared.isascii()
            and declared.isdigit()
            and int(declared) > self.store.max_bytes + _FORM_OVERHEAD
        ):
            return json_error(413, f"files are limited to {self.store.max_bytes} bytes")
        writer = await anyio.to_thread.run_sync(self.store.writer)
        try:
            found = await stream_file_part(request.stream(), boundary, "file", writer.write)
            if not found:
                writer.abort()
                return json_error(400, "the form has no `file` part")
            blob_id = await anyio.to_thread.run_sync(writer.commit)
        except FileTooLarge:
            writer.abort()
            return json_error(413, f"files are limited to {self.store.max_bytes} bytes")
        except MultipartError as err:
            writer.abort()
            return json_error(400, str(err))
        except ClientDisconnect:
            writer.abort()
            return Response(status_code=400)
        except OSError:  # the server's disk is full or failing: the client may retry later
            writer.abort()
            return json_error(507, "the file exchange cannot store the file")
        except BaseException:
            writer.abort()
            raise
        url = f"{self.base(request)}/files/{blob_id}"
        body = {"file": url, "url": url, "id": blob_id, "sha256": blob_id, "size": writer.size}
        return JSONResponse(body, status_code=201, headers={"Location": url})

    async def download(self, request: Request) -> Response:
        who = authorize(request, self.tokens, "node", "researcher")
        if not isinstance(who, Principal):
            return who
        blob_id = request.path_params["blob_id"]
        if not is_blob_id(blob_id):
            return json_error(404, "no such file")
        path = self.store.path(blob_id)
        if not await anyio.to_thread.run_sync(path.is_file):
            return json_error(404, "no such file")
        headers = digest_headers(blob_id) | {"Cache-Control": "private, max-age=31536000, immutable"}
        return FileResponse(path, headers=headers, media_type="application/octet-stream")

    async def post_event(self, request: Request) -> Response:
        who = authorize(request, self.tokens, "node")
        if not isinstance(who, Principal):
            return who
        event = await json_object(request, MAX_EVENT_BYTES, monitor_json)
        if not isinstance(event, dict):
            return event
        if event.get("node_id") != who.subject:
            return forbidden()
        job = EventBuffer.job_of(event)
        if job is None:
            return json_error(400, "an event names its job_id")
        if not self.events.add(job, canonical(event)):
            return json_error(413, "the event is larger than the monitor keeps")
        return Response(status_code=204)

    async def list_events(self, request: Request) -> Response:
        who = authorize(request, self.tokens, "researcher")
        if not isinstance(who, Principal):
            return who
        job_id = request.query_params.get("job_id")
        if job_id is None:
            jobs = self.board.jobs_of(who.subject)
        else:
            jobs = {job_id} if self.board.owns_job(who.subject, job_id) else set()
        texts = self.events.texts(jobs) if jobs else []
        return Response(b"[" + b",".join(texts) + b"]", media_type="application/json")

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})


def create_app(
    root: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    public_url: str | None = None,
    routes: Sequence[BaseRoute] = (),
    board: TaskBoard | None = None,
    lease_seconds: float = DEFAULT_LEASE_S,
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    max_tasks_per_node: int = DEFAULT_MAX_TASKS_PER_NODE,
    max_board_bytes: int = DEFAULT_MAX_BOARD_BYTES,
    reply_retention_s: float = DEFAULT_REPLY_RETENTION_S,
    monitor_bytes: int = DEFAULT_MONITOR_BYTES,
    monitor_job_bytes: int = DEFAULT_MONITOR_JOB_BYTES,
    clock: Callable[[], float] = time.time,
    relay: KeyRelay | None = None,
    max_key_setups: int = DEFAULT_MAX_SETUPS,
    max_key_parties: int = DEFAULT_MAX_PARTIES,
    key_setup_ttl_s: float = DEFAULT_SETUP_TTL_S,
) -> Starlette:
    """The server app storing files, tokens and the task board under ``root``.

    ``public_url`` is the base of the download URLs it hands out (default: the URL the request
    came to); ``max_bytes`` bounds one file; ``routes`` are added after the server's own (they
    do their own authentication). The board options are ``TaskBoard``'s (ignored when ``board``
    is given); ``monitor_bytes``/``monitor_job_bytes`` bound the metric events kept; ``clock``
    is the wall clock of leases and retention (a fake one in tests). The key relay's bounds are
    ``KeyRelay``'s (ignored when ``relay`` is given).
    ``app.state.tokens`` is the ``TokenStore`` (issue tokens with it), ``app.state.board`` the
    ``TaskBoard``, ``app.state.exchange.events`` the ``EventBuffer``, ``app.state.relay`` the
    ``KeyRelay``.
    """
    root = Path(root)
    store = BlobStore(root, max_bytes)
    tokens = TokenStore(root)
    board = board or TaskBoard(
        root,
        lease_seconds=lease_seconds,
        max_deliveries=max_deliveries,
        max_tasks_per_node=max_tasks_per_node,
        max_board_bytes=max_board_bytes,
        reply_retention_s=reply_retention_s,
        clock=clock,
    )
    events = EventBuffer(max_bytes=monitor_bytes, max_job_bytes=monitor_job_bytes)
    exchange = _Exchange(store, public_url, events, tokens, board)
    own = [
        Route("/upload", exchange.upload, methods=["POST"]),
        Route("/upload/", exchange.upload, methods=["POST"]),
        Route("/files/{blob_id}", exchange.download, methods=["GET", "HEAD"]),
        Route("/monitor", exchange.post_event, methods=["POST"]),
        Route("/monitor", exchange.list_events, methods=["GET"]),
        Route("/health", exchange.health, methods=["GET"]),
    ]
    relay = relay or KeyRelay(
        max_setups=max_key_setups, max_parties=max_key_parties, ttl_seconds=key_setup_ttl_s
    )
    app = Starlette(routes=[*own, *task_routes(board, tokens), *relay_routes(relay, tokens), *routes])
    app.state.exchange = exchange
    app.state.board = board
    app.state.tokens = tokens
    app.state.relay = relay
    return app
