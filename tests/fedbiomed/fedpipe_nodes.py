"""fedpipe nodes for Fed-BioMed federations in tests and benchmarks: owner set-up and processes."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from attrs import frozen

from tests.fedbiomed.stock_federation import StockResearcher, pinned

REPO = Path(__file__).resolve().parents[2]
FEDPIPE = [sys.executable, "-m", "fedpipe"]


@frozen(kw_only=True)
class FedpipeNode:
    """A fedpipe node root set up by its owner: a CSV dataset with tags and (maybe) an approved plan."""

    root: Path
    node_id: str
    name: str
    csv: Path


def owner(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one ``fedpipe`` owner command (datasets, plans) as the node owner would."""
    done = subprocess.run(
        [*FEDPIPE, *args], capture_output=True, text=True, timeout=120, cwd=REPO, env=_env()
    )
    if check and done.returncode != 0:
        raise AssertionError(f"fedpipe {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def set_up_node(
    root: Path, *, node_id: str, name: str, csv: Path, plan: Path | None, tags: str = "breast-cancer"
) -> FedpipeNode:
    """Create a node root the owner's way: settings (node id), the dataset, and the approved plan."""
    owner(
        "datasets",
        "add",
        "--root",
        str(root),
        "--node-id",
        node_id,
        "--id",
        f"{name}-data",
        "--path",
        str(csv),
        "--tags",
        tags,
    )
    if plan is not None:
        owner(
            "plans", "approve", "--root", str(root), "--node-id", node_id, "--file", str(plan), "--name", "bc"
        )
    return FedpipeNode(root=root, node_id=node_id, name=name, csv=csv)


def configure_fedpipe_node(node: FedpipeNode, **values: Any) -> None:
    """Set owner settings in the node root's ``settings.json`` (the file the owner edits).

    Only settings the file already holds can be set; the node reads them when it starts.
    """
    path = node.root / "settings.json"
    settings = json.loads(path.read_text(encoding="utf-8"))
    unknown = sorted(set(values) - set(settings))
    if unknown:
        raise AssertionError(f"{path} has no settings {unknown}")
    settings.update(values)
    path.write_text(json.dumps(settings, indent=2), encoding="utf-8")


@contextlib.contextmanager
def running_fedpipe_nodes(
    nodes: Sequence[FedpipeNode], researcher: StockResearcher, *, logs: Path, pin: bool = False
) -> Iterator[list[subprocess.Popen[Any]]]:
    """Run ``fedpipe node --fedbiomed`` for each node for the block's duration; all stopped on exit.

    ``pin`` puts node i on CPU i with one torch thread (``stock_federation.pinned``).
    """
    processes: list[subprocess.Popen[Any]] = []
    logs.mkdir(parents=True, exist_ok=True)
    try:
        for index, node in enumerate(nodes):
            command, extra = pinned(
                [
                    *FEDPIPE,
                    "node",
                    "--fedbiomed",
                    f"{researcher.host}:{researcher.port}",
                    "--root",
                    str(node.root),
                    "--researcher-certificate",
                    str(researcher.certificate),
                    "--node-name",
                    node.name,
                ],
                index,
                pin,
            )
            with (logs / f"{node.name}.log").open("w") as log:
                processes.append(
                    subprocess.Popen(
                        command,
                        cwd=REPO,
                        env={**_env(), **extra},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def log_tail(logs: Path, lines: int = 40) -> str:
    """The last lines of every node log under ``logs`` (for assertion messages)."""
    out = []
    for path in sorted(logs.glob("*.log")):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {path.name}\n" + "\n".join(text))
    return "\n".join(out)
