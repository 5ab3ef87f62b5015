"""Bad invocations of every command: one ``error:`` line on stderr, exit status 2, no traceback, no file made.

Each case runs ``python -m fedpipe`` in a fresh directory with a fresh HOME; the cases run side by
side (a thread pool of subprocesses), once per module, and each is checked as its own test.
"""

import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from attrs import frozen

from fedpipe.bootstrap import open_owner

NODE_ID = "node-1"


def _node_root(cwd: Path) -> None:
    with open_owner(cwd / "R", node_id=NODE_ID):
        pass


def _files(cwd: Path) -> None:
    (cwd / "data.csv").write_text("a,b,label\n1,2,0\n3,4,1\n")
    (cwd / "ragged.csv").write_text("a,b,c\n1,2,3\n4,5\n")
    (cwd / "bad.py").write_text("def broken(:\n")
    (cwd / "token").write_text("a-token\n")


def _both(cwd: Path) -> None:
    _node_root(cwd)
    _files(cwd)


@frozen(kw_only=True)
class Case:
    """One bad invocation: its arguments, what the directory holds first, what the error must say."""

    name: str
    argv: tuple[str, ...]
    says: str
    setup: Callable[[Path], None] | None = None
    absent: tuple[str, ...] = ()


EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "experiment.toml")

CASES = (
    Case(name="simulate-no-nodes", argv=("simulate", "--config", EXAMPLE, "--nodes", "0"), says="--nodes"),
    Case(
        name="simulate-more-per-round",
        argv=("simulate", "--config", EXAMPLE, "--nodes", "4", "--per-round", "5"),
        says="5 nodes per round",
    ),
    Case(
        name="simulate-no-rows",
        argv=("simulate", "--config", EXAMPLE, "--nodes", "3", "--rows", "0"),
        says="--rows",
    ),
    Case(
        name="simulate-more-nodes-than-rows",
        argv=("simulate", "--config", EXAMPLE, "--nodes", "700"),
        says="more than the dataset's 569 rows",
    ),
    Case(
        name="simulate-no-config",
        argv=("simulate", "--config", "absent.toml", "--nodes", "3"),
        says="absent.toml",
    ),
    Case(name="demo-no-nodes", argv=("demo", "--nodes", "0"), says="--nodes"),
    Case(name="demo-no-epochs", argv=("demo", "--epochs", "0"), says="--epochs"),
    Case(name="demo-negative-rounds", argv=("demo", "--rounds", "-1"), says="--rounds"),
    Case(name="demo-secagg-one-node", argv=("demo", "--secagg", "--nodes", "1"), says="at least 2 nodes"),
    Case(name="serve-port-out-of-range", argv=("serve", "--port", "99999", "--root", "srv"), says="65535"),
    Case(name="serve-root-uncreatable", argv=("serve", "--root", "/proc/nope"), says="/proc/nope"),
    Case(
        name="serve-half-tls",
        argv=("serve", "--root", "srv", "--certfile", "cert.pem"),
        says="--keyfile",
    ),
    Case(
        name="datasets-add-parameters-not-an-object",
        argv=("datasets", "add", "--root", "R", "--id", "d", "--path", "data.csv", "--parameters", "[1,2]"),
        says="JSON object",
        setup=_files,
    ),
    Case(
        name="datasets-add-missing-file",
        argv=("datasets", "add", "--root", "R", "--id", "d", "--path", "/nonexistent.csv"),
        says="no file or folder at /nonexistent.csv",
        absent=("/nonexistent.csv",),
    ),
    Case(
        name="datasets-add-unparseable-csv",
        argv=("datasets", "add", "--root", "R", "--id", "d", "--path", "ragged.csv"),
        says="cannot be read as CSV",
        setup=_files,
    ),
    Case(
        name="datasets-add-node-id-mismatch",
        argv=("datasets", "add", "--root", "R", "--node-id", "node-2", "--id", "d", "--path", "data.csv"),
        says=f"R belongs to node '{NODE_ID}', not 'node-2': pass --node-id {NODE_ID} or use another --root",
        setup=_both,
    ),
    Case(
        name="datasets-list-missing-root",
        argv=("datasets", "list", "--root", "/nonexistent"),
        says="no node root at /nonexistent",
        absent=("/nonexistent",),
    ),
    Case(
        name="datasets-remove-unknown",
        argv=("datasets", "remove", "nope", "--root", "R"),
        says="nope",
        setup=_node_root,
    ),
    Case(name="plans-list-missing-root", argv=("plans", "list", "--root", "R"), says="no node root at R"),
    Case(
        name="plans-list-node-id-mismatch",
        argv=("plans", "list", "--root", "R", "--node-id", "node-2"),
        says=f"pass --node-id {NODE_ID}",
        setup=_node_root,
    ),
    Case(
        name="plans-show-unknown-id",
        argv=("plans", "show", "training_plan_nope", "--root", "R"),
        says="no training plan 'training_plan_nope'",
        setup=_node_root,
    ),
    Case(
        name="plans-show-without-id", argv=("plans", "show", "--root", "R"), says="plan id", setup=_node_root
    ),
    Case(
        name="plans-approve-unknown-id",
        argv=("plans", "approve", "SHA256:0123456789ab", "--root", "R"),
        says="no training plan",
        setup=_node_root,
    ),
    Case(
        name="plans-approve-syntax-error",
        argv=("plans", "approve", "--root", "R", "--file", "bad.py"),
        says="not valid Python",
        setup=_files,
    ),
    Case(
        name="plans-approve-missing-file",
        argv=("plans", "approve", "--root", "R", "--file", "missing.py"),
        says="missing.py",
    ),
    Case(name="plans-unknown-action", argv=("plans", "frobnicate", "--root", "R"), says="frobnicate"),
    Case(name="peers-list-missing-root", argv=("peers", "list", "--root", "R"), says="no node root at R"),
    Case(
        name="peers-add-without-peer-id",
        argv=("peers", "add", "--root", "R", "--node-id", "node-2", "--key", "key.pem"),
        says="needs the peer's node id",
    ),
    Case(
        name="peers-add-missing-key",
        argv=("peers", "add", "node-2", "--root", "R", "--key", "key.pem"),
        says="key.pem",
        setup=_node_root,
    ),
    Case(
        name="identity-node-id-mismatch",
        argv=("identity", "--root", "R", "--node-id", "node-2"),
        says=f"pass --node-id {NODE_ID}",
        setup=_node_root,
    ),
    Case(
        name="node-server-without-scheme",
        argv=("node", "--server", "127.0.0.1:8844", "--root", "n", "--token-file", "token"),
        says="http://",
        setup=_files,
    ),
    Case(
        name="node-without-token-file",
        argv=("node", "--server", "http://127.0.0.1:9", "--root", "n"),
        says="--token-file",
    ),
    Case(
        name="node-node-id-mismatch",
        argv=(
            "node",
            "--server",
            "http://127.0.0.1:9",
            "--root",
            "R",
            "--node-id",
            "node-2",
            "--token-file",
            "token",
        ),
        says=f"pass --node-id {NODE_ID}",
        setup=_both,
    ),
    Case(name="node-no-transport", argv=("node", "--root", "n"), says="--server"),
    Case(name="tokens-list-missing-root", argv=("tokens", "list", "--root", "srv"), says="srv"),
    Case(name="tokens-issue-for-nobody", argv=("tokens", "issue", "--root", "srv"), says="--node"),
    Case(name="no-command", argv=(), says="COMMAND"),
    Case(name="unknown-command", argv=("frobnicate",), says="frobnicate"),
)


@frozen(kw_only=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    before: frozenset[str]
    after: frozenset[str]
    absent_now: tuple[str, ...]


def _tree(root: Path) -> frozenset[str]:
    return frozenset(str(p.relative_to(root)) for p in root.rglob("*"))


def _run(case: Case, cwd: Path) -> Outcome:
    cwd.mkdir(parents=True)
    (cwd / "home").mkdir()
    if case.setup is not None:
        case.setup(cwd)
    before = _tree(cwd)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDPIPE")}
    env |= {"HOME": str(cwd / "home"), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-m", "fedpipe", *case.argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return Outcome(
        code=done.returncode,
        stdout=done.stdout,
        stderr=done.stderr,
        before=before,
        after=_tree(cwd),
        absent_now=tuple(p for p in case.absent if Path(p).exists()),
    )


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    base = tmp_path_factory.mktemp("bad-invocations")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case.name: pool.submit(_run, case, base / case.name) for case in CASES}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_bad_invocation_is_one_line_exit_2_and_creates_nothing(
    case: Case, outcomes: dict[str, Outcome]
) -> None:
    seen = outcomes[case.name]
    lines = [line for line in seen.stderr.splitlines() if line.strip()]
    assert seen.code == 2, seen.stderr
    assert "Traceback" not in seen.stderr + seen.stdout
    assert len(lines) == 1, seen.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert case.says in lines[0]
    assert seen.after == seen.before, f"created {sorted(seen.after - seen.before)}"
    assert seen.absent_now == ()


def test_the_table_covers_every_command() -> None:
    from fedpipe.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    covered = {case.argv[0] for case in CASES if case.argv}
    assert set(sub.choices) - {"run"} <= covered  # `run` is the researcher's command, tested with it
