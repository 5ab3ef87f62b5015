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
from fedpipe.server.auth import bearer

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "command",
    [
        "demo",
        "serve",
        "tokens",
        "tokens issue",
        "tokens list",
        "tokens revoke",
        "node",
        "plans",
        "plans list",
        "plans show",
        "plans approve",
        "plans reject",
        "plans register",
        "plans remove",
        "datasets",
        "datasets add",
        "datasets list",
        "datasets remove",
        "identity",
        "peers",
        "peers add",
        "peers list",
        "peers remove",
    ],
)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`fedpipe <command> [<action>] --help` prints that command's own usage and exits 0."""
    with pytest.raises(SystemExit) as exit_info:
        main([*command.split(), "--help"])
    assert exit_info.value.code == 0
    assert "usage: fedpipe " + command in capsys.readouterr().out


def test_plans_pending_is_an_alias_of_register(capsys: pytest.CaptureFixture[str]) -> None:
    """`plans pending` keeps working; its help says it registers a plan file as pending."""
    with pytest.raises(SystemExit):
        main(["plans", "pending", "--help"])
    assert "register a plan file as pending" in " ".join(capsys.readouterr().out.split()).lower()


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
    assert main(["datasets", "add", "--root", str(root), "--id", "ds1", "--path", str(data)]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["plans", "approve", "--root", str(root), "--file", str(plan)]) == 0
    assert main(["plans", "list", "--root", str(root)]) == 0
    assert "Approved" in capsys.readouterr().out
    assert main(["plans", "reject", "--root", str(root), "--file", str(plan)]) == 0
    assert main(["plans", "list", "--root", str(root)]) == 0
    assert "Rejected" in capsys.readouterr().out
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(:\n")
    assert main(["plans", "approve", "--root", str(root), "--file", str(bad)]) == 2


def test_serve_answers_health(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`fedpipe serve` starts the server on the given port; /health answers, the board wants a token
    (issued while it runs); it stops on SIGTERM."""
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
        anonymous = httpx.get(f"http://127.0.0.1:{port}/tasks/node-x/next", params={"wait": 0})
        assert anonymous.status_code == 401
        assert main(["tokens", "issue", "--root", str(tmp_path / "srv"), "--node", "node-x"]) == 0
        token = capsys.readouterr().out.strip()
        polled = httpx.get(
            f"http://127.0.0.1:{port}/tasks/node-x/next", params={"wait": 0}, headers=bearer(token)
        )
        assert polled.status_code == 204
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) is not None


def test_tokens_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tokens issue (printed or to a 0600 file), list (never the secret) and revoke; errors are one line."""
    root = tmp_path / "srv"
    assert main(["tokens", "issue", "--root", str(root), "--researcher", "alice"]) == 0
    printed = capsys.readouterr().out.strip()
    out = tmp_path / "node-1.token"
    assert main(["tokens", "issue", "--root", str(root), "--node", "node-1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert out.stat().st_mode & 0o777 == 0o600
    written = out.read_text().strip()
    assert main(["tokens", "list", "--root", str(root)]) == 0
    listing = capsys.readouterr().out
    assert "alice" in listing and "node-1" in listing
    token_id = written.split(".")[1]
    assert written.split(".")[2] not in listing and printed.split(".")[2] not in listing
    assert main(["tokens", "revoke", "--root", str(root), "--id", token_id]) == 0
    assert main(["tokens", "list", "--root", str(root)]) == 0
    assert "revoked" in capsys.readouterr().out
    for bad in (
        ["tokens", "issue", "--root", str(root)],
        ["tokens", "issue", "--root", str(root), "--node", "a", "--researcher", "b"],
        ["tokens", "issue", "--root", str(root), "--node", "bad id\n"],
        ["tokens", "revoke", "--root", str(root), "--id", "0" * 16],
    ):
        assert main(bad) != 0
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1


def test_node_needs_a_readable_token_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`fedpipe node` with a missing or empty token file exits 2 with one line, before any connection."""
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    for token_file in (tmp_path / "absent.token", empty):
        code = main(
            [
                "node",
                "--server",
                "http://127.0.0.1:9",
                "--root",
                str(tmp_path / "n"),
                "--token-file",
                str(token_file),
            ]
        )
        assert code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1


def test_datasets_add_reads_a_csv_as_the_round_will(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shape is the one the round's reader sees (a ';' file has 2 columns), tags are kept, and a
    file the round could not read, or no file at all, is refused at once in one line."""
    from fedpipe.bootstrap import open_owner

    root = tmp_path / "node"
    semi = tmp_path / "semi.csv"
    semi.write_text("a;label\n1.5;0\n2.5;1\n3.5;0\n")
    add = ["datasets", "add", "--root", str(root), "--id", "semi", "--path", str(semi), "--tags", "x,y"]
    assert main(add) == 0
    with open_owner(root) as owner:
        (record,) = owner.datasets.list()
    assert (record.data_type, record.shape, record.tags) == ("csv", (3, 2), ("x", "y"))
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,c\n1,2,3\n4,5\n6,7,8\n")
    capsys.readouterr()
    assert main(["datasets", "add", "--root", str(root), "--id", "r", "--path", str(ragged)]) == 2
    assert (
        main(["datasets", "add", "--root", str(root), "--id", "n", "--path", str(tmp_path / "none.csv")]) == 2
    )
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)
    assert main(["datasets", "list", "--root", str(tmp_path / "elsewhere")]) == 2
    assert not (tmp_path / "elsewhere").exists()
