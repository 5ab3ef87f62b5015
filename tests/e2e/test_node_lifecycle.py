"""A real `fedpipe node` against a real `fedpipe serve`: it logs its states and stops at once on a signal."""

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from attrs import frozen

from fedpipe.researcher.board import BoardClient
from tests.e2e.support import issue, node_token_file, spawn_node, wait_for_health

pytestmark = [pytest.mark.e2e]


@frozen(kw_only=True)
class Server:
    url: str
    root: Path
    researcher: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("lifecycle") / "srv"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedpipe", "serve", "--port", str(port), "--root", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url)
        yield Server(url=url, root=root, researcher=issue(root, "researcher", "lifecycle"))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:  # the server's own stop is not under test here
            proc.kill()
            proc.wait()


def _wait_for_line(log: Path, text: str, *, after: int = 0, timeout: float = 60.0) -> None:
    """Wait until ``text`` shows in ``log`` past its first ``after`` characters."""
    deadline = time.monotonic() + timeout
    while text not in (log.read_text(errors="replace") if log.exists() else "")[after:]:
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{log.read_text(errors='replace')}"
        time.sleep(0.05)


def _stop(proc: "subprocess.Popen[bytes]", signum: signal.Signals) -> float:
    """Send ``signum`` and wait for the exit (a bound far above the 2 s aim); the measured seconds."""
    started = time.monotonic()
    proc.send_signal(signum)
    try:
        proc.wait(timeout=8)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the node did not stop on {signum.name} within 8 s")
    return time.monotonic() - started


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_waiting_node_logs_its_states_and_stops_on_a_signal(
    server: Server, tmp_path: Path, signum: signal.Signals
) -> None:
    """connected, waiting, running round r of job j (1-based), replied, waiting again; then the
    signal cuts the long poll (10 s here) short: "stopping: <signal> received", "stopped", status 0."""
    root = tmp_path / "node"
    node_id = f"node-{signum.name.lower()}"
    log = tmp_path / "node.log"
    token_file = node_token_file(server.root, root, node_id)
    proc = spawn_node(server.url, root, token_file, node_id=node_id, poll_wait=10.0, log=log)
    try:
        _wait_for_line(log, "waiting for tasks")
        board = BoardClient(server.url, token=server.researcher)
        try:
            # a request that fails at once (no such dataset or plan): a whole round, no training
            task_id = board.post_task(node_id, {"job_id": "job-7", "round": 2, "training": True})
            deadline = time.monotonic() + 60
            while (reply := board.reply(task_id, wait=2.0)) is None:
                assert time.monotonic() < deadline, "no reply"
        finally:
            board.close()
        assert reply["success"] is False
        seen = len(log.read_text(errors="replace"))
        _wait_for_line(log, "replied: failure")
        _wait_for_line(log, "waiting for tasks", after=seen - 200)
        time.sleep(0.5)  # well inside the 10 s long poll
        stopped_in = _stop(proc, signum)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    print(f"{signum.name}: the waiting node stopped in {stopped_in:.2f} s (aim: under 2 s)")
    assert proc.returncode == 0, text
    lines = [line for line in text.splitlines() if " fedpipe.node " in line]
    order = [
        f"connected to {server.url} as node {node_id}",
        "waiting for tasks",
        "running round 3 of job job-7",
        "replied: failure",
        "waiting for tasks",
        f"stopping: {signum.name} received",
        "stopped",
    ]
    at = 0
    for wanted in order:
        found = next((i for i in range(at, len(lines)) if wanted in lines[i]), None)
        assert found is not None, f"{wanted!r} missing (in this order) from:\n{text}"
        at = found + 1
    token = token_file.read_text().strip()
    assert token not in text and token.split(".")[-1] not in text
    assert "Traceback" not in text


def test_a_stop_event_from_another_thread_cuts_the_long_poll_short(server: Server, tmp_path: Path) -> None:
    """In-process use (no signal handlers off the main thread): setting ``stop`` ends a 10 s long
    poll and the agent returns 0, logging "stopping: asked to stop" and "stopped"."""
    import logging
    import threading

    from fedpipe.bootstrap import run_node_agent

    root = tmp_path / "node"
    token = node_token_file(server.root, root, "node-thread").read_text().strip()
    stop = threading.Event()
    codes: list[int] = []
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    node_log = logging.getLogger("fedpipe.node")
    keep, level = Keep(), node_log.level
    node_log.addHandler(keep)
    node_log.setLevel(logging.INFO)
    agent = threading.Thread(
        target=lambda: codes.append(
            run_node_agent(
                root, server_url=server.url, node_id="node-thread", token=token, poll_wait=10.0, stop=stop
            )
        )
    )
    try:
        agent.start()
        deadline = time.monotonic() + 60
        while "waiting for tasks" not in records:
            assert time.monotonic() < deadline and agent.is_alive(), records
            time.sleep(0.05)
        time.sleep(0.5)
        started = time.monotonic()
        stop.set()
        agent.join(timeout=8)
        assert not agent.is_alive(), "the agent did not stop within 8 s"
        print(f"stop event: the agent returned in {time.monotonic() - started:.2f} s")
    finally:
        stop.set()
        agent.join(timeout=15)
        node_log.removeHandler(keep)
        node_log.setLevel(level)
    assert codes == [0]
    assert records[-2:] == ["stopping: asked to stop", "stopped"], records
