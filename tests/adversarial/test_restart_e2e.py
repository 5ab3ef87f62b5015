"""`fedpipe serve` killed with SIGKILL while a real node runs a leased task and another waits: nothing lost,
nothing run twice."""

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from attrs import define

from fedpipe.bootstrap import open_owner
from fedpipe.codec import dumps
from fedpipe.plan import DatasetRecord
from fedpipe.ports import Approval
from fedpipe.researcher.board import BoardClient, BoardError
from fedpipe.researcher.demo import initial_params, reference_statistics
from fedpipe.server.auth import bearer
from fedpipe.server.testing import ServerProcess
from fedpipe.training import load_breast_cancer
from tests.e2e.support import issue, node_token_file, spawn_node, wait_for_nodes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SLOW_PLAN = '''
import time
from pathlib import Path

from fedpipe.researcher.demo_plan import BreastCancerMlp

MARKS = Path({marks!r})


class SlowPlan(BreastCancerMlp):
    """The demo plan, slowed down, writing one line per round it starts."""

    def init_model(self):
        with MARKS.open("a") as fh:
            fh.write(self.model_args["tag"] + "\\n")
        return super().init_model()

    def training_step(self, data, target):
        time.sleep(0.05)
        return super().training_step(data, target)
'''


@define
class Rig:
    server: ServerProcess
    board: BoardClient
    marks: Path
    request: Callable[[str, int], dict[str, object]]


@pytest.fixture
def rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    """A server (its lease length the test's parameter, else the default), a node, a slow plan."""
    data = load_breast_cancer()
    node_root = tmp_path / "node-1"
    csv = node_root / "data.csv"
    csv.parent.mkdir(parents=True)
    np.savetxt(csv, np.column_stack([data.features, data.labels]), delimiter=",", header="x," * 30 + "label")
    marks = tmp_path / "marks.txt"
    source = SLOW_PLAN.format(marks=str(marks))
    with open_owner(node_root, node_id="node-1") as owner:
        owner.datasets.add(DatasetRecord(dataset_id="bc", name="bc", path=str(csv)))
        owner.approvals.register(source, name="slow", status=Approval.APPROVED)
    lease = getattr(request, "param", None)
    server = ServerProcess(tmp_path / "server", **({} if lease is None else {"lease_seconds": lease}))
    token = issue(server.root, "researcher", "restarter")
    token_file = node_token_file(server.root, node_root, "node-1")
    server.start()
    node = spawn_node(server.url, node_root, token_file, poll_wait=1.0, log=tmp_path / "node.log")
    board = BoardClient(server.url, token=token)
    try:
        wait_for_nodes(server.url, token, ["node-1"])
        plan_url = httpx.post(
            f"{server.url}/upload", files={"file": ("plan.py", source.encode())}, headers=bearer(token)
        ).json()["file"]
        params_url = httpx.post(
            f"{server.url}/upload",
            files={"file": ("p.mpk", dumps({"model_weights": initial_params(0)}))},
            headers=bearer(token),
        ).json()["file"]
        mean, std = reference_statistics()

        def task_request(tag: str, epochs: int) -> dict[str, object]:  # a training task tagged in the marks
            return {
                "researcher_id": "restarter",
                "job_id": f"job-{tag}",
                "params_url": params_url,
                "dataset_id": "bc",
                "training_plan_url": plan_url,
                "training_plan_class": "SlowPlan",
                "training": True,
                "model_args": {"tag": tag, "feature_mean": mean, "feature_std": std},
                "training_args": {"epochs": epochs, "loader_args": {"batch_size": 64}},
            }

        yield Rig(server=server, board=board, marks=marks, request=task_request)
    finally:
        board.close()
        node.terminate()
        node.wait(timeout=15)
        server.stop()


def _reply(board: BoardClient, task_id: str, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = board.reply(task_id, wait=2.0)
        except BoardError:
            time.sleep(0.3)  # the server is restarting
            continue
        if reply is not None:
            return reply
    raise AssertionError(f"no reply for {task_id}")


def test_server_killed_with_a_leased_and_a_queued_task(rig: Rig) -> None:
    """SIGKILL while the node trains task A and task B waits; after a restart both are answered once."""
    server, board, marks, request = rig.server, rig.board, rig.marks, rig.request
    task_a = board.post_task("node-1", request("a", 3))
    task_b = board.post_task("node-1", request("b", 1))
    deadline = time.monotonic() + 60
    while not (marks.exists() and "a" in marks.read_text().split()):
        assert time.monotonic() < deadline, "task A never started"
        time.sleep(0.05)
    server.kill()
    time.sleep(1.0)  # the node's lease renewals and its reply now fail: it must wait, not drop
    server.start()
    reply_a = _reply(board, task_a, timeout=120)
    reply_b = _reply(board, task_b, timeout=120)
    assert reply_a["success"] is True, reply_a
    assert reply_b["success"] is True, reply_b
    assert marks.read_text().split() == ["a", "b"]  # each ran exactly once, in order
    assert not list((server.root / "tmp").glob("*.part"))


def test_answered_tasks_survive_a_kill(rig: Rig) -> None:
    """A reply stored before a SIGKILL is still served after the restart, and the task does not run again."""
    server, board, marks, request = rig.server, rig.board, rig.marks, rig.request
    task = board.post_task("node-1", request("c", 1))
    first = _reply(board, task, timeout=120)
    server.kill()
    server.start()
    again = _reply(board, task, timeout=30)
    assert again == first
    time.sleep(2.0)
    assert marks.read_text().split() == ["c"]


@pytest.mark.parametrize("rig", [1.0], indirect=True)
def test_a_round_longer_than_its_lease_runs_once(rig: Rig) -> None:
    """With a 1 s lease, a round of several seconds is kept by the node's renewals: one run, one reply."""
    task = rig.board.post_task("node-1", rig.request("long", 3))
    reply = _reply(rig.board, task, timeout=120)
    assert reply["success"] is True, reply
    time.sleep(2.0)  # a lease lost during the round would have redelivered it by now
    assert rig.marks.read_text().split() == ["long"]
