"""The file-exchange server on loopback: content addressing, ranges, limits, safe names, monitor."""

import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.responses import JSONResponse
from starlette.routing import Route

from fedpipe.server import create_app
from fedpipe.server.multipart import MultipartError, stream_file_part
from fedpipe.server.testing import running_app, running_server


def upload(server: str, content: bytes, name: str = "f.bin") -> httpx.Response:
    return httpx.post(f"{server}/upload", files={"file": (name, content)})


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_upload_is_content_addressed(server: str, server_root: Path) -> None:
    first = upload(server, b"same bytes", "a.bin").json()
    second = upload(server, b"same bytes", "b.bin").json()
    assert first == second
    assert first["id"] == hashlib.sha256(b"same bytes").hexdigest()
    assert [p.name for p in stored_files(server_root)] == [first["id"]]


def test_download_carries_the_digest_headers(server: str) -> None:
    body = upload(server, b"hello").json()
    reply = httpx.get(body["file"])
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
def test_range_requests(server: str, range_header: str, status: int, expected: bytes | None) -> None:
    url = upload(server, b"0123456789").json()["file"]
    reply = httpx.get(url, headers={"Range": range_header})
    assert reply.status_code == status
    if expected is not None:
        assert reply.content == expected


def test_if_range_with_a_stale_etag_sends_the_whole_file(server: str) -> None:
    url = upload(server, b"0123456789").json()["file"]
    reply = httpx.get(url, headers={"Range": "bytes=2-4", "If-Range": '"stale"'})
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
def test_only_well_formed_ids_are_served(server: str, path: str) -> None:
    assert httpx.get(server + path).status_code == 404


def test_client_file_names_never_reach_the_disk(server: str, server_root: Path) -> None:
    upload(server, b"x", "../../../escape.txt")
    assert all("escape" not in p.name for p in server_root.parent.rglob("*"))


def test_upload_over_the_limit_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "ex"
    with running_server(root, max_bytes=1000) as url:
        assert upload(url, b"x" * 1000).status_code == 201
        # hide the length so that the limit is enforced while streaming, not from the header
        parts = [
            b"--zz\r\nContent-Disposition: form-data; name=file\r\n\r\n",
            b"x" * 600,
            b"y" * 600,
            b"\r\n--zz--\r\n",
        ]
        headers = {"Content-Type": "multipart/form-data; boundary=zz"}
        reply = httpx.post(f"{url}/upload", headers=headers, content=iter(parts))
        assert reply.status_code == 413
        assert upload(url, b"x" * 200_000).status_code == 413
    assert len(stored_files(root)) == 1


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
    server: str, server_root: Path, headers: dict[str, str], body: bytes
) -> None:
    assert httpx.post(f"{server}/upload", headers=headers, content=body).status_code == 400
    assert stored_files(server_root) == []


def test_monitor_events_are_kept_in_order(server: str) -> None:
    for i in range(3):
        assert httpx.post(f"{server}/monitor", json={"iteration": i}).status_code == 204
    assert httpx.post(f"{server}/monitor", content=b"not json").status_code == 400
    assert httpx.post(f"{server}/monitor", json=[1]).status_code == 400
    assert [e["iteration"] for e in httpx.get(f"{server}/monitor").json()] == [0, 1, 2]


def test_more_routes_can_be_added(tmp_path: Path) -> None:
    async def tasks(request: object) -> JSONResponse:
        return JSONResponse({"tasks": []})

    with running_app(create_app(tmp_path, routes=[Route("/tasks", tasks)])) as url:
        assert httpx.get(f"{url}/tasks").json() == {"tasks": []}
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}


def test_serve_runs_the_exchange_until_stopped(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = f"from fedpipe.server import serve; serve('127.0.0.1', {port}, {str(tmp_path)!r}, log_level='warning')"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path.cwd())
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        body = upload(f"http://127.0.0.1:{port}", b"served").json()
        assert body["file"].startswith(f"http://127.0.0.1:{port}/files/")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


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
