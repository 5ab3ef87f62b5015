"""One process per node root: an exclusive advisory lock on ``<root>/node.lock`` (fcntl).

The kernel releases the lock when its process dies, however it dies, so a node killed with
SIGKILL never leaves a stale lock behind; the pid written into the file only serves the error
message of a second process.
"""

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

__all__ = ["NodeLock", "NodeLocked"]

LOCK_FILE = "node.lock"


class NodeLocked(Exception):
    """Another process holds the node root."""


class NodeLock:
    """Hold ``<root>/node.lock`` while the node process runs; ``acquire`` raises NodeLocked when taken."""

    def __init__(self, root: Path | str) -> None:
        self.path = Path(root) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "NodeLock":
        """Take the lock without waiting; raise NodeLocked (naming the holder's pid) when it is taken."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise NodeLocked(
                f"another node process (pid {holder}) is already running on {self.path.parent}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Let the lock go (idempotent)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "NodeLock":
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
