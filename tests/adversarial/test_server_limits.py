"""The server's memory is bounded whatever clients send: body limits while streaming, monitor bounds, waits."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from attrs import frozen

from fedpipe.server import create_app
from fedpipe.server.app import MAX_EVENT_BYTES
from fedpipe.server.auth import TokenStore, bearer
from fedpipe.server.events import EventBuffer
from fedpipe.server.tasks import MAX_LEASE_BODY_BYTES, MAX_REPLY_BYTES, MAX_TASK_BYTES
from fedpipe.server.testing import ServerProcess, running_app

MIB = 1024 * 1024
UPLOAD_LIMIT = 64 * 1024


@frozen
class Server:
    url: str
    app: Any
    node: dict[str, str]
    researcher: dict[str, str]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    app = create_app(
        tmp_path_factory.mktemp("limits") / "server",
        max_bytes=UPLOAD_LIMIT,
        monitor_bytes=40_000,
        monitor_job_bytes=10_000,
    )
    node = bearer(app.state.tokens.issue("node", "node-1").token)
    researcher = bearer(app.state.tokens.issue("researcher", "r1").token)
    app.state.board.post("r1", "node-1", b'{"job_id":"job-a"}', "job-a")
    app.state.board.post("r1", "node-1", b'{"job_id":"job-b"}', "job-b")
    with running_app(app) as url:
        yield Server(url=url, app=app, node=node, researcher=researcher)


def chunks(total: int, piece: int = MIB) -> Iterator[bytes]:
    """``total`` bytes of a JSON string body, sent chunked (no Content-Length)."""
    yield b'{"request": {"a": "'
    block = b"x" * piece
    left = total
    while left > 0:
        yield block[: min(piece, left)]
        left -= piece
    yield b'"}}'


def multipart(total: int) -> Iterator[bytes]:
    yield b"--zz\r\nContent-Disposition: form-data; name=file\r\n\r\n"
    yield from (b"x" * min(MIB, total - i) for i in range(0, total, MIB))
    yield b"\r\n--zz--\r\n"


# (path, who, limit): every route with a body
BODY_ROUTES = [
    ("/tasks/node-1", "researcher", MAX_TASK_BYTES),
    (f"/tasks/{'0' * 32}/reply", "node", MAX_REPLY_BYTES),
    (f"/tasks/{'0' * 32}/lease", "node", MAX_LEASE_BODY_BYTES),
    ("/monitor", "node", MAX_EVENT_BYTES),
]


@pytest.mark.parametrize(
    ("path", "who", "limit"), BODY_ROUTES, ids=[r[0].split("/")[-1] for r in BODY_ROUTES]
)
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_oversized_bodies_are_413_on_every_route(
    server: Server, path: str, who: str, limit: int, declared: bool
) -> None:
    headers = {"Content-Type": "application/json", **getattr(server, who)}
    body: bytes | Iterator[bytes] = b"".join(chunks(limit + 1)) if declared else chunks(limit + 1, 4096)
    reply = httpx.post(server.url + path, content=body, headers=headers, timeout=30)
    assert reply.status_code == 413
    assert set(reply.json()) == {"error"}


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_oversized_uploads_are_413_and_leave_nothing(server: Server, declared: bool) -> None:
    headers = {"Content-Type": "multipart/form-data; boundary=zz", **server.node}
    parts = multipart(UPLOAD_LIMIT * 4)
    body: bytes | Iterator[bytes] = b"".join(parts) if declared else parts
    reply = httpx.post(f"{server.url}/upload", content=body, headers=headers, timeout=30)
    assert reply.status_code == 413
    root = Path(server.app.state.exchange.store.root)
    assert list((root / "tmp").iterdir()) == []


def test_a_body_at_the_limit_is_not_refused_for_its_size(tmp_path: Path) -> None:
    app = create_app(tmp_path)
    node = bearer(app.state.tokens.issue("node", "node-1").token)
    event = {"node_id": "node-1", "job_id": "job-a", "pad": ""}
    event["pad"] = "x" * (MAX_EVENT_BYTES - len(json.dumps(event)))
    body = json.dumps(event).encode()
    assert len(body) == MAX_EVENT_BYTES
    with running_app(app) as url:
        assert httpx.post(f"{url}/monitor", content=body, headers=node).status_code == 204
        assert httpx.post(f"{url}/monitor", content=body + b" ", headers=node).status_code == 413


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def test_a_256_mib_chunked_body_never_costs_the_server_its_size(tmp_path: Path) -> None:
    root = tmp_path / "server"
    with ServerProcess(root, max_bytes=MIB) as srv:
        store = TokenStore(root)
        researcher = bearer(store.issue("researcher", "r1").token)
        node = bearer(store.issue("node", "node-1").token)
        store.close()
        assert (
            httpx.post(f"{srv.url}/tasks/node-1", json={"request": {}}, headers=researcher).status_code == 201
        )
        baseline = vm_kib(srv.pid, "VmHWM")
        form = {"Content-Type": "multipart/form-data; boundary=zz"}
        for path, headers, body in [
            ("/tasks/node-1", researcher, chunks(256 * MIB)),
            ("/monitor", node, chunks(256 * MIB)),
            ("/upload", {**node, **form}, multipart(256 * MIB)),
        ]:
            reply = httpx.post(srv.url + path, content=body, headers=headers, timeout=120)
            assert reply.status_code == 413
        growth_mib = (vm_kib(srv.pid, "VmHWM") - baseline) / 1024
        assert growth_mib < 32, f"the server grew {growth_mib:.0f} MiB for a 256 MiB body"
        assert httpx.get(f"{srv.url}/health").status_code == 200


# -- the monitor -------------------------------------------------------------------------------


def post_event(server: Server, job: str, i: int, pad: int = 900) -> None:
    event = {"node_id": "node-1", "job_id": job, "i": i, "pad": "x" * pad}
    assert httpx.post(f"{server.url}/monitor", json=event, headers=server.node).status_code == 204


def events(server: Server, job: str | None = None) -> list[dict[str, Any]]:
    params = {"job_id": job} if job else {}
    reply = httpx.get(f"{server.url}/monitor", params=params, headers=server.researcher)
    assert reply.status_code == 200
    return list(reply.json())


def test_the_monitor_is_bounded_per_job_and_overall_keeping_the_newest(tmp_path: Path) -> None:
    app = create_app(tmp_path, monitor_bytes=20_000, monitor_job_bytes=8_000)
    node = bearer(app.state.tokens.issue("node", "node-1").token)
    researcher = bearer(app.state.tokens.issue("researcher", "r1").token)
    jobs = [f"job-{j}" for j in range(4)]
    for job in jobs:
        app.state.board.post("r1", "node-1", json.dumps({"job_id": job}).encode(), job)
    with running_app(app) as url:
        server = Server(url=url, app=app, node=node, researcher=researcher)
        for i in range(30):
            post_event(server, "job-0", i)
        kept = [e["i"] for e in events(server, "job-0")]
        assert kept == list(range(30 - len(kept), 30))  # the oldest went first
        buffer: EventBuffer = app.state.exchange.events
        assert buffer.job_bytes("job-0") <= 8_000
        for job in jobs[1:]:
            for i in range(30):
                post_event(server, job, i)
        assert buffer.total <= 20_000
        assert all(buffer.job_bytes(job) <= 8_000 for job in jobs)
        everything = events(server)
        assert sum(len(json.dumps(e)) for e in everything) <= 20_000
        assert [e["i"] for e in everything if e["job_id"] == "job-3"][-1] == 29  # the newest stay


def test_non_finite_metrics_are_stored_and_served_as_valid_json(server: Server) -> None:
    body = (
        b'{"node_id": "node-1", "job_id": "job-b", "metric": {"loss": NaN, "hi": Infinity, "lo": -Infinity}}'
    )
    assert httpx.post(f"{server.url}/monitor", content=body, headers=server.node).status_code == 204
    reply = httpx.get(f"{server.url}/monitor", params={"job_id": "job-b"}, headers=server.researcher)

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} served")

    served = json.loads(reply.content.decode("utf-8"), parse_constant=refuse)
    assert served[-1]["metric"] == {"loss": "NaN", "hi": "Infinity", "lo": "-Infinity"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"node_id": "node-1", "job_id": "job-b", "k": "\\ud800"}',
        b'{"node_id": "node-1", "job_id": "job-b", "k": "\xff"}',
        b'{"node_id": "node-1", "job_id": "job-b", "k": ' + b"[" * 100 + b"]" * 100 + b"}",
        b'{"node_id": "node-1", "job_id": "job-b", "k": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"node_id": "node-1", "job_id": 3}',
        b"[1]",
    ],
    ids=["lone surrogate", "invalid UTF-8", "100 deep", "5000 deep", "no job id", "not an object"],
)
def test_events_a_reader_could_not_parse_are_refused(server: Server, body: bytes) -> None:
    before = len(events(server))
    reply = httpx.post(f"{server.url}/monitor", content=body, headers=server.node)
    assert reply.status_code == 400
    assert len(events(server)) == before


# -- long-poll waits ---------------------------------------------------------------------------


@pytest.mark.parametrize("wait", ["nan", "NaN", "inf", "-1", "1e9", "31", "abc", "", "0x10", "1_0", " 1"])
@pytest.mark.parametrize("route", ["next", "reply"])
def test_a_wait_that_is_not_a_bounded_finite_number_is_400(server: Server, wait: str, route: str) -> None:
    if route == "next":
        url, headers = f"{server.url}/tasks/node-1/next", server.node
    else:
        url, headers = f"{server.url}/tasks/{'0' * 32}/reply", server.researcher
    reply = httpx.get(url, params={"wait": wait}, headers=headers, timeout=10)
    assert reply.status_code == 400
    assert "wait" in reply.json()["error"]


@pytest.mark.parametrize("wait", ["0", "0.05", "1e-2", ".01", "0.0"])
def test_bounded_waits_are_accepted(server: Server, wait: str) -> None:
    url = f"{server.url}/tasks/{'0' * 32}/reply"
    assert httpx.get(url, params={"wait": wait}, headers=server.researcher).status_code == 404
