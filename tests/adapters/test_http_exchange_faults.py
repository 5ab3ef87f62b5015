"""Fault matrix: HttpFileExchange against the real server on loopback, faults injected by a proxy.

Each case ends in success after a retry, or in a clear RoundError; never with a partial file.
"""

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from fedpipe.adapters.http_exchange import DOWNLOAD_PUBLIC, UPLOAD_PUBLIC, HttpFileExchange
from fedpipe.errors import ErrorCode, RoundError, is_public_safe
from tests.conftest import Fault, FaultProxy

SIZE = 3 * 1024 * 1024 + 17


MakeExchange = Callable[..., HttpFileExchange]


@pytest.fixture
def make_exchange(node_headers: dict[str, str]) -> MakeExchange:
    """Exchanges uploading to ``url`` with the node's credential, allowed only ``url``'s origin by default."""

    def make(url: str, **options: object) -> HttpFileExchange:
        settings: dict[str, object] = {"retries": 3, "backoff": 0.01, "read_timeout": 5.0}
        settings["headers"] = node_headers
        settings.update(options)
        return HttpFileExchange(f"{url}/upload", **settings)  # type: ignore[arg-type]

    return make


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    path = tmp_path / "payload.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture
def published(make_exchange: MakeExchange, proxy: FaultProxy, payload: Path) -> str:
    """The payload uploaded through the (clean) proxy: its download URL points at the proxy."""
    with make_exchange(proxy.url) as ex:
        url = ex.upload(payload).unwrap()
    proxy.seen.clear()
    return url


def node_dir(tmp_path: Path) -> Path:
    d = tmp_path / "node"
    d.mkdir(exist_ok=True)
    return d


def assert_clean_failure(error: RoundError, code: ErrorCode, dest: Path, cause: str) -> None:
    """One public text whatever the cause (no network oracle); the cause is in the log detail."""
    assert error.code is code
    assert error.public == (DOWNLOAD_PUBLIC if code is ErrorCode.DOWNLOAD_FAILED else UPLOAD_PUBLIC)
    assert is_public_safe(error.public)
    assert cause in error.detail
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_a_500_then_success_downloads_after_one_retry(
    make_exchange: MakeExchange, proxy: FaultProxy, published: str, payload: Path, tmp_path: Path
) -> None:
    proxy.script(Fault("status", status=500))
    dest = node_dir(tmp_path) / "p.bin"
    with make_exchange(proxy.url) as ex:
        assert ex.download(published, dest, max_bytes=SIZE).unwrap() == dest
    assert dest.read_bytes() == payload.read_bytes()
    assert len(proxy.seen) == 2


def test_a_500_then_success_uploads_after_one_retry(
    make_exchange: MakeExchange, proxy: FaultProxy, payload: Path
) -> None:
    proxy.script(Fault("status", status=503))
    with make_exchange(proxy.url) as ex:
        url = ex.upload(payload).unwrap()
    assert url.startswith(proxy.url + "/files/")
    assert [s.method for s in proxy.seen] == ["POST", "POST"]


def test_persistent_5xx_is_a_retryable_error_after_bounded_retries(
    make_exchange: MakeExchange, proxy: FaultProxy, published: str, tmp_path: Path
) -> None:
    proxy.always = Fault("status", status=502)
    dest = node_dir(tmp_path) / "p.bin"
    with make_exchange(proxy.url, retries=2) as ex:
        error = ex.download(published, dest, max_bytes=SIZE).failure()
    assert_clean_failure(error, ErrorCode.DOWNLOAD_FAILED, dest, "HTTP 502")
    assert error.retryable
    assert len(proxy.seen) == 3


def test_connection_reset_mid_body_resumes_with_range(
    make_exchange: MakeExchange, proxy: FaultProxy, published: str, payload: Path, tmp_path: Path
) -> None:
    proxy.script(Fault("reset", keep=1_000_000))
    dest = node_dir(tmp_path) / "p.bin"
    with make_exchange(proxy.url) as ex:
        ex.download(published, dest, max_bytes=SIZE).unwrap()
    assert dest.read_bytes() == payload.read_bytes()
    ranges = [s.headers.get("range") for s in proxy.seen]
    assert ranges[0] is None
    assert ranges[-1] is not None
    assert ranges[-1].startswith("bytes=")
    assert ranges[-1] != "bytes=0-"
    assert proxy.seen[-1].headers["if-range"].strip('"') in published


def test_truncated_body_resumes_with_range(
    make_exchange: MakeExchange, proxy: FaultProxy, published: str, payload: Path, tmp_path: Path
) -> None:
    proxy.script(Fault("truncate", keep=SIZE - 10))
    dest = node_dir(tmp_path) / "p.bin"
    with make_exchange(proxy.url) as ex:
        ex.download(published, dest, max_bytes=SIZE).unwrap()
    assert dest.read_bytes() == payload.read_bytes()
    assert proxy.seen[-1].headers.get("range") == f"bytes={SIZE - 10}-"


def test_cut_without_range_support_restarts_from_zero(
    make_exchange: MakeExchange, proxy: FaultProxy, published: str, payload: Path, tmp_path: Path
) -> None:
    proxy.always = Fault("pass", ranges=False)
    proxy.script(Fault("truncate", keep=5000, ranges=False))
    dest = node_dir(tmp_path) / "p.bin"
    with make_exchange(proxy.url) as ex:
        ex.download(published, dest, max_bytes=SIZE).unwrap()
    assert dest.read_bytes() == payload.read_bytes()
    assert all("range" not in s.headers for s in proxy.seen)


def test_wrong_digest_once_is_retried_from_scratch(
    make_exchange: MakeExchange, proxy: FaultProxy, published: str, payload: Path, tmp_path: Path
) -> None:
    proxy.script(Fault("corrupt"))
    dest = node_dir(tmp_path) / "p.bin"
    with make_exchange(proxy.url) as ex:
        ex.download(published, dest, max_bytes=SIZE).unwrap()
    assert dest.read_bytes() == payload.read_bytes()
    assert len(proxy.seen) == 2


def test_wrong_digest_always_is_an_integrity_error(
    make_exchange: MakeExchange, proxy: FaultProxy, published: str, tmp_path: Path
) -> None:
    proxy.always = Fault("corrupt")
    dest = node_dir(tmp_path) / "p.bin"
    with make_exchange(proxy.url, retries=1) as ex:
        error = ex.download(published, dest, max_bytes=SIZE).failure()
    assert_clean_failure(error, ErrorCode.DOWNLOAD_FAILED, dest, "SHA-256 mismatch")


def test_digest_pinned_in_the_url_must_match(
    make_exchange: MakeExchange, proxy: FaultProxy, published: str, tmp_path: Path
) -> None:
    dest = node_dir(tmp_path) / "p.bin"
    with make_exchange(proxy.url) as ex:
        error = ex.download(published + "#sha256=" + "ab" * 32, dest, max_bytes=SIZE).failure()
    assert_clean_failure(error, ErrorCode.DOWNLOAD_FAILED, dest, "!= pinned")
    assert not error.retryable
    assert len(proxy.seen) == 1


def test_digest_pinned_in_the_url_is_checked_without_server_header(
    make_exchange: MakeExchange, tmp_path: Path
) -> None:
    import hashlib

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from fedpipe.server.testing import running_app

    # a plain static server that names no digest: only the URL's pin protects the node
    content = b"payload" * 1000

    async def plain(request: Request) -> Response:
        return Response(content, media_type="application/octet-stream")

    app = Starlette(routes=[Route("/f", plain)])
    good, bad = node_dir(tmp_path) / "good.bin", tmp_path / "bad" / "bad.bin"
    bad.parent.mkdir()
    with running_app(app) as url, make_exchange(url) as ex:
        pinned = ex.download(f"{url}/f#sha256={hashlib.sha256(content).hexdigest()}", good, max_bytes=10**6)
        error = ex.download(f"{url}/f#sha256={'ab' * 32}", bad, max_bytes=10**6).failure()
    assert pinned.unwrap().read_bytes() == content
    assert_clean_failure(error, ErrorCode.DOWNLOAD_FAILED, bad, "SHA-256 mismatch")


def test_server_slower_than_the_timeout_is_retried_then_fails(
    make_exchange: MakeExchange, proxy: FaultProxy, published: str, tmp_path: Path
) -> None:
    proxy.always = Fault("delay", seconds=1.0)
    dest = node_dir(tmp_path) / "p.bin"
    with make_exchange(proxy.url, retries=1, read_timeout=0.2) as ex:
        error = ex.download(published, dest, max_bytes=SIZE).failure()
    assert_clean_failure(error, ErrorCode.DOWNLOAD_FAILED, dest, "ReadTimeout")
    assert error.retryable
    assert len(proxy.seen) == 2


def test_server_slow_once_succeeds_on_retry(
    make_exchange: MakeExchange, proxy: FaultProxy, published: str, payload: Path, tmp_path: Path
) -> None:
    proxy.script(Fault("delay", seconds=1.0))
    dest = node_dir(tmp_path) / "p.bin"
    with make_exchange(proxy.url, read_timeout=0.3) as ex:
        ex.download(published, dest, max_bytes=SIZE).unwrap()
    assert dest.read_bytes() == payload.read_bytes()


def test_404_fails_at_once_without_retry(
    make_exchange: MakeExchange, proxy: FaultProxy, tmp_path: Path
) -> None:
    dest = node_dir(tmp_path) / "p.bin"
    with make_exchange(proxy.url) as ex:
        error = ex.download(f"{proxy.url}/files/{'0' * 64}", dest, max_bytes=SIZE).failure()
    assert_clean_failure(error, ErrorCode.DOWNLOAD_FAILED, dest, "HTTP 404")
    assert not error.retryable
    assert len(proxy.seen) == 1


@pytest.mark.parametrize("status", [400, 403, 413])
def test_other_4xx_on_upload_are_not_retried(
    make_exchange: MakeExchange, proxy: FaultProxy, payload: Path, status: int
) -> None:
    proxy.script(Fault("status", status=status))
    with make_exchange(proxy.url) as ex:
        error = ex.upload(payload).failure()
    assert error.code is ErrorCode.UPLOAD_FAILED
    assert not error.retryable
    assert len(proxy.seen) == 1


def test_429_waits_at_least_retry_after(
    make_exchange: MakeExchange, proxy: FaultProxy, published: str, tmp_path: Path
) -> None:
    proxy.script(Fault("status", status=429, headers={"Retry-After": "2"}))
    slept: list[float] = []
    dest = node_dir(tmp_path) / "p.bin"
    with make_exchange(proxy.url, sleep=slept.append) as ex:
        ex.download(published, dest, max_bytes=SIZE).unwrap()
    assert slept == [2.0]


def test_failed_download_leaves_an_existing_destination_unchanged(
    make_exchange: MakeExchange, proxy: FaultProxy, published: str, tmp_path: Path
) -> None:
    dest = node_dir(tmp_path) / "p.bin"
    dest.write_bytes(b"previous round")
    proxy.always = Fault("reset", keep=100)
    with make_exchange(proxy.url, retries=1) as ex:
        error = ex.download(published, dest, max_bytes=SIZE).failure()
    assert error.retryable
    assert error.public == DOWNLOAD_PUBLIC
    assert dest.read_bytes() == b"previous round"
    assert list(dest.parent.iterdir()) == [dest]


@pytest.mark.parametrize(
    "body", ["ok", '{"file": 5}', '{"file": "ftp://h/x"}', '{"file": "http://[::1"}', '["file"]']
)
def test_upload_reply_without_a_url_is_an_error(
    make_exchange: MakeExchange, payload: Path, tmp_path: Path, body: str
) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from fedpipe.server.testing import running_app

    async def no_url(request: object) -> PlainTextResponse:
        return PlainTextResponse(body, status_code=201)

    app = Starlette(routes=[Route("/upload", no_url, methods=["POST"])])
    with running_app(app) as url, make_exchange(url) as ex:
        error = ex.upload(payload).failure()
    assert error.code is ErrorCode.UPLOAD_FAILED
    assert error.public == UPLOAD_PUBLIC
    assert "without a download URL" in error.detail
    assert not error.retryable


def test_disk_full_on_the_node_is_a_clear_error_without_partial_file(
    proxy: FaultProxy, published: str, node_headers: dict[str, str], tmp_path: Path
) -> None:
    # a real failing write: the child process may not grow any file past 1 MiB (RLIMIT_FSIZE)
    dest = node_dir(tmp_path) / "p.bin"
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        from fedpipe.adapters.http_exchange import HttpFileExchange
        with HttpFileExchange(
            "unused", allowed_origins=[{proxy.url!r}], headers={node_headers!r}, retries=2, backoff=0.01
        ) as ex:
            error = ex.download({published!r}, Path({str(dest)!r}), max_bytes={SIZE}).failure()
        print(error.code, error.retryable, error.public, error.detail.replace("|", "/"), sep="|")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=Path.cwd()
    )
    assert out.returncode == 0, out.stderr
    code, retryable, public, detail = out.stdout.strip().split("|")
    assert code == "download_failed"
    assert retryable == "False"
    assert public == DOWNLOAD_PUBLIC
    assert "cannot store the download" in detail
    assert list(dest.parent.iterdir()) == []


def test_unwritable_destination_directory_is_a_clear_error(
    make_exchange: MakeExchange, proxy: FaultProxy, published: str, tmp_path: Path
) -> None:
    dest = tmp_path / "missing-dir" / "p.bin"
    with make_exchange("http://127.0.0.1:1", allowed_origins=[proxy.url]) as ex:
        error = ex.download(published, dest, max_bytes=SIZE).failure()
    assert error.code is ErrorCode.DOWNLOAD_FAILED
    assert not error.retryable
    assert "cannot create a download file" in error.detail
    assert not dest.parent.exists()


def test_connection_refused_backs_off_exponentially_with_jitter(payload: Path) -> None:
    with socket_closed_port() as port:
        slept: list[float] = []
        with HttpFileExchange(
            f"http://127.0.0.1:{port}/upload", retries=4, backoff=0.1, max_backoff=0.5, sleep=slept.append
        ) as ex:
            error = ex.upload(payload).failure()
    assert error.retryable
    assert error.public == UPLOAD_PUBLIC
    assert "ConnectError" in error.detail
    caps = [0.1, 0.2, 0.4, 0.5]
    assert len(slept) == 4
    assert all(cap / 2 <= s <= cap for s, cap in zip(slept, caps, strict=True))


def socket_closed_port() -> "ClosedPort":
    return ClosedPort()


class ClosedPort:
    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port: int = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc: object) -> None:
        return None


def test_shared_client_is_not_closed_by_the_exchange(
    server: str, node_headers: dict[str, str], payload: Path
) -> None:
    with httpx.Client() as client:
        with HttpFileExchange(f"{server}/upload", client=client, headers=node_headers) as ex:
            ex.upload(payload).unwrap()
        assert not client.is_closed


def test_upload_stored_with_another_digest_is_retried_then_fails(
    make_exchange: MakeExchange, payload: Path
) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from fedpipe.server.testing import running_app

    calls: list[int] = []

    async def lying(request: Request) -> JSONResponse:
        calls.append(len(await request.body()))
        return JSONResponse({"file": "http://127.0.0.1:1/files/x", "sha256": "00" * 32}, status_code=201)

    app = Starlette(routes=[Route("/upload", lying, methods=["POST"])])
    with running_app(app) as url, make_exchange(url, retries=1) as ex:
        error = ex.upload(payload).failure()
    assert error.code is ErrorCode.UPLOAD_FAILED
    assert error.public == UPLOAD_PUBLIC
    assert "server stored SHA-256" in error.detail
    assert len(calls) == 2
    assert all(n > SIZE for n in calls)


def test_compressed_response_is_stored_decoded_and_size_checked(
    make_exchange: MakeExchange, tmp_path: Path
) -> None:
    import gzip

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from fedpipe.server.testing import running_app

    body = b"a" * 100_000

    async def gz(request: Request) -> Response:
        headers = {"Content-Encoding": "gzip", "Accept-Ranges": "bytes", "ETag": '"e"'}
        return Response(gzip.compress(body), headers=headers)

    app = Starlette(routes=[Route("/f", gz)])
    dest = node_dir(tmp_path) / "p.bin"
    with running_app(app) as url, make_exchange(url) as ex:
        ex.download(f"{url}/f", dest, max_bytes=len(body)).unwrap()
        assert dest.read_bytes() == body
        bomb = ex.download(f"{url}/f", dest.with_name("bomb"), max_bytes=10_000).failure()
    assert bomb.public == DOWNLOAD_PUBLIC
    assert "over limit" in bomb.detail
    assert not dest.with_name("bomb").exists()
