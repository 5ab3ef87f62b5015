"""The fedpipe command: every sub-command has --help; the node owner's commands; serve answers."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fedpipe.cli import main
from fedpipe.researcher.demo import demo_plan_source

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("command", ["demo", "serve", "node", "plans", "datasets"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`fedpipe <command> --help` prints usage and exits 0."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: fedpipe " + command in capsys.readouterr().out


def test_owner_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """datasets add/list and plans approve/reject/list work on a node root, errors are clean."""
    root = tmp_path / "node"
    data = tmp_path / "data.csv"
    data.write_text("a,label\n1,0\n")
    plan = tmp_path / "plan.py"
    plan.write_text(demo_plan_source())
    assert main(["datasets", "add", "--root", str(root), "--id", "ds1", "--path", str(data)]) == 0
    assert main(["datasets", "list", "--root", str(root)]) == 0
    assert "ds1" in capsys.readouterr().out
    assert main(["datasets", "add", "--root", str(root), "--id", "ds1", "--path", str(data)]) == 1
    assert "error:" in capsys.readouterr().err
    assert main(["plans", "approve", "--root", str(root), "--file", str(plan)]) == 0
    assert main(["plans", "list", "--root", str(root)]) == 0
    assert "Approved" in capsys.readouterr().out
    assert main(["plans", "reject", "--root", str(root), "--file", str(plan)]) == 0
    assert main(["plans", "list", "--root", str(root)]) == 0
    assert "Rejected" in capsys.readouterr().out
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(:\n")
    assert main(["plans", "approve", "--root", str(root), "--file", str(bad)]) == 1


def test_serve_answers_health(tmp_path: Path) -> None:
    """`fedpipe serve` starts the server on the given port; /health answers; it stops on SIGTERM."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedpipe", "serve", "--port", str(port), "--root", str(tmp_path / "srv")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert response.json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/tasks/node-x/next", params={"wait": 0}).status_code == 204
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) is not None
