"""The node's task client against the real board, and the agent's reply delivery over a fake client."""

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from attrs import define, field

from fedpipe.adapters.task_client import (
    HttpTaskClient,
    ReplyOutcome,
    Task,
    TaskBoardRefused,
    TaskBoardUnavailable,
)
from fedpipe.bootstrap import _Backoff, deliver_reply
from fedpipe.reply import TrainReply
from fedpipe.researcher.board import BoardClient
from fedpipe.server import create_app
from fedpipe.server.auth import TokenStore
from fedpipe.server.testing import running_app

REQUEST = {"researcher_id": "r", "job_id": "j"}


@define
class Board:
    url: str
    researcher: BoardClient
    node_token: str
    other_token: str


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Board]:
    store = TokenStore(tmp_path)
    researcher = store.issue("researcher", "r").token
    node_token = store.issue("node", "node-1").token
    other_token = store.issue("node", "node-2").token
    store.close()
    with running_app(create_app(tmp_path, lease_seconds=1.0)) as url:
        client = BoardClient(url, token=researcher)
        yield Board(url=url, researcher=client, node_token=node_token, other_token=other_token)
        client.close()


def _client(board: Board, token: str | None = None, node_id: str = "node-1") -> HttpTaskClient:
    return HttpTaskClient(board.url, node_id, token=token or board.node_token, poll_wait=0.5)


def test_a_task_is_leased_renewed_and_answered_once(board: Board) -> None:
    """next_task gives the lease; renew keeps it past its length; the reply is accepted once."""
    task_id = board.researcher.post_task("node-1", REQUEST)
    client = _client(board)
    task = client.next_task(fresh=True)
    assert task is not None and task.task_id == task_id and task.delivery == 1
    assert task.request == REQUEST
    for _ in range(3):  # 1.5 s in all, past the 1 s lease, kept alive by renewals
        time.sleep(0.5)
        assert client.renew(task)
    assert client.next_task() is None  # still leased: no second delivery
    assert client.post_reply(task, {"success": True, "job_id": "j"}) is ReplyOutcome.ACCEPTED
    assert client.post_reply(task, {"success": False}) is ReplyOutcome.LEASE_LOST
    assert board.researcher.reply(task_id, wait=0) == {"success": True, "job_id": "j"}
    client.close()


def test_an_expired_lease_is_lost_and_the_task_comes_back(board: Board) -> None:
    """Without renewals the lease ends: renew and the reply say LEASE_LOST, the task is redelivered."""
    board.researcher.post_task("node-1", REQUEST)
    client = _client(board)
    first = client.next_task()
    assert first is not None
    time.sleep(1.3)
    assert not client.renew(first)
    again = client.next_task()
    assert again is not None and again.task_id == first.task_id and again.delivery == 2
    assert client.post_reply(first, {"success": True}) is ReplyOutcome.LEASE_LOST
    assert client.post_reply(again, {"success": True}) is ReplyOutcome.ACCEPTED
    client.close()


def test_a_reply_that_is_not_strict_json_is_refused(board: Board) -> None:
    """NaN is refused by the client itself, a lone surrogate by the board: REFUSED, the lease stays."""
    board.researcher.post_task("node-1", REQUEST)
    client = _client(board)
    task = client.next_task()
    assert task is not None
    assert client.post_reply(task, {"timing": {"t": float("nan")}}) is ReplyOutcome.REFUSED
    assert client.post_reply(task, {"msg": "\ud800"}) is ReplyOutcome.REFUSED
    assert client.post_reply(task, {"msg": "fine"}) is ReplyOutcome.ACCEPTED
    client.close()


def test_credentials_are_refused_for_good_and_another_nodes_task_is_not_ours(board: Board) -> None:
    """A bad token or another node's queue raises TaskBoardRefused; another node's task is LEASE_LOST."""
    with pytest.raises(TaskBoardRefused):
        _client(board, token="fp1.0123456789abcdef." + "A" * 43).next_task()
    with pytest.raises(TaskBoardRefused):
        _client(board, token=board.other_token).next_task()  # node-2's token on node-1's queue
    board.researcher.post_task("node-1", REQUEST)
    task = _client(board).next_task()
    assert task is not None
    intruder = _client(board, token=board.other_token, node_id="node-2")
    assert not intruder.renew(task)
    assert intruder.post_reply(task, {"success": True}) is ReplyOutcome.LEASE_LOST


def test_an_unreachable_board_is_unavailable() -> None:
    client = HttpTaskClient("http://127.0.0.1:9", "node-1", token="x", poll_wait=0.1, connect_timeout=0.5)
    with pytest.raises(TaskBoardUnavailable):
        client.next_task()


# --- the agent's delivery, over a scripted fake client ---------------------------------------


@define
class ScriptedClient:
    """Answers post_reply from a script: an outcome, or an exception to raise."""

    script: list[ReplyOutcome | Exception]
    posted: list[dict[str, object]] = field(factory=list)

    def post_reply(self, task: Task, reply: dict[str, object]) -> ReplyOutcome:
        self.posted.append(reply)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


TASK = Task(task_id="t1", request=REQUEST, lease_id="l1", lease_seconds=60.0)


def _reply(msg: str) -> TrainReply:
    return TrainReply(researcher_id="r", job_id="j", node_id="node-1", success=False, msg=msg)


def _deliver(client: ScriptedClient, *replies: TrainReply) -> ReplyOutcome | None:
    stop = threading.Event()
    log = logging.getLogger("test")
    backoff = _Backoff(stop, log)
    backoff.delay = 0.0
    return deliver_reply(client, TASK, list(replies), stop=stop, backoff=backoff, log=log)  # type: ignore[arg-type]


def test_delivery_waits_out_an_unreachable_board() -> None:
    client = ScriptedClient(
        [TaskBoardUnavailable("down"), TaskBoardUnavailable("down"), ReplyOutcome.ACCEPTED]
    )
    assert _deliver(client, _reply("round")) is ReplyOutcome.ACCEPTED
    assert [r["msg"] for r in client.posted] == ["round"] * 3


def test_a_refused_reply_is_replaced_by_the_fallback() -> None:
    client = ScriptedClient([ReplyOutcome.REFUSED, ReplyOutcome.ACCEPTED])
    assert _deliver(client, _reply("round"), _reply("fallback")) is ReplyOutcome.ACCEPTED
    assert [r["msg"] for r in client.posted] == ["round", "fallback"]


def test_a_lost_lease_or_a_refused_fallback_ends_the_delivery() -> None:
    lost = ScriptedClient([ReplyOutcome.LEASE_LOST])
    assert _deliver(lost, _reply("round"), _reply("fallback")) is ReplyOutcome.LEASE_LOST
    assert len(lost.posted) == 1
    refused = ScriptedClient([ReplyOutcome.REFUSED, ReplyOutcome.REFUSED])
    assert _deliver(refused, _reply("round"), _reply("fallback")) is ReplyOutcome.REFUSED
    assert len(refused.posted) == 2
