"""``FileExchange`` over HTTP (httpx): allow-listed, streamed, resumable, verified downloads and uploads.

The exchange connects only to the origins (scheme, host, port) it is given: a URL elsewhere, or
one carrying user info, is refused before any connection, and redirects are followed by hand
(at most ``MAX_REDIRECTS``) only while they stay on an allowed origin, so that the exchange's
headers (a node's bearer token) never reach anywhere else.

Downloads go to a temporary sibling of the destination that is renamed into place only once the
body is complete (and its SHA-256 matches, when the URL or the server names one); uploads stream
the file from disk as the multipart field ``file`` and read the download URL from the ``file`` key
of the JSON reply. Connection errors, timeouts, 5xx and 429 are retried with capped exponential
backoff and jitter; a download retried after a cut resumes with ``Range`` when the server allows it.
Memory stays bounded by the chunk size whatever the file size.

Public texts do not tell network conditions apart (one text per direction, whatever the cause:
otherwise failure replies would let a researcher map the node's network); the cause, status and
URL stay in ``RoundError.detail`` for the node log. Only refusals decided before any connection
(a malformed URL, one off the allow-list) say why.
"""

import base64
import binascii
import contextlib
import hashlib
import ipaddress
import logging
import os
import random
import re
import ssl
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlsplit

import httpx
from attrs import frozen
from returns.result import Failure, Result, Success

from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import URL_INVALID, URL_NOT_ALLOWED

__all__ = [
    "CLIENT_LIMITS",
    "DOWNLOAD_PUBLIC",
    "KEEPALIVE_EXPIRY_S",
    "MAX_REDIRECTS",
    "UPLOAD_PUBLIC",
    "HttpFileExchange",
    "Origin",
    "Progress",
    "expected_digest",
    "origin_of",
    "parse_origin",
    "ssl_context",
]

log = logging.getLogger("fedpipe.node")

Progress = Callable[[int, int | None], None]
"""Called with (bytes done, total bytes or None) as a transfer advances."""

DOWNLOAD_PUBLIC = "Could not download a file from the file exchange."
UPLOAD_PUBLIC = "Could not upload a file to the file exchange."
MAX_REDIRECTS = 5

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
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
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
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


# origins -------------------------------------------------------------------------------------


@frozen(kw_only=True)
class Origin:
    """Where a connection goes: scheme, host (lower case, IDNA-encoded, IP literals compressed), port."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def _parse(url: str | httpx.URL) -> httpx.URL:
    """``url`` as httpx will connect to it; ValueError unless absolute http(s) with a host."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        if isinstance(url, str):
            urlsplit(url)  # httpx accepts a few strings urllib (and so the pinned digest) cannot read
    except (httpx.InvalidURL, ValueError) as err:
        raise ValueError(f"malformed URL: {err}") from err
    if parsed.scheme not in _DEFAULT_PORTS or not parsed.raw_host:
        raise ValueError("not an absolute http(s) URL")
    return parsed


def _scheme(url: str) -> str:
    """The scheme of ``url``, or "" when it cannot be parsed.

    >>> _scheme("HTTPS://h/x"), _scheme("http://[::1")
    ('https', '')
    """
    try:
        return urlsplit(url).scheme
    except ValueError:
        return ""


def _origin(url: httpx.URL) -> Origin:
    # the host as httpx hands it to the socket layer: IDNA-encoded ASCII, percent escapes kept (a
    # name with escapes is then compared, and resolved, as the literal it is, never decoded)
    try:
        host = url.raw_host.decode("ascii").lower()
    except UnicodeDecodeError as err:
        raise ValueError("host is not ASCII") from err
    with contextlib.suppress(ValueError):
        host = ipaddress.ip_address(host).compressed  # "[0:0::1]" and "[::1]" are one host
    return Origin(scheme=url.scheme, host=host, port=url.port or _DEFAULT_PORTS[url.scheme])


def origin_of(url: str) -> Origin:
    """The origin a request to ``url`` connects to; ValueError for a URL that is not absolute http(s).

    >>> str(origin_of("HTTP://Exchange.Example/files/1"))
    'http://exchange.example:80'
    >>> origin_of("https://[0:0::1]:443/x") == origin_of("https://[::1]")
    True
    """
    return _origin(_parse(url))


def parse_origin(text: str) -> Origin:
    """Read one configured origin, ``scheme://host[:port]`` (a trailing ``/`` allowed).

    ValueError for anything else (a path, query, fragment or user info), so that an owner never
    believes a path or a credential restricts what the node may reach.

    >>> str(parse_origin("https://Bücher.example/"))
    'https://xn--bcher-kva.example:443'
    >>> parse_origin("http://h/upload")
    Traceback (most recent call last):
    ValueError: an allowed origin is scheme://host[:port], not 'http://h/upload'
    """
    url = _parse(text.strip())
    if url.userinfo or url.path not in ("", "/") or url.query or url.fragment:
        raise ValueError(f"an allowed origin is scheme://host[:port], not {text!r}")
    return _origin(url)


# failures ------------------------------------------------------------------------------------


def _refusal(code: ErrorCode, url: str, why: str, reason: str) -> RoundError:
    """A transfer refused before any connection: ``reason`` (URL_INVALID, URL_NOT_ALLOWED) is public."""
    verb = "download" if code is ErrorCode.DOWNLOAD_FAILED else "upload"
    return RoundError(
        code=code, step="", detail=f"{verb} {url!r}: {why}", public=f"Could not {verb} a file: {reason}."
    )


@frozen
class _Fail:
    """One failed attempt: what to log and whether to try again (the public text is per direction)."""

    detail: str
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
        retryable=retryable,
        retry_after=_retry_after(response.headers) if retryable else None,
    )


def _transport_fail(what: str, url: httpx.URL | str, err: httpx.HTTPError) -> _Fail:
    # httpx parses a redirect's Location even when it follows none: a malformed one is what the
    # server answers, not a network fault, and asking again gets the same
    bad_location = isinstance(err, httpx.RemoteProtocolError) and str(err).startswith(
        "Invalid URL in location"
    )
    retryable = (
        isinstance(err, httpx.TransportError)
        and not isinstance(err, httpx.UnsupportedProtocol | httpx.ProxyError)
        and not bad_location
    )
    return _Fail(detail=f"{what} {url}: {type(err).__name__}: {err}", retryable=retryable)


def _storage_error(detail: str) -> RoundError:
    return RoundError(code=ErrorCode.DOWNLOAD_FAILED, step="", detail=detail, public=DOWNLOAD_PUBLIC)


KEEPALIVE_EXPIRY_S = 2.0
"""How long a client keeps an idle connection to the server: below the server's keep-alive
(``fedpipe.server.KEEPALIVE_S``, uvicorn's 5 s), which otherwise may drop a connection just as a
client reuses it, and the request on it fails (``ReadError``)."""

CLIENT_LIMITS = httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S)
"""The connection limits of every client of ``fedpipe serve`` (exchange, board, monitor, relay)."""


def ssl_context(verify: ssl.SSLContext | str | os.PathLike[str] | bool) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for a CA file or directory (a context: httpx deprecates paths); contexts and
    booleans as given."""
    if isinstance(verify, ssl.SSLContext | bool):
        return verify
    path = os.fspath(verify)
    if os.path.isdir(path):
        return ssl.create_default_context(capath=path)
    return ssl.create_default_context(cafile=path)


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


class HttpFileExchange:
    """A ``FileExchange`` talking to an HTTP file exchange (the reference's, or ``fedpipe serve``).

    ``upload_url`` receives multipart POSTs. ``allowed_origins`` are the only origins the exchange
    connects to (``scheme://host[:port]`` each, see ``parse_origin``; ValueError for a bad entry);
    None or empty means the origin of ``upload_url`` alone. Every URL, the upload URL included, is
    checked before any connection, and so is each redirect target. ``headers`` go with every
    request (so only ever to allowed origins). ``verify`` checks the server's certificate: True
    (the public CAs), a CA file or directory path, an ``ssl.SSLContext``, or False.

    Timeouts are in seconds; ``retries`` is the number of extra attempts after the first; the wait
    before attempt ``k`` is about ``backoff * 2**k`` (capped at ``max_backoff``, halved at random
    for jitter, at least a server's ``Retry-After``). ``progress`` is called as bytes move. Pass
    ``client`` to share a connection pool (``verify`` then does not apply); it is not closed by
    ``close()``. The exchange's own client ignores proxy and CA environment variables: the owner's
    settings alone decide where the node connects.
    """

    def __init__(
        self,
        upload_url: str,
        *,
        allowed_origins: Sequence[str] | None = None,
        verify: ssl.SSLContext | str | os.PathLike[str] | bool = True,
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
        self.allowed = self._allow_list(upload_url, allowed_origins)
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
            follow_redirects=False,
            trust_env=False,
            verify=ssl_context(verify),
            limits=CLIENT_LIMITS,
        )

    @staticmethod
    def _allow_list(upload_url: str, configured: Iterable[str] | None) -> frozenset[Origin]:
        entries = tuple(configured or ())
        if entries:
            return frozenset(parse_origin(entry) for entry in entries)
        try:
            return frozenset({origin_of(upload_url)})
        except ValueError:
            return frozenset()  # a malformed upload URL: every transfer is refused, none raises

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

    # egress ------------------------------------------------------------------------------------

    def _target(self, url: str | httpx.URL) -> Result[httpx.URL, tuple[str, str]]:
        """``url`` without its fragment when it may be fetched, else (why, public reason)."""
        try:
            parsed = _parse(url)
            origin = _origin(parsed)
        except ValueError as err:
            return Failure((str(err), URL_INVALID))
        if parsed.userinfo:
            return Failure(("URL carries user info", URL_NOT_ALLOWED))
        if origin not in self.allowed:
            allowed = ", ".join(sorted(map(str, self.allowed))) or "none"
            return Failure((f"origin {origin} is not allowed (allowed: {allowed})", URL_NOT_ALLOWED))
        return Success(parsed.copy_with(fragment=None))

    def _redirect(self, what: str, response: httpx.Response) -> Result[httpx.URL, _Fail]:
        """Where a redirect points, when that is on an allowed origin."""
        source = response.request.url
        location = response.headers.get("location", "")
        try:
            joined = source.join(location) if location else None
        except (httpx.InvalidURL, ValueError):
            joined = None
        if joined is None:
            return Failure(
                _Fail(f"{what} {source}: HTTP {response.status_code} without a usable Location", False)
            )
        return self._target(joined).alt(
            lambda why: _Fail(f"{what} {source}: redirect to {joined} refused: {why[0]}", False)
        )

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
        public = DOWNLOAD_PUBLIC if code is ErrorCode.DOWNLOAD_FAILED else UPLOAD_PUBLIC
        return Failure(
            RoundError(code=code, step="", detail=last.detail, public=public, retryable=last.retryable)
        )

    # download ----------------------------------------------------------------------------------

    def download(self, url: str, dest: Path, *, max_bytes: int) -> Result[Path, RoundError]:
        """Fetch ``url`` into ``dest``: complete and verified, or absent (never a partial file).

        A URL off the allowed origins (or with user info) fails before any connection.
        """
        dest = Path(dest)
        checked = self._target(url)
        if isinstance(checked, Failure):
            why, reason = checked.failure()
            return Failure(_refusal(ErrorCode.DOWNLOAD_FAILED, url, why, reason))
        target = checked.unwrap()
        try:
            partial = _Partial(dest)
        except OSError as err:
            return Failure(_storage_error(f"cannot create a download file next to {dest}: {err}"))
        pinned = expected_digest(url)
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
            return Failure(_storage_error(f"cannot store the download of {target} at {dest}: {err}"))
        finally:
            partial.discard()

    def _download_once(
        self, url: httpx.URL, partial: _Partial, max_bytes: int, pinned: str | None
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
            for _ in range(MAX_REDIRECTS + 1):
                with self._client.stream("GET", url, headers=headers, follow_redirects=False) as response:
                    if response.status_code not in _REDIRECTS:
                        return self._receive(response, partial, max_bytes, pinned, resuming)
                    hop = self._redirect("download", response)
                if isinstance(hop, Failure):
                    return hop
                url = hop.unwrap()
            return Failure(_Fail(f"download {url}: more than {MAX_REDIRECTS} redirects", False))
        except _Restart:
            partial.restart()
            return Failure(_Fail("download: the server did not continue where the partial file ends", True))
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
        source = response.request.url
        announced = _header_digest(response.headers)
        if pinned and announced and pinned != announced:
            return Failure(_Fail(f"download {source}: server digest {announced} != pinned {pinned}", False))
        expected = pinned or announced
        total = self._total(response, partial, resuming)
        if total is not None and total > max_bytes:
            return Failure(_Fail(f"download {source}: {total} bytes > limit {max_bytes}", False))
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
                return Failure(_Fail(f"download {source}: body over limit {max_bytes}", False))
            partial.write(chunk)
            if self.progress is not None:
                self.progress(partial.size, total)
        if expected is not None and partial.hash.hexdigest() != expected:
            partial.restart()
            partial.validator = None
            return Failure(_Fail(f"download {source}: SHA-256 mismatch (expected {expected})", True))
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
        """POST the file at ``path`` as multipart field ``file``; return the reply's ``file`` URL.

        An upload URL off the allowed origins fails before any connection; a 307/308 redirect is
        followed (the body sent again) only to an allowed origin, any other redirect fails.
        """
        path = Path(path)
        checked = self._target(self.upload_url)
        if isinstance(checked, Failure):
            why, reason = checked.failure()
            return Failure(_refusal(ErrorCode.UPLOAD_FAILED, self.upload_url, why, reason))
        target = checked.unwrap()
        try:
            size = path.stat().st_size
        except OSError as err:
            return Failure(
                RoundError(
                    code=ErrorCode.UPLOAD_FAILED,
                    step="",
                    detail=f"cannot read {path}: {err}",
                    public=UPLOAD_PUBLIC,
                )
            )
        return self._attempts(
            "upload", lambda: self._upload_once(target, path, size), ErrorCode.UPLOAD_FAILED
        )

    def _upload_once(self, url: httpx.URL, path: Path, size: int) -> Result[str, _Fail]:
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below, after httpx has streamed it
        except OSError as err:
            return Failure(_Fail(f"cannot read {path}: {err}", False))
        with fh:
            reader = _Reader(fh, size, self.progress)
            for _ in range(MAX_REDIRECTS + 1):
                reader.seek(0)
                files: Any = {"file": (path.name, reader, "application/octet-stream")}
                try:
                    response = self._client.post(
                        url, files=files, headers=self._headers, follow_redirects=False
                    )
                except httpx.HTTPError as err:
                    return Failure(_transport_fail("upload", url, err))
                except OSError as err:
                    return Failure(_Fail(f"cannot read {path}: {err}", False))
                if response.status_code not in (307, 308):  # only these keep the method and body
                    break
                hop = self._redirect("upload", response)
                if isinstance(hop, Failure):
                    return hop
                url = hop.unwrap()
            else:
                return Failure(_Fail(f"upload {url}: more than {MAX_REDIRECTS} redirects", False))
        if response.status_code not in (200, 201):
            return Failure(_status_fail("upload", response))
        try:
            reply = response.json()
        except ValueError:
            reply = None
        file_url = reply.get("file") if isinstance(reply, dict) else None
        if not isinstance(file_url, str) or _scheme(file_url) not in ("http", "https"):
            return Failure(
                _Fail(f"upload {url}: reply without a download URL: {response.text[:200]!r}", False)
            )
        sent = reader.hash.hexdigest()
        received = reply.get("sha256") if isinstance(reply, dict) else None
        if isinstance(received, str) and received.lower() != sent:
            return Failure(_Fail(f"upload {url}: server stored SHA-256 {received}, sent {sent}", True))
        return Success(file_url)
