"""The two moves of a file exchange held in memory: a file's bytes in, a URL's bytes out to a path.

Shared by the simulation's in-memory transport and the test fakes, so that both fail as the HTTP
exchange does: an unknown URL like a 404, an oversized one like a refused download, an unreadable
upload like a failed one. Errors leave ``step`` empty (the calling step names itself).
"""

from pathlib import Path

from returns.result import Failure, Result, Success

from fedpipe.errors import ErrorCode, RoundError

__all__ = ["read_upload", "take_download", "write_download"]


def read_upload(path: Path) -> Result[bytes, RoundError]:
    """The bytes of the file to upload, or an UPLOAD_FAILED error naming it."""
    try:
        return Success(path.read_bytes())
    except OSError as err:
        return Failure(
            RoundError(
                code=ErrorCode.UPLOAD_FAILED, step="", detail=f"cannot read {path.name}: {err.strerror}"
            )
        )


def take_download(url: str, content: bytes | None, *, max_bytes: int) -> Result[bytes, RoundError]:
    """``content`` (the bytes held for ``url``; None: none are) as a download within ``max_bytes`` gives it."""
    if content is None:
        return Failure(
            RoundError(code=ErrorCode.DOWNLOAD_FAILED, step="", detail=f"GET {url}: 404 not found")
        )
    if len(content) > max_bytes:
        detail = f"GET {url}: {len(content)} bytes > limit {max_bytes}"
        return Failure(RoundError(code=ErrorCode.DOWNLOAD_FAILED, step="", detail=detail))
    return Success(content)


def write_download(
    url: str, content: bytes | None, dest: Path, *, max_bytes: int
) -> Result[Path, RoundError]:
    """Write ``content`` (the bytes held for ``url``; None: none are) to ``dest``, within ``max_bytes``."""

    def write(data: bytes) -> Path:
        dest.write_bytes(data)
        return dest

    return take_download(url, content, max_bytes=max_bytes).map(write)
