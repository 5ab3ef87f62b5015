"""Helpers of the end-to-end tests: credentials from the server's token store, real node processes."""

import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from fedpipe.adapters.private_file import write_private
from fedpipe.researcher.board import BoardClient
from fedpipe.server.auth import TokenStore


def issue(server_root: Path, role: str, subject: str) -> str:
    """A fresh token of ``role`` for ``subject`` from the server's own store."""
    store = TokenStore(server_root)
    try:
        return store.issue(role, subject).token
    finally:
        store.close()


def node_token_file(server_root: Path, node_root: Path, node_id: str) -> Path:
    """Issue a node token and store it in the node root, as its owner would."""
    return write_private(node_root / "node.token", issue(server_root, "node", node_id))


def spawn_node(
    url: str,
    node_root: Path,
    token_file: Path,
    *,
    node_id: str | None = None,
    poll_wait: float = 1.0,
    log: Path | None = None,
) -> "subprocess.Popen[bytes]":
    """Start ``fedpipe node`` on ``node_root`` (its output to ``log``, else discarded)."""
    command = [sys.executable, "-m", "fedpipe", "node", "--server", url, "--root", str(node_root)]
    command += ["--token-file", str(token_file), "--poll-wait", str(poll_wait)]
    if node_id is not None:
        command += ["--node-id", node_id]
    # the child gets its own copy of the log's descriptor: ours is closed once it is started
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def wait_for_nodes(url: str, researcher_token: str, node_ids: Iterable[str], timeout: float = 120.0) -> None:
    """Wait until every node in ``node_ids`` has polled the board."""
    wanted = set(node_ids)
    deadline = time.monotonic() + timeout
    board = BoardClient(url, token=researcher_token)
    try:
        while not wanted <= set(board.nodes()):
            assert time.monotonic() < deadline, (
                f"nodes never polled the server: {sorted(wanted - set(board.nodes()))}"
            )
            time.sleep(0.3)
    finally:
        board.close()


def wait_for_health(url: str, what: Callable[[], str] = lambda: "", timeout: float = 60.0) -> None:
    """Wait until the server at ``url`` answers ``/health``; fails with ``what()`` (e.g. its log) if never."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{url}/health", timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            assert time.monotonic() < deadline, f"fedpipe serve never answered /health {what()}"
            time.sleep(0.2)
