"""`fedpipe run`'s mistakes: each is one line on stderr, exit status 2, no traceback, and no file written."""

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fedpipe.researcher.demo import demo_plan_source
from fedpipe.researcher.run_cli import main
from fedpipe.server.auth import TokenStore

GOOD = 'rounds = 1\ndataset = "d"\nplan_class = "BreastCancerMlp"\nnodes = ["node-1"]\n'


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def files(tmp_path: Path, server: str, token_store: TokenStore) -> dict[str, str]:
    """A good config, plan and researcher token for the real ``server``, and a few bad files."""
    paths = {
        "config": tmp_path / "exp.toml",
        "plan": tmp_path / "plan.py",
        "token": tmp_path / "researcher.token",
        "node_token": tmp_path / "node.token",
        "empty": tmp_path / "empty.token",
    }
    paths["config"].write_text(GOOD)
    paths["plan"].write_text(demo_plan_source())
    paths["token"].write_text(token_store.issue("researcher", "alice").token + "\n")
    paths["node_token"].write_text(token_store.issue("node", "node-1").token + "\n")
    paths["empty"].write_text("\n")
    named = {k: str(v) for k, v in paths.items()}
    named["server"] = server
    named["out"] = str(tmp_path / "out")
    named["tmp"] = str(tmp_path)
    return named


def _args(f: dict[str, str], **change: str) -> list[str]:
    values = {
        "--server": f["server"],
        "--token-file": f["token"],
        "--config": f["config"],
        "--plan": f["plan"],
        "--output": f["out"],
        "--wait-nodes": "0",
    }
    values.update({f"--{k.replace('_', '-')}": v for k, v in change.items()})
    return [item for pair in values.items() for item in pair]


def _bad_config(text: str) -> Callable[[dict[str, str]], list[str]]:
    def build(f: dict[str, str]) -> list[str]:
        path = Path(f["tmp"]) / "bad.toml"
        path.write_text(text)
        return _args(f, config=str(path))

    return build


CASES: dict[str, tuple[Callable[[dict[str, str]], list[str]], str]] = {
    "rounds 0": (
        _bad_config(GOOD.replace("rounds = 1", "rounds = 0")),
        "bad.toml: rounds must be a positive integer",
    ),
    "unknown key": (_bad_config(GOOD + "epochs = 2\n"), "bad.toml: unknown key epochs"),
    "unknown strategy": (
        _bad_config(GOOD + 'strategy = "fedsgd"\n'),
        "bad.toml: strategy.name must be one of",
    ),
    "wrong type": (_bad_config(GOOD.replace('nodes = ["node-1"]', "nodes = 3")), "bad.toml: nodes must be"),
    "not toml": (_bad_config("rounds = = 1"), "bad.toml: not valid TOML"),
    "no config file": (lambda f: _args(f, config=f["tmp"] + "/none.toml"), "none.toml: cannot read it"),
    "no plan file": (lambda f: _args(f, plan=f["tmp"] + "/none.py"), "no training plan file at"),
    "no token file": (lambda f: _args(f, token_file=f["tmp"] + "/none.token"), "cannot read the token file"),
    "empty token file": (lambda f: _args(f, token_file=f["empty"]), "does not hold one token"),
    "url without scheme": (lambda f: _args(f, server="127.0.0.1:8844"), "the server URL must be http(s)://"),
    "port out of range": (lambda f: _args(f, server="http://127.0.0.1:99999"), "the server URL must be"),
    "server unreachable": (
        lambda f: _args(f, server=f"http://127.0.0.1:{_closed_port()}"),
        "cannot reach the server at",
    ),
    "node token": (lambda f: _args(f, token_file=f["node_token"]), "it is not a researcher token"),
    "unknown node": (lambda f: _args(f), "unknown node node-1: the server knows none"),
    "output is a file": (lambda f: _args(f, output=f["plan"]), "exists and is not a folder"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_invocation_is_one_line_and_exit_2(
    case: str, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The table: each mistake found before the run is `error: ...` on one line, status 2, no output folder."""
    build, message = CASES[case]
    assert main(build(files)) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err, captured.err
    assert captured.out == ""
    assert not Path(files["out"]).exists()


def test_the_command_as_a_user_runs_it(tmp_path: Path) -> None:
    """`python -m fedpipe run` with a bad config: one line on stderr, status 2, no traceback; --help works."""
    config = tmp_path / "exp.toml"
    config.write_text(GOOD.replace("rounds = 1", "rounds = -1"))
    token = tmp_path / "t.token"
    token.write_text("fp1.0000000000000000." + "A" * 43)
    command = [
        sys.executable,
        "-m",
        "fedpipe",
        "run",
        "--server",
        "http://127.0.0.1:9",
        "--token-file",
        str(token),
    ]
    done = subprocess.run([*command, "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == f"error: {config}: rounds must be a positive integer, not -1\n"
    helped = subprocess.run(
        [sys.executable, "-m", "fedpipe", "run", "--help"], capture_output=True, text=True, timeout=60
    )
    assert (
        helped.returncode == 0
        and "usage: fedpipe run" in helped.stdout
        and "(default: fedpipe-output)" in helped.stdout
    )
