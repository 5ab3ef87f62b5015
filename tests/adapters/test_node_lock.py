"""NodeLock: one process per node root; the kernel frees the lock however its holder dies."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedpipe.adapters.lock import NodeLock, NodeLocked


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    """While one NodeLock holds a root, another (even in the same process) is refused with the pid."""
    with NodeLock(tmp_path), pytest.raises(NodeLocked, match=rf"pid {os.getpid()}\)"):
        NodeLock(tmp_path).acquire()
    with NodeLock(tmp_path):  # released on exit: it can be taken again
        pass


def test_release_is_idempotent_and_clears_the_pid(tmp_path: Path) -> None:
    lock = NodeLock(tmp_path).acquire()
    lock.release()
    lock.release()
    assert (tmp_path / "node.lock").read_text() == ""


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    """SIGKILL of the holding process frees the root at once; nothing needs cleaning up."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from fedpipe.adapters.lock import NodeLock; "
            f"NodeLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        with pytest.raises(NodeLocked, match=rf"pid {holder.pid}\)"):
            NodeLock(tmp_path).acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
    deadline = time.monotonic() + 5
    while True:
        try:
            NodeLock(tmp_path).acquire().release()
            break
        except NodeLocked:
            assert time.monotonic() < deadline
            time.sleep(0.05)
