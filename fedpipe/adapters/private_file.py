"""Writing secrets (tokens) to files only their owner can read, never through a wider-mode file."""

import os
from pathlib import Path

__all__ = ["write_private"]


def write_private(path: Path | str, text: str) -> Path:
    """Write ``text`` and a newline to ``path`` with mode 0600 (created or replaced atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
