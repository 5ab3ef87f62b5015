"""Every server route against every kind of credential: the exact status, and never a detail in the body."""

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from attrs import frozen

from fedpipe.server import create_app
from fedpipe.server.auth import TokenStore, bearer, parse_token
from fedpipe.server.tasks import TaskBoard
from fedpipe.server.testing import running_app

UNAUTHORIZED = {"error": "unauthorized"}
FORBIDDEN = {"error": "forbidden"}


@frozen
class World:
    root: Path
    url: str
    board: TaskBoard
    tokens: TokenStore
    creds: dict[str, dict[str, str]]
    blob_id: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("auth") / "server"
    app = create_app(root, max_bytes=1 << 20)
    tokens: TokenStore = app.state.tokens
    node1, node2 = tokens.issue("node", "node-1"), tokens.issue("node", "node-2")
    researcher = tokens.issue("researcher", "r1")
    revoked = tokens.issue("node", "node-1")
    assert tokens.revoke(revoked.token_id)
    token_id, secret = parse_token(node1.token) or ("", "")
    wrong_secret = f"fp1.{token_id}.{'A' * 43 if secret != 'A' * 43 else 'B' * 43}"
    creds = {
        "none": {},
        "malformed": {"Authorization": "Bearer not-a-token"},
        "not bearer": {"Authorization": f"Basic {node1.token}"},
        "wrong secret": bearer(wrong_secret),
        "unknown id": bearer(f"fp1.{'0' * 16}.{'A' * 43}"),
        "revoked": bearer(revoked.token),
        "other node": bearer(node2.token),
        "researcher": bearer(researcher.token),
        "node": bearer(node1.token),
    }
    with running_app(app) as url:
        blob = httpx.post(f"{url}/upload", files={"file": ("f", b"content")}, headers=creds["node"])
        yield World(
            root=root, url=url, board=app.state.board, tokens=tokens, creds=creds, blob_id=blob.json()["id"]
        )


def leased(world: World) -> tuple[str, str]:
    """A new task for node-1 posted by r1 and delivered to node-1: (task_id, lease_id)."""
    world.board.post("r1", "node-1", b'{"job_id":"job-1"}', "job-1")
    delivery = world.board.take("node-1")
    assert delivery is not None
    return delivery.task_id, delivery.lease_id


def answered(world: World) -> str:
    task_id, lease_id = leased(world)
    assert world.board.answer("node-1", task_id, lease_id, b'{"success":true}') == "ok"
    return task_id


Request = tuple[str, str, dict[str, Any]]


@frozen
class Route:
    name: str
    who: str  # "node" (node-1 itself), "any" (any node or researcher), "researcher"
    ok: int
    request: Callable[[World], Request]


def next_request(world: World) -> Request:
    world.board.post("r1", "node-1", b"{}", None)  # something to deliver
    return "GET", "/tasks/node-1/next", {}


def renew_request(world: World) -> Request:
    task_id, lease_id = leased(world)
    return "POST", f"/tasks/{task_id}/lease", {"json": {"lease_id": lease_id}}


def reply_request(world: World) -> Request:
    task_id, lease_id = leased(world)
    return "POST", f"/tasks/{task_id}/reply", {"json": {"lease_id": lease_id, "reply": {}}}


EVENT = {"node_id": "node-1", "job_id": "job-1", "metric": {}}
ROUTES = [
    Route("upload", "any", 201, lambda w: ("POST", "/upload", {"files": {"file": ("f", b"x")}})),
    Route("upload/", "any", 201, lambda w: ("POST", "/upload/", {"files": {"file": ("f", b"y")}})),
    Route("download", "any", 200, lambda w: ("GET", f"/files/{w.blob_id}", {})),
    Route("head", "any", 200, lambda w: ("HEAD", f"/files/{w.blob_id}", {})),
    Route("post event", "node", 204, lambda w: ("POST", "/monitor", {"json": EVENT})),
    Route("list events", "researcher", 200, lambda w: ("GET", "/monitor", {"params": {"job_id": "job-1"}})),
    Route("post task", "researcher", 201, lambda w: ("POST", "/tasks/node-1", {"json": {"request": {}}})),
    Route("next", "node", 200, next_request),
    Route("nodes", "researcher", 200, lambda w: ("GET", "/nodes", {})),
    Route("renew", "node", 200, renew_request),
    Route("reply", "node", 200, reply_request),
    Route("read reply", "researcher", 200, lambda w: ("GET", f"/tasks/{answered(w)}/reply", {})),
]

CREDENTIALS = ["none", "malformed", "not bearer", "wrong secret", "unknown id", "revoked", "other node",
               "researcher", "node"]  # fmt: skip


def expected(route: Route, cred: str) -> int:
    if cred in ("none", "malformed", "not bearer", "wrong secret", "unknown id", "revoked"):
        return 401
    if route.who == "any":
        return route.ok
    if route.who == "researcher":
        return route.ok if cred == "researcher" else 403
    return route.ok if cred == "node" else 403  # node-1's own routes: node-2 and researchers refused


@pytest.mark.parametrize("cred", CREDENTIALS)
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_every_route_answers_each_credential_exactly(world: World, route: Route, cred: str) -> None:
    method, path, kwargs = route.request(world)
    reply = httpx.request(method, world.url + path, headers=world.creds[cred], **kwargs)
    status = expected(route, cred)
    assert reply.status_code == status
    if method == "HEAD":
        return
    if status == 401:
        assert reply.json() == UNAUTHORIZED
        assert reply.headers["www-authenticate"] == "Bearer"
    elif status == 403:
        assert reply.json() == FORBIDDEN


def test_health_needs_no_credential(world: World) -> None:
    assert httpx.get(f"{world.url}/health").json() == {"status": "ok"}


def test_tokens_issued_and_revoked_by_another_store_take_effect_on_the_next_request(world: World) -> None:
    operator = TokenStore(world.root)  # what `fedpipe tokens issue|revoke` opens while the server runs
    issued = operator.issue("researcher", "short-lived")
    assert httpx.get(f"{world.url}/nodes", headers=bearer(issued.token)).status_code == 200
    assert operator.revoke(issued.token_id)
    assert httpx.get(f"{world.url}/nodes", headers=bearer(issued.token)).status_code == 401
    operator.close()


def test_tokens_are_stored_hashed(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    issued = store.issue("node", "node-1")
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("board.sqlite*"))
    _, secret = parse_token(issued.token) or ("", "")
    assert secret.encode() not in raw
    assert hashlib.sha256(secret.encode()).digest() in raw


@pytest.mark.parametrize(
    ("role", "subject"),
    [("admin", "x"), ("node", ""), ("node", "a/b"), ("node", "x" * 129), ("researcher", "é")],
)
def test_tokens_are_issued_only_for_valid_roles_and_subjects(tmp_path: Path, role: str, subject: str) -> None:
    store = TokenStore(tmp_path)
    with pytest.raises(ValueError):
        store.issue(role, subject)
    assert store.list() == []
    store.close()


def test_listing_shows_revocations_and_never_a_secret(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    kept, gone = store.issue("node", "n1"), store.issue("researcher", "r1")
    assert store.revoke(gone.token_id)
    assert not store.revoke(gone.token_id)
    assert not store.revoke("0" * 16)
    listed = {t.token_id: t for t in store.list()}
    assert listed[kept.token_id].revoked is None
    assert listed[gone.token_id].revoked is not None
    assert (listed[kept.token_id].role, listed[kept.token_id].subject) == ("node", "n1")
    assert all(kept.token.split(".")[2] not in repr(t) for t in listed.values())
    store.close()


def test_another_researcher_cannot_read_the_reply_of_a_task(world: World) -> None:
    other = bearer(world.tokens.issue("researcher", "r2").token)
    task_id = answered(world)
    reply = httpx.get(f"{world.url}/tasks/{task_id}/reply", headers=other)
    assert reply.status_code == 404  # as for a task that does not exist: no oracle
    assert httpx.get(f"{world.url}/tasks/{'0' * 32}/reply", headers=other).status_code == 404
    assert (
        httpx.get(f"{world.url}/tasks/{task_id}/reply", headers=world.creds["researcher"]).status_code == 200
    )


def test_a_reply_from_a_node_without_the_lease_is_refused_and_unseen(world: World) -> None:
    task_id, lease_id = leased(world)
    body = {"lease_id": lease_id, "reply": {"success": True, "msg": "forged"}}
    stolen = httpx.post(f"{world.url}/tasks/{task_id}/reply", json=body, headers=world.creds["other node"])
    assert stolen.status_code == 403
    assert stolen.json() == FORBIDDEN
    guessed = httpx.post(
        f"{world.url}/tasks/{task_id}/reply", json={**body, "lease_id": "guess"}, headers=world.creds["node"]
    )
    assert guessed.status_code == 409
    read = httpx.get(f"{world.url}/tasks/{task_id}/reply", headers=world.creds["researcher"])
    assert read.status_code == 204
    assert world.board.state_of(task_id) == "leased"


def test_a_task_id_the_node_does_not_hold_is_403_whether_or_not_it_exists(world: World) -> None:
    theirs = world.board.post("r1", "node-2", b"{}", None)
    for task_id in (theirs, "0" * 32, "%2E%2E", "x" * 300):
        reply = httpx.post(
            f"{world.url}/tasks/{task_id}/lease", json={"lease_id": "l"}, headers=world.creds["node"]
        )
        assert reply.status_code == 403
        assert reply.json() == FORBIDDEN


def test_a_node_cannot_poll_another_nodes_queue(world: World) -> None:
    world.board.post("r1", "node-3", b'{"secret":"for node-3"}', None)
    reply = httpx.get(f"{world.url}/tasks/node-3/next", headers=world.creds["node"])
    assert reply.status_code == 403
    assert reply.json() == FORBIDDEN
    node3 = bearer(world.tokens.issue("node", "node-3").token)
    assert httpx.get(f"{world.url}/tasks/node-3/next", headers=node3).json()["request"] == {
        "secret": "for node-3"
    }
