"""``FileExchange`` over HTTP (httpx): streamed, resumable, verified downloads and streamed uploads.

Downloads go to a temporary sibling of the destination that is renamed into place only once the
body is complete (and its SHA-256 matches, when the URL or the server names one); uploads stream
the file from disk as the multipart field ``file`` and read the download URL from the ``file`` key
of the JSON reply. Connection errors, timeouts, 5xx and 429 are retried with capped exponential
backoff and jitter; a download retried after a cut resumes with ``Range`` when the server allows it.
Memory stays bounded by the chunk size whatever the file size.
"""

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
from attrs import frozen
from returns.result import Failure, Result, Success

from fedpipe.errors import ErrorCode, RoundError

__all__ = ["HttpFileExchange", "Progress", "expected_digest"]

log = logging.getLogger("fedpipe.node")

Progress = Callable[[int, int | None], None]
"""Called with (bytes done, total bytes or None) as a transfer advances."""

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
CHUNK = 1024 * 1024


def _digest_param(text: str) -> str | None:
    params = parse_qs(text, keep_blank_values=False)
    for key in ("sha256", "sha-256"):
        for value in params.get(key, ()):
            if _HEX64.fullmatch(value):
                return value.lower()
    return None


def expected_digest(url: str) -> str | None:
    """The SHA-256 (hex) a URL pins in its fragment or query (``#sha256=...``, ``?sha256=...``).

    >>> expected_digest("http://x/files/1#sha256=" + "AB" * 32) == "ab" * 32
    True
    >>> expected_digest("http://x/files/1?v=2") is None
    True
    """
    parts = urlsplit(url)
    return _digest_param(parts.fragment) or _digest_param(parts.query)


def _header_digest(headers: httpx.Headers) -> str | None:
    """The SHA-256 a response names: ``X-Content-SHA256`` (hex) or ``Digest``/``Repr-Digest``."""
    value: str = headers.get("x-content-sha256", "").strip()
    if _HEX64.fullmatch(value):
        return value.lower()
    for name in ("repr-digest", "digest"):
        for item in headers.get(name, "").split(","):
            algo, _, encoded = item.strip().partition("=")
            if algo.strip().lower() != "sha-256":
                continue
            try:
                raw = base64.b64decode(encoded.strip().strip(":"), validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(raw) == 32:
                return raw.hex()
    return None


def _bad_url(url: str) -> str | None:
    """Why ``url`` cannot be fetched (not absolute http(s) with a host), or None when it can.

    >>> _bad_url("http://h:1/x"), _bad_url("ftp://h/x"), _bad_url("http://[::1")
    (None, 'not an http(s) URL', 'malformed URL')
    """
    try:
        parsed = httpx.URL(url)
        urlsplit(url)
    except (httpx.InvalidURL, ValueError):
        return "malformed URL"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return "not an http(s) URL"
    return None


def _url_error(code: ErrorCode, what: str, url: str, why: str) -> RoundError:
    return RoundError(
        code=code,
        step="",
        detail=f"{what} {url!r}: {why}",
        public=f"The file {what} URL is not a valid http(s) URL.",
    )


def _strip_fragment(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(fragment=""))


@frozen
class _Fail:
    """One failed attempt: what to log, what the researcher may read, whether to try again."""

    detail: str
    public: str
    retryable: bool
    retry_after: float | None = None


class _Restart(Exception):
    """The server did not honour a resume: start the body over from byte 0."""


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


def _status_fail(what: str, response: httpx.Response) -> _Fail:
    status = response.status_code
    retryable = status >= 500 or status == 429
    return _Fail(
        detail=f"{what} {response.request.url}: HTTP {status}",
        public=f"The file exchange answered HTTP {status} to a file {what}.",
        retryable=retryable,
        retry_after=_retry_after(response.headers) if retryable else None,
    )


def _transport_fail(what: str, url: str, err: httpx.HTTPError) -> _Fail:
    if isinstance(err, httpx.TimeoutException):
        public = f"The file exchange timed out during a file {what}."
    elif isinstance(err, httpx.RemoteProtocolError):
        public = f"The file exchange closed the connection early during a file {what}."
    else:
        public = f"The file exchange could not be reached for a file {what}."
    retryable = isinstance(err, httpx.TransportError) and not isinstance(
        err, httpx.UnsupportedProtocol | httpx.ProxyError
    )
    return _Fail(detail=f"{what} {url}: {type(err).__name__}: {err}", public=public, retryable=retryable)


class _Reader:
    """A file object for httpx's multipart encoder: large reads, hashing and progress as it goes."""

    def __init__(self, fh: BinaryIO, total: int, progress: Progress | None) -> None:
        self._fh = fh
        self._total = total
        self._progress = progress
        self.hash = hashlib.sha256()
        self.done = 0

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(max(size, CHUNK))
        self.hash.update(data)
        self.done += len(data)
        if self._progress is not None and data:
            self._progress(self.done, self._total)
        return data

    def fileno(self) -> int:
        return self._fh.fileno()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if offset == 0 and whence == os.SEEK_SET:
            self.hash = hashlib.sha256()
            self.done = 0
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()


class _Partial:
    """The bytes of one download received so far, in a temporary file next to the destination."""

    def __init__(self, dest: Path) -> None:
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
        self.path = Path(name)
        self.fh: BinaryIO = os.fdopen(fd, "wb")
        self.size = 0
        self.hash = hashlib.sha256()
        self.validator: str | None = None  # ETag (or digest) that makes a resume safe

    def restart(self) -> None:
        self.fh.seek(0)
        self.fh.truncate()
        self.size = 0
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.fh.write(data)
        self.size += len(data)
        self.hash.update(data)

    def discard(self) -> None:
        # closing flushes the buffer, which fails again on a full disk: the file goes anyway
        with contextlib.suppress(OSError):
            self.fh.close()
        self.path.unlink(missing_ok=True)


def _storage_error(detail: str) -> RoundError:
    return RoundError(
        code=ErrorCode.DOWNLOAD_FAILED,
        step="",
        detail=detail,
        public="The node could not store a downloaded file.",
    )


class HttpFileExchange:
    """A ``FileExchange`` talking to an HTTP file exchange (the reference's, or ``fedpipe serve``).

    ``upload_url`` receives multipart POSTs. Timeouts are in seconds; ``retries`` is the number of
    extra attempts after the first; the wait before attempt ``k`` is about ``backoff * 2**k``
    (capped at ``max_backoff``, halved at random for jitter, at least a server's ``Retry-After``).
    ``progress`` is called as bytes move. Pass ``client`` to share a connection pool; it is then
    not closed by ``close()``.
    """

    def __init__(
        self,
        upload_url: str,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        client: httpx.Client | None = None,
        progress: Progress | None = None,
        headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.upload_url = upload_url
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.progress = progress
        self._sleep = sleep
        self._rng = rng or random.Random()  # jitter, not security
        self._headers = dict(headers or {})
        self._owns_client = client is None
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(
                connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
            ),
            follow_redirects=True,
            max_redirects=5,
        )

    def close(self) -> None:
        """Close the connection pool (if this exchange created it)."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> "HttpFileExchange":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # retry policy ------------------------------------------------------------------------------

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap: float = min(self.max_backoff, self.backoff * (2.0**attempt))
        delay = cap / 2 + self._rng.uniform(0, cap / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        return delay

    def _attempts(
        self, what: str, once: Callable[[], Result[Any, _Fail]], code: ErrorCode
    ) -> Result[Any, RoundError]:
        last: _Fail | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                assert last is not None
                delay = self._delay(attempt - 1, last.retry_after)
                log.info(
                    "%s failed (%s); retry %d/%d in %.2fs", what, last.detail, attempt, self.retries, delay
                )
                self._sleep(delay)
            result = once()
            if isinstance(result, Success):
                return result
            last = result.failure()
            if not last.retryable:
                break
        assert last is not None
        return Failure(
            RoundError(code=code, step="", detail=last.detail, public=last.public, retryable=last.retryable)
        )

    # download ----------------------------------------------------------------------------------

    def download(self, url: str, dest: Path, *, max_bytes: int) -> Result[Path, RoundError]:
        """Fetch ``url`` into ``dest``: complete and verified, or absent (never a partial file)."""
        dest = Path(dest)
        why = _bad_url(url)
        if why is not None:
            return Failure(_url_error(ErrorCode.DOWNLOAD_FAILED, "download", url, why))
        try:
            partial = _Partial(dest)
        except OSError as err:
            return Failure(_storage_error(f"cannot create a download file next to {dest}: {err}"))
        pinned = expected_digest(url)
        target = _strip_fragment(url)
        try:
            result = self._attempts(
                "download",
                lambda: self._download_once(target, partial, max_bytes, pinned),
                ErrorCode.DOWNLOAD_FAILED,
            )
            if isinstance(result, Success):
                # no fsync: a download is re-fetchable, and the rename alone already guarantees that
                # readers never see a partial file while the node runs
                partial.fh.close()
                os.replace(partial.path, dest)
                return Success(dest)
            return result
        except OSError as err:
            return Failure(_storage_error(f"cannot store the download of {url} at {dest}: {err}"))
        finally:
            partial.discard()

    def _download_once(
        self, url: str, partial: _Partial, max_bytes: int, pinned: str | None
    ) -> Result[None, _Fail]:
        headers = {**self._headers, "Accept-Encoding": "identity"}
        resuming = partial.size > 0 and partial.validator is not None
        if resuming:
            assert partial.validator is not None
            headers["Range"] = f"bytes={partial.size}-"
            headers["If-Range"] = partial.validator
        elif partial.size:
            partial.restart()
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                return self._receive(response, partial, max_bytes, pinned, resuming)
        except _Restart:
            partial.restart()
            return Failure(
                _Fail(
                    detail="download: the server did not continue where the partial file ends",
                    public="The file exchange did not resume an interrupted download.",
                    retryable=True,
                )
            )
        except httpx.HTTPError as err:
            fail = _transport_fail("download", url, err)
            if not fail.retryable:
                partial.restart()
            return Failure(fail)

    def _receive(
        self, response: httpx.Response, partial: _Partial, max_bytes: int, pinned: str | None, resuming: bool
    ) -> Result[None, _Fail]:
        status = response.status_code
        if resuming and status == 416:
            raise _Restart
        if status not in (200, 206):
            return Failure(_status_fail("download", response))
        announced = _header_digest(response.headers)
        if pinned and announced and pinned != announced:
            return Failure(
                _Fail(
                    detail=f"download {response.request.url}: server digest {announced} != pinned {pinned}",
                    public="The file exchange serves a different file than the one requested.",
                    retryable=False,
                )
            )
        expected = pinned or announced
        total = self._total(response, partial, resuming)
        if total is not None and total > max_bytes:
            return Failure(
                _Fail(
                    detail=f"download {response.request.url}: {total} bytes > limit {max_bytes}",
                    public=f"A file to download is larger than the node's limit of {max_bytes} bytes.",
                    retryable=False,
                )
            )
        etag = response.headers.get("etag", "")
        ranges = response.headers.get("accept-ranges", "").lower() == "bytes"
        # a server that compresses anyway: store the decoded bytes, and never resume (ranges would
        # count encoded bytes); the size limit applies to the decoded bytes
        encoded = response.headers.get("content-encoding", "identity").lower() not in ("identity", "")
        resumable = ranges and not encoded and etag and not etag.startswith("W/")
        partial.validator = etag if resumable else None
        # as received (no re-chunking), so that a cut loses nothing already read
        chunks = response.iter_bytes() if encoded else response.iter_raw()
        for chunk in chunks:
            if partial.size + len(chunk) > max_bytes:
                return Failure(
                    _Fail(
                        detail=f"download {response.request.url}: body over limit {max_bytes}",
                        public=f"A file to download is larger than the node's limit of {max_bytes} bytes.",
                        retryable=False,
                    )
                )
            partial.write(chunk)
            if self.progress is not None:
                self.progress(partial.size, total)
        if expected is not None and partial.hash.hexdigest() != expected:
            partial.restart()
            partial.validator = None
            return Failure(
                _Fail(
                    detail=f"download {response.request.url}: SHA-256 mismatch (expected {expected})",
                    public="A downloaded file failed its integrity check.",
                    retryable=True,
                )
            )
        return Success(None)

    @staticmethod
    def _total(response: httpx.Response, partial: _Partial, resuming: bool) -> int | None:
        """The full file size, after checking that a 206 continues where the partial file ends."""
        if response.status_code == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
            if not resuming or match is None or int(match.group(1)) != partial.size:
                raise _Restart
            return None if match.group(3) == "*" else int(match.group(3))
        if resuming:  # the server sent the whole file again
            partial.restart()
        length = response.headers.get("content-length", "")
        return int(length) if length.isdigit() else None

    # upload ------------------------------------------------------------------------------------

    def upload(self, path: Path) -> Result[str, RoundError]:
        """POST the file at ``path`` as multipart field ``file``; return the reply's ``file`` URL."""
        path = Path(path)
        why = _bad_url(self.upload_url)
        if why is not None:
            return Failure(_url_error(ErrorCode.UPLOAD_FAILED, "upload", self.upload_url, why))
        try:
            size = path.stat().st_size
        except OSError as err:
            return Failure(
                RoundError(
                    code=ErrorCode.UPLOAD_FAILED,
                    step="",
                    detail=f"cannot read {path}: {err}",
                    public="The node could not read the file to upload.",
                )
            )
        return self._attempts("upload", lambda: self._upload_once(path, size), ErrorCode.UPLOAD_FAILED)

    def _upload_once(self, path: Path, size: int) -> Result[str, _Fail]:
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below, after httpx has streamed it
        except OSError as err:
            return Failure(
                _Fail(f"cannot read {path}: {err}", "The node could not read the file to upload.", False)
            )
        with fh:
            reader = _Reader(fh, size, self.progress)
            files: Any = {"file": (path.name, reader, "application/octet-stream")}
            try:
                response = self._client.post(self.upload_url, files=files, headers=self._headers)
            except httpx.HTTPError as err:
                return Failure(_transport_fail("upload", self.upload_url, err))
            except OSError as err:
                return Failure(
                    _Fail(f"cannot read {path}: {err}", "The node could not read the file to upload.", False)
                )
        if response.status_code not in (200, 201):
            return Failure(_status_fail("upload", response))
        try:
            reply = response.json()
        except ValueError:
            reply = None
        url = reply.get("file") if isinstance(reply, dict) else None
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            return Failure(
                _Fail(
                    detail=f"upload {self.upload_url}: reply without a download URL: {response.text[:200]!r}",
                    public="The file exchange gave no download URL for an upload.",
                    retryable=False,
                )
            )
        sent = reader.hash.hexdigest()
        received = reply.get("sha256") if isinstance(reply, dict) else None
        if isinstance(received, str) and received.lower() != sent:
            return Failure(
                _Fail(
                    detail=f"upload {self.upload_url}: server stored SHA-256 {received}, sent {sent}",
                    public="An uploaded file was corrupted in transit.",
                    retryable=True,
                )
            )
        return Success(url)
