"""The server on loopback: content addressing, ranges, limits, safe names, monitor, TLS, tokens."""

import asyncio
import hashlib
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.responses import JSONResponse
from starlette.routing import Route

from fedpipe.server import create_app
from fedpipe.server.auth import TokenStore, bearer
from fedpipe.server.multipart import MultipartError, stream_file_part
from fedpipe.server.testing import ServerProcess, running_app, running_server


@pytest.fixture
def auth(node_headers: dict[str, str]) -> dict[str, str]:
    return node_headers


def upload(server: str, content: bytes, name: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{server}/upload", files={"file": (name, content)}, headers=headers)


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_upload_is_content_addressed(server: str, server_root: Path, auth: dict[str, str]) -> None:
    first = upload(server, b"same bytes", "a.bin", auth).json()
    second = upload(server, b"same bytes", "b.bin", auth).json()
    assert first == second
    assert first["id"] == hashlib.sha256(b"same bytes").hexdigest()
    assert [p.name for p in stored_files(server_root / "objects")] == [first["id"]]


def test_download_carries_the_digest_headers(server: str, auth: dict[str, str]) -> None:
    body = upload(server, b"hello", "f.bin", auth).json()
    reply = httpx.get(body["file"], headers=auth)
    assert reply.content == b"hello"
    assert reply.headers["x-content-sha256"] == body["sha256"]
    assert reply.headers["digest"].startswith("sha-256=")
    assert reply.headers["etag"] == f'"{body["sha256"]}"'
    assert reply.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize(
    ("range_header", "status", "expected"),
    [
        ("bytes=2-4", 206, b"234"),
        ("bytes=7-", 206, b"789"),
        ("bytes=-2", 206, b"89"),
        ("bytes=20-", 416, None),
    ],
)
def test_range_requests(
    server: str, auth: dict[str, str], range_header: str, status: int, expected: bytes | None
) -> None:
    url = upload(server, b"0123456789", "f.bin", auth).json()["file"]
    reply = httpx.get(url, headers={"Range": range_header, **auth})
    assert reply.status_code == status
    if expected is not None:
        assert reply.content == expected


def test_if_range_with_a_stale_etag_sends_the_whole_file(server: str, auth: dict[str, str]) -> None:
    url = upload(server, b"0123456789", "f.bin", auth).json()["file"]
    reply = httpx.get(url, headers={"Range": "bytes=2-4", "If-Range": '"stale"', **auth})
    assert reply.status_code == 200
    assert reply.content == b"0123456789"


@pytest.mark.parametrize(
    "path",
    [
        "/files/..%2F..%2Fetc%2Fpasswd",
        "/files/" + "A" * 64,
        "/files/" + "a" * 63,
        "/files/tmp",
        "/files/%2e%2e",
    ],
)
def test_only_well_formed_ids_are_served(server: str, auth: dict[str, str], path: str) -> None:
    assert httpx.get(server + path, headers=auth).status_code == 404


def test_client_file_names_never_reach_the_disk(server: str, server_root: Path, auth: dict[str, str]) -> None:
    upload(server, b"x", "../../../escape.txt", auth)
    assert all("escape" not in p.name for p in server_root.parent.rglob("*"))


def test_upload_over_the_limit_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "ex"
    with running_server(root, max_bytes=1000) as url:
        store = TokenStore(root)
        auth = bearer(store.issue("node", "node-1").token)
        store.close()
        assert upload(url, b"x" * 1000, "f.bin", auth).status_code == 201
        # hide the length so that the limit is enforced while streaming, not from the header
        parts = [
            b"--zz\r\nContent-Disposition: form-data; name=file\r\n\r\n",
            b"x" * 600,
            b"y" * 600,
            b"\r\n--zz--\r\n",
        ]
        headers = {"Content-Type": "multipart/form-data; boundary=zz", **auth}
        reply = httpx.post(f"{url}/upload", headers=headers, content=iter(parts))
        assert reply.status_code == 413
        assert upload(url, b"x" * 200_000, "f.bin", auth).status_code == 413
    assert len(stored_files(root / "objects")) == 1
    assert list((root / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"Content-Type": "application/json"}, b"{}"),
        (
            {"Content-Type": "multipart/form-data; boundary=zz"},
            b"--zz\r\nContent-Disposition: form-data; name=other\r\n\r\nv\r\n--zz--\r\n",
        ),
        (
            {"Content-Type": "multipart/form-data; boundary=zz"},
            b"--zz\r\nContent-Disposition: form-data; name=file\r\n\r\ncut",
        ),
        ({"Content-Type": "multipart/form-data; boundary=zz"}, b"no boundary here"),
    ],
    ids=["not multipart", "no file part", "truncated", "no delimiter"],
)
def test_malformed_uploads_are_400_and_leave_nothing(
    server: str, server_root: Path, auth: dict[str, str], headers: dict[str, str], body: bytes
) -> None:
    assert httpx.post(f"{server}/upload", headers={**headers, **auth}, content=body).status_code == 400
    assert stored_files(server_root / "objects") == []
    assert stored_files(server_root / "tmp") == []


def test_monitor_events_are_kept_in_order(
    server: str, node_headers: dict[str, str], researcher_headers: dict[str, str]
) -> None:
    task = {"request": {"job_id": "job-1"}}
    assert httpx.post(f"{server}/tasks/node-1", json=task, headers=researcher_headers).status_code == 201
    for i in range(3):
        event = {"node_id": "node-1", "job_id": "job-1", "iteration": i}
        assert httpx.post(f"{server}/monitor", json=event, headers=node_headers).status_code == 204
    assert httpx.post(f"{server}/monitor", content=b"not json", headers=node_headers).status_code == 400
    assert httpx.post(f"{server}/monitor", json=[1], headers=node_headers).status_code == 400
    got = httpx.get(f"{server}/monitor", headers=researcher_headers).json()
    assert [e["iteration"] for e in got] == [0, 1, 2]
    assert (
        httpx.get(f"{server}/monitor", params={"job_id": "job-1"}, headers=researcher_headers).json() == got
    )


def test_a_researcher_reads_only_the_events_of_its_own_jobs(
    server: str, token_store: TokenStore, node_headers: dict[str, str], researcher_headers: dict[str, str]
) -> None:
    other = bearer(token_store.issue("researcher", "someone-else").token)
    httpx.post(f"{server}/tasks/node-1", json={"request": {"job_id": "mine"}}, headers=researcher_headers)
    httpx.post(f"{server}/tasks/node-1", json={"request": {"job_id": "theirs"}}, headers=other)
    for job in ("mine", "theirs"):
        event = {"node_id": "node-1", "job_id": job}
        assert httpx.post(f"{server}/monitor", json=event, headers=node_headers).status_code == 204
    assert [e["job_id"] for e in httpx.get(f"{server}/monitor", headers=researcher_headers).json()] == [
        "mine"
    ]
    asked = httpx.get(f"{server}/monitor", params={"job_id": "theirs"}, headers=researcher_headers)
    assert asked.status_code == 200
    assert asked.json() == []


def test_a_node_posts_events_only_in_its_own_name(server: str, node_headers: dict[str, str]) -> None:
    event = {"node_id": "node-2", "job_id": "job-1"}
    reply = httpx.post(f"{server}/monitor", json=event, headers=node_headers)
    assert reply.status_code == 403
    assert reply.json() == {"error": "forbidden"}


def test_partial_uploads_left_by_a_dead_server_are_removed_at_start(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir(parents=True)
    (tmp_path / "tmp" / "abc.part").write_bytes(b"half an upload")
    (tmp_path / "tmp" / "keep.txt").write_bytes(b"not ours")
    create_app(tmp_path)
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == ["keep.txt"]


def test_one_app_can_be_served_again_with_its_board(tmp_path: Path) -> None:
    app = create_app(tmp_path)
    node = bearer(app.state.tokens.issue("node", "node-1").token)
    researcher = bearer(app.state.tokens.issue("researcher", "r").token)
    with running_app(app) as url:
        httpx.post(f"{url}/tasks/node-1", json={"request": {"n": 1}}, headers=researcher)
    with running_app(app) as url:  # a new event loop: the long poll must not be tied to the old one
        task = httpx.get(f"{url}/tasks/node-1/next", params={"wait": "1"}, headers=node)
        assert task.json()["request"] == {"n": 1}


def test_more_routes_can_be_added(tmp_path: Path) -> None:
    async def tasks(request: object) -> JSONResponse:
        return JSONResponse({"tasks": []})

    with running_app(create_app(tmp_path, routes=[Route("/tasks", tasks)])) as url:
        assert httpx.get(f"{url}/tasks").json() == {"tasks": []}
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}


def test_serve_runs_the_server_until_stopped(tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as srv:  # ``fedpipe.server.serve`` in a child process
        store = TokenStore(tmp_path)  # issued while the server runs, from another process
        auth = bearer(store.issue("researcher", "r").token)
        store.close()
        body = upload(srv.url, b"served", "f.bin", auth).json()
        assert body["file"] == f"http://127.0.0.1:{srv.port}/files/{body['id']}"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{srv.url}/health")


# -- HTTPS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate chain, server key) for 127.0.0.1, made now, offline."""
    trustme = pytest.importorskip("trustme")
    where = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    cert.private_key_pem.write_to_path(str(where / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(where / "cert.pem"))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(where / "cert.pem"), append=True)
    return where / "ca.pem", where / "cert.pem", where / "key.pem"


def test_the_server_serves_https_with_the_given_certificate(
    tmp_path: Path, tls: tuple[Path, Path, Path]
) -> None:
    ca, cert, key = tls
    root = tmp_path / "srv"
    with running_server(root, certfile=cert, keyfile=key) as url:
        assert url.startswith("https://")
        store = TokenStore(root)
        auth = bearer(store.issue("node", "node-1").token)
        store.close()
        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca))) as client:
            assert client.get(f"{url}/health").json() == {"status": "ok"}
            body = client.post(f"{url}/upload", files={"file": ("f", b"secret")}, headers=auth).json()
            assert body["url"].startswith("https://")
            assert client.get(body["url"], headers=auth).content == b"secret"
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA refuses it
            httpx.get(f"{url}/health")
        plain = url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):  # and no plain HTTP is served on that port
            httpx.get(f"{plain}/health", timeout=5)


def test_serve_serves_https_in_its_own_process(tmp_path: Path, tls: tuple[Path, Path, Path]) -> None:
    ca, cert, key = tls
    with ServerProcess(tmp_path, certfile=str(cert), keyfile=str(key)) as srv:
        assert srv.url.startswith("https://")
        assert (
            httpx.get(f"{srv.url}/health", verify=ssl.create_default_context(cafile=str(ca))).status_code
            == 200
        )


def test_https_needs_both_the_certificate_and_the_key(tmp_path: Path, tls: tuple[Path, Path, Path]) -> None:
    _, cert, _ = tls
    with pytest.raises(ValueError, match="both"), running_server(tmp_path, certfile=cert):
        pass


# -- the streaming multipart reader ------------------------------------------------------------


def run_parser(body: bytes, cuts: list[int], boundary: bytes = b"BOUND") -> bytes:
    out = bytearray()

    async def chunks() -> AsyncIterator[bytes]:
        last = 0
        for cut in [*sorted(cuts), len(body)]:
            yield body[last:cut]
            last = cut

    async def main() -> bool:
        return await stream_file_part(chunks(), boundary, "file", lambda view: out.extend(view))

    assert asyncio.run(main())
    return bytes(out)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=8), st.binary(max_size=20))
def test_multipart_reading_is_independent_of_chunking(content: bytes, cuts: list[int], other: bytes) -> None:
    body = (
        b'--BOUND\r\nContent-Disposition: form-data; name="note"\r\n\r\n' + other + b"\r\n"
        b'--BOUND\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n--BOUND--\r\n"
    )
    assert run_parser(body, [c for c in cuts if c <= len(body)]) == content


def test_multipart_content_resembling_the_delimiter_is_kept() -> None:
    content = b"\r\n--BOUN\r\n--BOUNDX" + os.urandom(100)
    body = b"--BOUND\r\nContent-Disposition: form-data; name=file\r\n\r\n" + content + b"\r\n--BOUND--"
    assert content.find(b"\r\n--BOUND\r\n") == -1
    with pytest.raises(MultipartError):
        run_parser(body.replace(b"--BOUND--", b""), [])
    # "\r\n--BOUNDX" does contain the delimiter: a valid writer picks a boundary absent from content
    safe = content.replace(b"--BOUNDX", b"--BOXNDX")
    assert run_parser(body.replace(content, safe), [7, 60]) == safe
