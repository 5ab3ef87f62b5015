"""A server killed with SIGKILL and restarted loses nothing: tasks in every state, uploads, downloads."""

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from fedpipe.server.auth import TokenStore, bearer
from fedpipe.server.testing import ServerProcess

MIB = 1024 * 1024


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "server"


@pytest.fixture
def creds(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(node-1's headers, researcher r1's headers), issued before the server first starts."""
    store = TokenStore(root)
    node = bearer(store.issue("node", "node-1").token)
    researcher = bearer(store.issue("researcher", "r1").token)
    store.close()
    return node, researcher


@pytest.fixture
def server(root: Path) -> Iterator[ServerProcess]:
    """The server in a child process; restarted, it comes back at the same URL (kept, as nodes do)."""
    srv = ServerProcess(root, lease_seconds=600.0)
    srv.start()
    yield srv
    srv.stop()


def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def test_sigkill_mid_upload_leaves_no_partial_file_after_restart(
    server: ServerProcess, root: Path, creds: tuple[dict[str, str], dict[str, str]]
) -> None:
    url = server.url
    node, _ = creds
    sent = threading.Event()
    content = os.urandom(MIB)

    def slow_body() -> Iterator[bytes]:
        yield b"--zz\r\nContent-Disposition: form-data; name=file\r\n\r\n"
        for _ in range(200):  # far more than is ever sent: the server dies first
            yield content
            sent.set()
            time.sleep(0.05)
        yield b"\r\n--zz--\r\n"

    outcome: list[object] = []

    def upload() -> None:
        headers = {"Content-Type": "multipart/form-data; boundary=zz", **node}
        try:
            outcome.append(httpx.post(f"{url}/upload", content=slow_body(), headers=headers, timeout=60))
        except httpx.HTTPError as err:
            outcome.append(err)

    client = threading.Thread(target=upload)
    client.start()
    parts = root / "tmp"
    eventually(lambda: any(p.stat().st_size > 0 for p in parts.glob("*.part")), "a partial upload on disk")
    server.kill()
    client.join(timeout=60)
    assert isinstance(outcome[0], httpx.HTTPError)  # the client saw the server die, not a success
    assert list(parts.glob("*.part"))  # the dead server left it behind
    server.start()
    assert list(parts.glob("*.part")) == []
    assert [p for p in (root / "objects").rglob("*") if p.is_file()] == []
    reply = httpx.post(f"{url}/upload", files={"file": ("f", content)}, headers=node)
    assert reply.status_code == 201  # and the server works on


def test_sigkill_loses_no_queued_leased_or_answered_task(
    server: ServerProcess, creds: tuple[dict[str, str], dict[str, str]]
) -> None:
    url = server.url
    node, researcher = creds
    ids = [
        httpx.post(f"{url}/tasks/node-1", json={"request": {"n": n}}, headers=researcher).json()["task_id"]
        for n in range(3)
    ]
    poll = lambda: httpx.get(f"{url}/tasks/node-1/next", headers=node)  # noqa: E731
    answered = poll().json()
    reply = {"lease_id": answered["lease_id"], "reply": {"success": True, "n": 0}}
    assert httpx.post(f"{url}/tasks/{ids[0]}/reply", json=reply, headers=node).status_code == 200
    leased = poll().json()
    assert leased["task_id"] == ids[1]

    server.kill()
    server.start()

    assert httpx.get(f"{url}/tasks/{ids[0]}/reply", headers=researcher).json() == {
        "success": True,
        "n": 0,
    }
    assert httpx.get(f"{url}/tasks/{ids[1]}/reply", headers=researcher).status_code == 204
    queued = poll().json()
    assert (queued["task_id"], queued["delivery"], queued["request"]) == (ids[2], 1, {"n": 2})
    assert poll().status_code == 204  # the leased one is not redelivered while its lease lasts
    renew = httpx.post(f"{url}/tasks/{ids[1]}/lease", json={"lease_id": leased["lease_id"]}, headers=node)
    assert renew.status_code == 200
    reply = {"lease_id": leased["lease_id"], "reply": {"success": True, "n": 1}}
    assert httpx.post(f"{url}/tasks/{ids[1]}/reply", json=reply, headers=node).status_code == 200
    assert httpx.get(f"{url}/tasks/{ids[1]}/reply", headers=researcher).json() == {
        "success": True,
        "n": 1,
    }
    assert poll().status_code == 204
    nodes = httpx.get(f"{url}/nodes", headers=researcher).json()["nodes"]
    assert set(nodes) == {"node-1"}


def test_a_fresh_poll_after_the_restart_of_both_hands_the_leased_task_back(
    server: ServerProcess, creds: tuple[dict[str, str], dict[str, str]]
) -> None:
    url = server.url
    node, researcher = creds
    task_id = httpx.post(f"{url}/tasks/node-1", json={"request": {}}, headers=researcher).json()["task_id"]
    first = httpx.get(f"{url}/tasks/node-1/next", headers=node).json()
    server.kill()
    server.start()
    again = httpx.get(f"{url}/tasks/node-1/next", params={"fresh": "1"}, headers=node).json()
    assert (again["task_id"], again["delivery"]) == (task_id, 2)
    assert again["lease_id"] != first["lease_id"]


def test_sigkill_mid_download_then_the_download_resumes_to_the_whole_file(
    server: ServerProcess, creds: tuple[dict[str, str], dict[str, str]]
) -> None:
    url = server.url
    node, _ = creds
    content = os.urandom(48 * MIB)
    body = httpx.post(f"{url}/upload", files={"file": ("f", content)}, headers=node, timeout=60).json()
    path = f"/files/{body['id']}"
    got = bytearray()
    with httpx.stream("GET", url + path, headers=node, timeout=60) as response:
        assert response.status_code == 200
        etag = response.headers["etag"]
        stream = response.iter_bytes(256 * 1024)
        while len(got) < 4 * MIB:
            got += next(stream)
        server.kill()

        def read_the_rest() -> None:
            for chunk in stream:
                got.extend(chunk)

        with pytest.raises(httpx.HTTPError):
            read_the_rest()
    assert 0 < len(got) < len(content)
    server.start()
    rest = httpx.get(
        url + path, headers={"Range": f"bytes={len(got)}-", "If-Range": etag, **node}, timeout=60
    )
    assert rest.status_code == 206
    whole = bytes(got) + rest.content
    assert hashlib.sha256(whole).hexdigest() == body["sha256"]
