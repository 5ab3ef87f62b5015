"""A real `fedpipe node` process under hostile tasks: any JSON in any field, poison tasks, a second process."""

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from attrs import define, field
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpipe.bootstrap import open_owner
from fedpipe.errors import is_public_safe
from fedpipe.plan import DatasetRecord
from fedpipe.ports import Approval
from fedpipe.request import REQUEST_FIELDS
from fedpipe.researcher.board import BoardClient
from fedpipe.server.auth import bearer
from fedpipe.server.testing import running_server
from tests.e2e.support import issue, node_token_file, spawn_node, wait_for_nodes

pytestmark = [pytest.mark.e2e]

KILLER_PLAN = "import os\n\n\nclass Killer:\n    def __init__(self):\n        os._exit(17)  # an approved plan that takes the whole process down\n"


@define
class Federation:
    url: str
    server_root: Path
    node_root: Path
    token_file: Path
    researcher: str
    board: BoardClient
    uploads: dict[str, str] = field(factory=dict)
    procs: list["subprocess.Popen[bytes]"] = field(factory=list)
    restarts: int = 0
    _watching: threading.Event = field(factory=threading.Event)

    def start_node(self) -> "subprocess.Popen[bytes]":
        proc = spawn_node(
            self.url, self.node_root, self.token_file, poll_wait=1.0, log=self.node_root / "node.log"
        )
        self.procs.append(proc)
        return proc

    @property
    def node(self) -> "subprocess.Popen[bytes]":
        return self.procs[-1]

    def supervise(self) -> None:
        """Restart the node whenever it dies (as an operator's supervisor would)."""
        self._watching.set()

        def watch() -> None:
            while self._watching.is_set():
                if self.node.poll() is not None:
                    self.restarts += 1
                    self.start_node()
                time.sleep(0.1)

        threading.Thread(target=watch, daemon=True).start()

    def stop_supervising(self) -> None:
        self._watching.clear()
        time.sleep(0.3)

    def reply(self, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.board.reply(task_id, wait=2.0)
            if reply is not None:
                return reply
        raise AssertionError(f"no reply for task {task_id} within {timeout} s")


def _upload(url: str, token: str, name: str, content: bytes) -> str:
    response = httpx.post(f"{url}/upload", files={"file": (name, content)}, headers=bearer(token), timeout=30)
    assert response.status_code == 201, response.text
    return str(response.json()["file"])


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    work = tmp_path_factory.mktemp("hostile")
    node_root = work / "node-1"
    with open_owner(node_root, node_id="node-1") as owner:
        owner.datasets.add(DatasetRecord(dataset_id="bc", name="bc", path=str(work / "absent.csv")))
        owner.approvals.register(KILLER_PLAN, name="killer", status=Approval.APPROVED)
    with running_server(work / "server") as url:
        researcher = issue(work / "server", "researcher", "adversary")
        fed = Federation(
            url=url,
            server_root=work / "server",
            node_root=node_root,
            token_file=node_token_file(work / "server", node_root, "node-1"),
            researcher=researcher,
            board=BoardClient(url, token=researcher),
        )
        fed.uploads["killer"] = _upload(url, researcher, "killer.py", KILLER_PLAN.encode())
        fed.uploads["params"] = _upload(url, researcher, "params.mpk", b"\x80")
        fed.start_node()
        try:
            wait_for_nodes(url, researcher, ["node-1"])
            yield fed
        finally:
            fed.stop_supervising()
            for proc in fed.procs:
                proc.terminate()
            for proc in fed.procs:
                proc.wait(timeout=15)
            fed.board.close()


def _base(fed: Federation) -> dict[str, Any]:
    """A valid request that fails fast on the node (its dataset is not there)."""
    return {
        "researcher_id": "adversary",
        "job_id": "job-hostile",
        "params_url": fed.uploads["params"],
        "dataset_id": "no-such-dataset",
        "training_plan_url": fed.uploads["killer"],
        "training_plan_class": "Killer",
        "training": True,
        "training_args": {"epochs": 1},
    }


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.just(10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.sampled_from([*REQUEST_FIELDS, "training_args.epochs", "training_args.loader_args", "x\nforged"]),
    value=json_values,
)
def test_any_json_in_any_field_gets_a_clean_reply_and_the_node_lives(
    federation: Federation, name: str, value: Any
) -> None:
    """Every task the board accepts is answered with a well-formed reply; the node process never dies."""
    request = _base(federation)
    head, _, tail = name.partition(".")
    if tail:
        request[head] = {tail: value}
    else:
        request[head] = value
    task_id = federation.board.post_task("node-1", request)
    reply = federation.reply(task_id)
    assert set(reply) >= {"success", "msg", "node_id", "job_id", "researcher_id"}
    assert reply["node_id"] == "node-1"
    assert reply["success"] is False
    assert "\n" not in reply["msg"] and is_public_safe(reply["msg"])
    json.dumps(reply, allow_nan=False).encode("utf-8")
    assert federation.node.poll() is None, "the node process died"


def test_poison_task_is_set_aside_after_three_deliveries_and_the_queue_drains(federation: Federation) -> None:
    """A task that kills the node on every delivery is dead-lettered after 3; the task behind it runs."""
    killer = {**_base(federation), "dataset_id": "bc", "job_id": "job-poison"}
    federation.supervise()
    try:
        before = federation.restarts
        poison = federation.board.post_task("node-1", killer)
        behind = federation.board.post_task("node-1", {**_base(federation), "job_id": "job-behind"})
        dead = federation.reply(poison, timeout=120)
        assert dead["success"] is False
        assert "set aside" in dead["msg"]
        assert dead["job_id"] == "job-poison" and dead["node_id"] == "node-1"
        after = federation.reply(behind, timeout=60)
        assert after["job_id"] == "job-behind"
        assert after["msg"] == "The requested dataset is not available on this node."
        assert federation.restarts - before == 3
    finally:
        federation.stop_supervising()
    # nothing more on the queue: the node keeps polling and the killer never comes back
    assert federation.node.poll() is None
    time.sleep(2.5)
    assert federation.node.poll() is None


def test_a_second_process_on_the_node_root_exits_with_one_line(federation: Federation) -> None:
    """While the node runs, a second `fedpipe node` on its root refuses to start: one line, exit 1."""
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedpipe",
            "node",
            "--server",
            federation.url,
            "--root",
            str(federation.node_root),
            "--token-file",
            str(federation.token_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert second.stderr.startswith("error: another node process (pid ")
    assert second.stderr.count("\n") == 1
    assert federation.node.poll() is None
    # and the running one still serves: a task posted now is answered once
    task_id = federation.board.post_task("node-1", {**_base(federation), "job_id": "job-after-second"})
    assert federation.reply(task_id)["job_id"] == "job-after-second"
