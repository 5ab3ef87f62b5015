"""The task board under hostile input and lost nodes: strict JSON at the door, leases, dead letters, caps."""

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from attrs import define
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpipe.server import create_app
from fedpipe.server.auth import bearer
from fedpipe.server.bodies import MAX_DEPTH
from fedpipe.server.tasks import TaskBoard
from fedpipe.server.testing import running_app

DEAD_MSG = "The node stopped 3 times while running this task; it was set aside."


@define
class Clock:
    """The board's wall clock, moved by the test (leases and retention without sleeping)."""

    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@define
class Board:
    url: str
    board: TaskBoard
    clock: Clock
    node: dict[str, str]
    researcher: dict[str, str]

    def post(self, request: Any, node: str = "node-1") -> httpx.Response:
        return httpx.post(f"{self.url}/tasks/{node}", json={"request": request}, headers=self.researcher)

    def post_raw(self, body: bytes) -> httpx.Response:
        headers = {"Content-Type": "application/json", **self.researcher}
        return httpx.post(f"{self.url}/tasks/node-1", content=body, headers=headers)

    def poll(self, *, fresh: bool = False, wait: float = 0) -> httpx.Response:
        params = {"wait": str(wait), **({"fresh": "1"} if fresh else {})}
        return httpx.get(f"{self.url}/tasks/node-1/next", params=params, headers=self.node, timeout=wait + 10)

    def reply(self, task: dict[str, Any], reply: dict[str, Any]) -> httpx.Response:
        body = {"lease_id": task["lease_id"], "reply": reply}
        return httpx.post(f"{self.url}/tasks/{task['task_id']}/reply", json=body, headers=self.node)

    def renew(self, task: dict[str, Any]) -> httpx.Response:
        body = {"lease_id": task["lease_id"]}
        return httpx.post(f"{self.url}/tasks/{task['task_id']}/lease", json=body, headers=self.node)

    def read(self, task_id: str) -> httpx.Response:
        return httpx.get(f"{self.url}/tasks/{task_id}/reply", headers=self.researcher)


@contextlib.contextmanager
def serve_board(root: Path, clock: Any = None, **options: Any) -> Iterator[Board]:
    """The server over ``root`` (on the test's ``Clock`` unless given one), node-1's and r1's credentials."""
    clock = clock or Clock()
    app = create_app(root, clock=clock, **{"lease_seconds": 60.0, **options})
    node = bearer(app.state.tokens.issue("node", "node-1").token)
    researcher = bearer(app.state.tokens.issue("researcher", "r1").token)
    with running_app(app) as url:
        yield Board(url=url, board=app.state.board, clock=clock, node=node, researcher=researcher)


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Board]:
    with serve_board(tmp_path / "server") as b:
        yield b


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    with serve_board(tmp_path_factory.mktemp("board") / "server") as b:
        yield b


def served_strictly(content: bytes) -> Any:
    """Parse what the server sent as any strict JSON reader would (UTF-8, no NaN, no lone surrogate)."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} served")

    value = json.loads(content.decode("utf-8"), parse_constant=refuse)
    json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    return value


# -- strict JSON at the door -------------------------------------------------------------------

NESTED = '{"request": {"a": ' + "[" * 1000 + "]" * 1000 + "}}"
JUST_TOO_DEEP = '{"request": {"a": ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}}"
BAD_BODIES = {
    "NaN": b'{"request": {"loss": NaN}}',
    "Infinity": b'{"request": {"lr": Infinity}}',
    "-Infinity": b'{"request": {"lr": -Infinity}}',
    "overflowing float": b'{"request": {"lr": 1e400}}',
    "lone surrogate value": b'{"request": {"researcher_id": "\\ud800"}}',
    "lone surrogate key": b'{"request": {"\\udfff": 1}}',
    "surrogate bytes": b'{"request": {"a": "\xed\xa0\x80"}}',
    "invalid UTF-8": b'{"request": {"a": "\xff\xfe"}}',
    "1000 deep": NESTED.encode(),
    "one too deep": JUST_TOO_DEEP.encode(),
    "not JSON": b"{request",
    "empty": b"",
    "array": b"[1, 2]",
    "request not an object": b'{"request": [1]}',
    "no request": b'{"other": {}}',
    "huge integer text": b'{"request": {"n": ' + b"9" * 5000 + b"}}",
    "BOM": b'\xef\xbb\xbf{"request": {}}',
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_non_standard_json_is_refused_at_the_door_and_nothing_stored(shared: Board, body: bytes) -> None:
    before = shared.board.stored_bytes
    reply = shared.post_raw(body)
    assert reply.status_code == 400
    assert set(reply.json()) == {"error"}
    assert shared.board.stored_bytes == before
    assert shared.poll().status_code == 204


def test_the_deepest_allowed_nesting_is_stored_and_served(board: Board) -> None:
    deepest = {"a": json.loads("[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2))}  # body, request, a: 64 in all
    assert board.post(deepest).status_code == 201
    assert served_strictly(board.poll().content)["request"] == deepest


def test_a_paired_surrogate_escape_is_a_character_not_a_lone_surrogate(board: Board) -> None:
    assert board.post_raw(b'{"request": {"emoji": "\\ud83d\\ude00"}}').status_code == 201
    assert served_strictly(board.poll().content)["request"] == {"emoji": "\U0001f600"}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(st.characters(codec=None, exclude_categories=()), max_size=4), children, max_size=4
        )
    ),
    max_leaves=20,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values, ascii_only=st.booleans())
def test_whatever_the_board_accepts_it_serves_back_as_valid_json(
    shared: Board, value: Any, ascii_only: bool
) -> None:
    body = json.dumps({"request": {"v": value}}, ensure_ascii=ascii_only, allow_nan=True)
    raw = body.encode("utf-8", "surrogatepass")
    posted = shared.post_raw(raw)
    assert posted.status_code in (201, 400)
    if posted.status_code == 400:
        return
    task = shared.poll()
    assert task.status_code == 200
    served = served_strictly(task.content)
    assert served["task_id"] == posted.json()["task_id"]
    assert served["request"] == json.loads(body)["request"]
    assert shared.reply(served, {"echo": served["request"]}).status_code == 200
    read = shared.read(served["task_id"])
    assert served_strictly(read.content) == {"echo": served["request"]}


# -- leases ------------------------------------------------------------------------------------


def test_a_task_goes_to_one_poller_only(board: Board) -> None:
    got: list[int] = []

    def poll() -> None:
        got.append(board.poll(wait=2).status_code)

    pollers = [threading.Thread(target=poll) for _ in range(3)]
    for t in pollers:
        t.start()
    assert board.post({"n": 1}).status_code == 201
    for t in pollers:
        t.join()
    assert sorted(got) == [200, 204, 204]


def test_a_task_is_not_leased_to_a_poller_that_hung_up(board: Board) -> None:
    with pytest.raises(httpx.ReadTimeout):  # a node killed (or cut off) in the middle of a long poll
        httpx.get(f"{board.url}/tasks/node-1/next", params={"wait": "20"}, headers=board.node, timeout=0.5)
    task_id = board.post({"n": 1}).json()["task_id"]  # wakes the abandoned poll
    task = board.poll(fresh=True).json()
    assert (task["task_id"], task["delivery"]) == (task_id, 1)


def test_an_expired_lease_redelivers_the_task_exactly_once(board: Board) -> None:
    task_id = board.post({"n": 1}).json()["task_id"]
    first = board.poll().json()
    assert (first["task_id"], first["delivery"], first["lease_seconds"]) == (task_id, 1, 60.0)
    board.clock.now += 59
    assert board.poll().status_code == 204  # still leased
    board.clock.now += 2
    second = board.poll().json()
    assert (second["task_id"], second["delivery"]) == (task_id, 2)
    assert second["lease_id"] != first["lease_id"]
    assert board.poll().status_code == 204  # once, not to every poller
    late = board.reply(first, {"success": True, "from": "the first"})
    assert late.status_code == 409
    assert late.json() == {"error": "lease lost"}
    assert board.reply(second, {"success": True, "from": "the second"}).status_code == 200
    assert board.read(task_id).json() == {"success": True, "from": "the second"}
    assert board.reply(second, {"again": 1}).status_code == 409  # the first valid reply wins


def test_renewal_keeps_the_lease(board: Board) -> None:
    task_id = board.post({"n": 1}).json()["task_id"]
    task = board.poll().json()
    for _ in range(5):
        board.clock.now += 45
        renewed = board.renew(task)
        assert renewed.status_code == 200
        assert renewed.json() == {"lease_seconds": 60.0}
        assert board.poll().status_code == 204
    assert board.reply(task, {"ok": True}).status_code == 200
    assert board.read(task_id).json() == {"ok": True}
    assert board.renew(task).status_code == 409  # answered: nothing left to renew


def test_a_lease_renewed_too_late_is_lost(board: Board) -> None:
    board.post({"n": 1})
    task = board.poll().json()
    board.clock.now += 61
    assert board.renew(task).status_code == 409


def test_a_fresh_poll_ends_the_leases_of_the_dead_process(board: Board) -> None:
    first_id = board.post({"n": 1}).json()["task_id"]
    board.post({"n": 2})
    old = board.poll().json()
    again = board.poll(fresh=True).json()
    assert (again["task_id"], again["delivery"]) == (first_id, 2)  # back at the front of the queue
    assert board.reply(old, {"stale": True}).status_code == 409
    assert board.reply(again, {"ok": True}).status_code == 200
    assert board.poll().json()["request"] == {"n": 2}


def test_a_task_that_kills_its_node_three_times_is_dead_lettered_and_the_queue_drains(board: Board) -> None:
    poison = {"researcher_id": "r1", "job_id": "job-9", "dataset_id": "ds", "node_id": 7, "x": 1}
    poison_id = board.post(poison).json()["task_id"]
    good_id = board.post({"n": "good"}).json()["task_id"]
    deliveries = [board.poll(fresh=True).json() for _ in range(3)]  # each poll: a new node process
    assert [(d["task_id"], d["delivery"]) for d in deliveries] == [
        (poison_id, 1),
        (poison_id, 2),
        (poison_id, 3),
    ]
    fourth = board.poll(fresh=True).json()
    assert fourth["task_id"] == good_id
    assert board.board.state_of(poison_id) == "dead"
    assert board.read(poison_id).json() == {
        "protocol_version": "1",
        "researcher_id": "r1",
        "job_id": "job-9",
        "state_id": None,
        "success": False,
        "node_id": "node-1",  # the node it was queued for, not what the request claims
        "dataset_id": "ds",
        "params_url": "",
        "timing": {},
        "sample_size": None,
        "msg": DEAD_MSG,
        "command": "train",
    }
    assert board.reply(deliveries[-1], {"late": True}).status_code == 409
    assert board.read(poison_id).json()["msg"] == DEAD_MSG


def test_expiry_counts_towards_the_dead_letter_too(board: Board) -> None:
    task_id = board.post({"n": 1}).json()["task_id"]
    for _ in range(3):
        assert board.poll().json()["task_id"] == task_id
        board.clock.now += 61
    assert board.poll().status_code == 204
    assert board.read(task_id).json()["msg"] == DEAD_MSG


def test_a_waiting_researcher_is_woken_by_the_dead_letter(board: Board) -> None:
    task_id = board.post({"n": 1}).json()["task_id"]
    for _ in range(3):
        board.poll(fresh=True)
    got: list[httpx.Response] = []
    waiter = threading.Thread(
        target=lambda: got.append(
            httpx.get(
                f"{board.url}/tasks/{task_id}/reply",
                params={"wait": "20"},
                headers=board.researcher,
                timeout=30,
            )
        )
    )
    waiter.start()
    board.clock.now += 61
    board.poll()  # any board operation ends the expired lease, and wakes the waiting researcher
    waiter.join()
    assert got[0].status_code == 200
    assert got[0].json()["msg"] == DEAD_MSG


def test_a_lease_ends_on_time_with_no_other_request(tmp_path: Path) -> None:
    with serve_board(tmp_path, clock=time.time, lease_seconds=0.3, max_deliveries=1) as b:
        task_id = b.post({"n": 1}).json()["task_id"]
        assert b.poll().status_code == 200
        # the long poll itself wakes when the lease ends: nothing else touches the board meanwhile
        read = httpx.get(
            f"{b.url}/tasks/{task_id}/reply", params={"wait": "20"}, headers=b.researcher, timeout=30
        )
        assert read.status_code == 200
        assert read.json()["msg"] == "The node stopped 1 time while running this task; it was set aside."


# -- caps and retention ------------------------------------------------------------------------


def test_a_full_node_queue_is_429_and_other_nodes_are_unaffected(tmp_path: Path) -> None:
    with serve_board(tmp_path, max_tasks_per_node=3) as b:
        assert [b.post({"i": i}).status_code for i in range(4)] == [201, 201, 201, 429]
        assert "queue is full" in b.post({"i": 4}).json()["error"]
        assert b.post({"i": 0}, node="node-2").status_code == 201
        task = b.poll().json()
        assert b.post({"i": 5}).status_code == 429  # a leased task still holds its place
        assert b.reply(task, {}).status_code == 200
        assert b.post({"i": 6}).status_code == 201


def test_the_board_is_bounded_in_bytes(tmp_path: Path) -> None:
    with serve_board(tmp_path, max_board_bytes=20_000, reply_retention_s=100) as b:
        big = {"blob": "x" * 5000}
        codes = [b.post(big, node=f"n{i}").status_code for i in range(5)]
        assert codes[:3] == [201, 201, 201]
        assert codes[-1] == 429
        assert b.board.stored_bytes <= 20_000


def test_answered_tasks_are_purged_after_the_retention(tmp_path: Path) -> None:
    with serve_board(tmp_path, reply_retention_s=100) as b:
        task_id = b.post({"n": 1}).json()["task_id"]
        task = b.poll().json()
        b.reply(task, {"ok": True})
        b.clock.now += 99
        assert b.read(task_id).status_code == 200
        b.clock.now += 2
        assert b.read(task_id).status_code == 404
        assert b.board.stored_bytes == 0
        assert b.board.state_of(task_id) is None


def test_unanswered_tasks_are_never_purged(tmp_path: Path) -> None:
    with serve_board(tmp_path, reply_retention_s=100, lease_seconds=1e5) as b:
        queued = b.post({"n": 1}).json()["task_id"]
        b.post({"n": 2})
        b.poll()
        b.clock.now += 10_000
        assert b.read(queued).status_code == 204
