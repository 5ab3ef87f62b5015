"""Create, start and stop a loopback federation of stock Fed-BioMed 6.4.1 components via stock.py.

Runs under fedpipe's own interpreter (tests, benchmark); every Fed-BioMed step is a subprocess of
the scratch environment's python running ``stock.py``, so fedbiomed is never imported here.
"""

import configparser
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from attrs import frozen

HARNESS = Path(__file__).resolve().with_name("stock.py")
PLANS = Path(__file__).resolve().parent / "plans"
HOST = "127.0.0.1"


class HarnessFailure(Exception):
    """A stock.py command failed; the message is its one-line error (and the tail of its log)."""


@frozen(kw_only=True)
class StockResearcher:
    """A created researcher component."""

    dir: Path
    host: str
    port: int
    researcher_id: str
    certificate: Path


@frozen(kw_only=True)
class StockNode:
    """A created node component holding one CSV dataset."""

    dir: Path
    node_id: str
    name: str
    csv: Path
    dataset_id: str


def free_port(host: str = HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def harness_env() -> dict[str, str]:
    """This process's environment without Fed-BioMed's settings (they would override configs)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("FBM_", "FEDBIOMED_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_harness(
    python: Path, args: Sequence[str], *, cwd: Path, log: Path | None = None
) -> subprocess.Popen[str]:
    """Start ``stock.py ARGS`` under ``python`` in ``cwd``; stderr goes to ``log`` when given."""
    stderr = log.open("w") if log is not None else subprocess.PIPE
    try:
        return subprocess.Popen(
            [str(python), str(HARNESS), *args],
            cwd=cwd,
            env=harness_env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    finally:
        if log is not None:
            stderr.close()  # type: ignore[union-attr]


def finish_harness(
    process: subprocess.Popen[str], *, timeout: float, log: Path | None = None
) -> dict[str, Any]:
    """Wait for a started command and return its JSON line; failures raise HarnessFailure."""
    command = " ".join(str(part) for part in list(process.args)[2:3])  # type: ignore[arg-type]
    try:
        stdout, piped = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(process, grace=1.0)
        raise HarnessFailure(f"stock.py {command} ran past {timeout} s") from None
    stderr: str = piped or ""
    if log is not None and log.exists():
        stderr = log.read_text(errors="replace")
    lines = [line for line in (stdout or "").splitlines() if line.strip()]
    try:
        payload = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        payload = {}
    if process.returncode != 0 or "error" in payload or not payload:
        reason = payload.get("error") or f"exit status {process.returncode}"
        tail = "\n".join(stderr.splitlines()[-15:])
        raise HarnessFailure(f"{reason}\n{tail}")
    return payload


def run_harness(python: Path, args: Sequence[str], *, cwd: Path, timeout: float = 120.0) -> dict[str, Any]:
    """Run ``stock.py ARGS`` to completion and return its JSON line."""
    return finish_harness(start_harness(python, args, cwd=cwd), timeout=timeout)


def stop_process(process: subprocess.Popen[Any], grace: float = 5.0, *, terminate: bool = True) -> None:
    """Terminate a process (and its session) and reap it; kill it if it outlives ``grace``.

    ``terminate=False`` only waits and kills: for a process already sent SIGTERM (a second one
    would run the stock node's handler, and its pause, again).
    """
    if process.poll() is not None:
        return
    if terminate:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def create_federation(
    python: Path, root: Path, shards: Sequence[Path], *, port: int | None = None, timeout: float = 180.0
) -> tuple[StockResearcher, list[StockNode]]:
    """Create a researcher on 127.0.0.1 and one stock node per shard (tags "breast-cancer"), in parallel.

    The nodes only need the researcher's address at creation (they fetch its certificate when
    they connect), so all components are created at once. Directories: ``root/researcher``,
    ``root/node1``, ...; logs beside them.
    """
    port = port if port is not None else free_port()
    root.mkdir(parents=True, exist_ok=True)
    researcher_dir = root / "researcher"
    jobs = [
        start_harness(
            python,
            ["create-researcher", "--dir", str(researcher_dir), "--host", HOST, "--port", str(port)],
            cwd=root,
            log=root / "create-researcher.log",
        )
    ]
    for index, shard in enumerate(shards, 1):
        jobs.append(
            start_harness(
                python,
                [
                    "create-node",
                    "--dir",
                    str(root / f"node{index}"),
                    "--researcher-host",
                    HOST,
                    "--researcher-port",
                    str(port),
                    "--csv",
                    str(shard),
                    "--tags",
                    "breast-cancer",
                    "--name",
                    f"node{index}",
                ],
                cwd=root,
                log=root / f"create-node{index}.log",
            )
        )
    logs = [
        root / "create-researcher.log",
        *(root / f"create-node{i}.log" for i in range(1, len(shards) + 1)),
    ]
    try:
        payloads = [
            finish_harness(job, timeout=timeout, log=log) for job, log in zip(jobs, logs, strict=True)
        ]
    finally:
        for job in jobs:
            stop_process(job, grace=1.0)
    first = payloads[0]
    researcher = StockResearcher(
        dir=researcher_dir,
        host=first["host"],
        port=int(first["port"]),
        researcher_id=first["researcher_id"],
        certificate=Path(first["certificate"]),
    )
    nodes = [
        StockNode(
            dir=root / f"node{index}",
            node_id=item["node_id"],
            name=item["node_name"],
            csv=Path(shard),
            dataset_id=item["dataset_id"],
        )
        for index, (item, shard) in enumerate(zip(payloads[1:], shards, strict=True), 1)
    ]
    return researcher, nodes


def configure_node(node: StockNode, section: str, option: str, value: str) -> None:
    """Set ``[section] option = value`` in a created stock node's ``etc/config.ini``.

    The node reads its configuration when it starts: change it while the node is stopped.
    """
    path = node.dir / "etc" / "config.ini"
    parser = configparser.ConfigParser()
    if not parser.read(path):
        raise HarnessFailure(f"no configuration for the stock node in {node.dir}")
    if not parser.has_section(section):
        parser.add_section(section)
    parser.set(section, option, value)
    with path.open("w") as handle:
        parser.write(handle)


def pinned(command: list[str], index: int, pin: bool) -> tuple[list[str], dict[str, str]]:
    """``command`` on CPU ``index`` (modulo the CPUs) with one torch thread when ``pin``: each
    node as if on a machine of its own (benchmarks); unchanged otherwise. Also the extra env."""
    if not pin:
        return command, {}
    cpu = index % (os.cpu_count() or 1)
    return ["taskset", "-c", str(cpu), *command], {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextlib.contextmanager
def running_nodes(
    python: Path, nodes: Sequence[StockNode], *, cwd: Path, pin: bool = False
) -> Iterator[list[subprocess.Popen[Any]]]:
    """Run each stock node in the foreground for the block's duration; all are stopped on exit.

    ``pin`` puts node i on CPU i with one torch thread (see ``pinned``).
    """
    processes: list[subprocess.Popen[Any]] = []
    try:
        for index, node in enumerate(nodes):
            command, extra = pinned(
                [str(python), str(HARNESS), "start-node", "--dir", str(node.dir)], index, pin
            )
            with (node.dir.parent / f"{node.dir.name}.log").open("w") as log:
                processes.append(
                    subprocess.Popen(
                        command,
                        cwd=cwd,
                        env={**harness_env(), **extra},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        yield processes
    finally:
        # SIGTERM runs the stock node's own handler: it tells the researcher at once, then pauses
        # and takes 7-8 s in all to exit, so after a short grace the nodes are killed. All are
        # signalled first so that the waits overlap.
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        for process in processes:
            stop_process(process, grace=max(0.1, deadline - time.monotonic()), terminate=False)
