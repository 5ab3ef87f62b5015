"""A content-addressed file store on disk: files named by their SHA-256, written atomically."""

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO

__all__ = ["BlobStore", "BlobWriter", "TooLarge", "is_blob_id"]

_ID = re.compile(r"[0-9a-f]{64}")


def is_blob_id(text: str) -> bool:
    """Tell whether ``text`` is a well-formed file id (a lowercase hex SHA-256), so safe as a name.

    >>> is_blob_id("a" * 64), is_blob_id("../etc/passwd"), is_blob_id("A" * 64)
    (True, False, False)
    """
    return _ID.fullmatch(text) is not None


class TooLarge(Exception):
    """The upload went over the store's size limit."""


class BlobWriter:
    """One upload in progress: a temporary file in the store, hashed as it is written."""

    def __init__(self, store: "BlobStore") -> None:
        self._store = store
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, suffix=".part")
        self._tmp = Path(name)
        self._fh: BinaryIO = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: memoryview) -> None:
        """Append ``data``; raise TooLarge past the limit."""
        self.size += len(data)
        if self.size > self._store.max_bytes:
            raise TooLarge
        self._hash.update(data)
        self._fh.write(data)

    def commit(self) -> str:
        """Make the file durable and visible under its digest; return the digest (the file id)."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        digest = self._hash.hexdigest()
        final = self._store.path(digest)
        final.parent.mkdir(exist_ok=True)
        os.replace(self._tmp, final)  # same content under the same name: replacing is harmless
        return digest

    def abort(self) -> None:
        """Drop the partial file (closing may fail again on a full disk: the file goes anyway)."""
        with contextlib.suppress(OSError):
            self._fh.close()
        self._tmp.unlink(missing_ok=True)


class BlobStore:
    """Files under ``root/objects/<2 hex>/<sha256>``; uploads in progress under ``root/tmp``.

    Opening the store removes the partial uploads a previous server left behind (killed
    mid-upload): nothing refers to them, and their clients have given up or will retry.
    """

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.tmp_dir = self.root / "tmp"
        self.objects = self.root / "objects"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.objects.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp_dir.glob("*.part"):
            with contextlib.suppress(OSError):
                stale.unlink()

    def path(self, blob_id: str) -> Path:
        """Where the file ``blob_id`` lives (``blob_id`` must satisfy ``is_blob_id``)."""
        if not is_blob_id(blob_id):
            raise ValueError("not a file id")
        return self.objects / blob_id[:2] / blob_id

    def writer(self) -> BlobWriter:
        """Start an upload."""
        return BlobWriter(self)
