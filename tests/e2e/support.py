"""Helpers of the end-to-end tests: credentials from the server's token store, real node processes."""

import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

from fedpipe.adapters.private_file import write_private
from fedpipe.server.auth import TokenStore, bearer


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
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - closed by the child's exit
    try:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def wait_for_nodes(url: str, researcher_token: str, node_ids: Iterable[str], timeout: float = 120.0) -> None:
    """Wait until every node in ``node_ids`` has polled the board."""
    wanted = set(node_ids)
    deadline = time.monotonic() + timeout
    while True:
        seen = httpx.get(f"{url}/nodes", headers=bearer(researcher_token), timeout=5).json()["nodes"]
        if wanted <= set(seen):
            return
        assert time.monotonic() < deadline, f"nodes never polled the server: {sorted(wanted - set(seen))}"
        time.sleep(0.3)
