"""FileExchange contract, run against HttpFileExchange on the real server and against the fake."""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from attrs import frozen
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpipe.adapters.http_exchange import HttpFileExchange, expected_digest
from fedpipe.errors import ErrorCode, is_public_safe
from fedpipe.ports import URL_INVALID, FileExchange
from fedpipe.testing.fakes import InMemoryFileExchange


@frozen
class Subject:
    exchange: FileExchange
    publish: Callable[[bytes], str]
    missing_url: str


@pytest.fixture(params=["http", "fake"])
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    if request.param == "fake":
        fake = InMemoryFileExchange()
        yield Subject(
            fake, lambda content: fake.publish(f"f{len(fake.files)}", content), "http://exchange.invalid/nope"
        )
        return
    server = request.getfixturevalue("server")
    staging = tmp_path / "staging"
    staging.mkdir()
    headers = request.getfixturevalue("node_headers")
    with HttpFileExchange(f"{server}/upload", retries=1, backoff=0.01, headers=headers) as ex:

        def publish(content: bytes) -> str:
            path = staging / "blob"
            path.write_bytes(content)
            return ex.upload(path).unwrap()

        yield Subject(ex, publish, f"{server}/files/{'f' * 64}")


@pytest.fixture
def node(tmp_path: Path) -> Path:
    d = tmp_path / "node"
    d.mkdir()
    return d


@pytest.mark.parametrize("size", [0, 1, 70_000, 2_500_000])
def test_download_returns_the_published_bytes(subject: Subject, node: Path, size: int) -> None:
    content = os.urandom(size)
    dest = node / "x.bin"
    assert subject.exchange.download(subject.publish(content), dest, max_bytes=size).unwrap() == dest
    assert dest.read_bytes() == content
    assert list(node.iterdir()) == [dest]


def test_uploaded_file_can_be_downloaded_from_the_returned_url(
    subject: Subject, node: Path, tmp_path: Path
) -> None:
    src = tmp_path / "results.mpk"
    src.write_bytes(b"results" * 1000)
    url = subject.exchange.upload(src).unwrap()
    subject.exchange.download(url, node / "back", max_bytes=10**6).unwrap()
    assert (node / "back").read_bytes() == src.read_bytes()


def test_unknown_url_is_a_download_failure_and_leaves_nothing(subject: Subject, node: Path) -> None:
    error = subject.exchange.download(subject.missing_url, node / "x", max_bytes=100).failure()
    assert error.code is ErrorCode.DOWNLOAD_FAILED
    assert error.step == ""
    assert not error.retryable
    assert list(node.iterdir()) == []


def test_file_over_the_limit_is_refused_and_leaves_nothing(subject: Subject, node: Path) -> None:
    url = subject.publish(b"x" * 1001)
    error = subject.exchange.download(url, node / "x", max_bytes=1000).failure()
    assert error.code is ErrorCode.DOWNLOAD_FAILED
    assert not error.retryable
    assert list(node.iterdir()) == []


def test_upload_of_a_missing_file_is_an_upload_failure(subject: Subject, tmp_path: Path) -> None:
    error = subject.exchange.upload(tmp_path / "absent").failure()
    assert error.code is ErrorCode.UPLOAD_FAILED
    assert is_public_safe(error.public)


# -- HttpFileExchange only -------------------------------------------------------------------


def test_progress_reports_growing_counts_up_to_the_size(
    server: str, node_headers: dict[str, str], tmp_path: Path
) -> None:
    seen: list[tuple[int, int | None]] = []
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3_000_000))

    def progress(done: int, total: int | None) -> None:
        seen.append((done, total))

    with HttpFileExchange(f"{server}/upload", progress=progress, headers=node_headers) as ex:
        url = ex.upload(src).unwrap()
        uploads, seen[:] = list(seen), []
        ex.download(url, tmp_path / "copy", max_bytes=3_000_000).unwrap()
    for events in (uploads, seen):
        counts = [done for done, _ in events]
        assert counts == sorted(counts)
        assert counts[-1] == 3_000_000
        assert {total for _, total in events} == {3_000_000}


def test_upload_reply_carries_digest_and_size(
    server: str, node_headers: dict[str, str], tmp_path: Path
) -> None:
    import hashlib

    import httpx

    src = tmp_path / "x"
    src.write_bytes(b"abc")
    with open(src, "rb") as fh:
        reply = httpx.post(f"{server}/upload/", files={"file": ("../../evil name", fh)}, headers=node_headers)
    assert reply.status_code == 201
    body = reply.json()
    digest = hashlib.sha256(b"abc").hexdigest()
    assert body["id"] == body["sha256"] == digest
    assert body["size"] == 3
    assert body["file"] == f"{server}/files/{digest}"
    head = httpx.head(body["file"], headers=node_headers)
    assert head.headers["x-content-sha256"] == digest


def test_expected_digest_reads_fragment_and_query() -> None:
    h = "0f" * 32
    assert expected_digest(f"http://h/f?sha256={h}") == h
    assert expected_digest(f"http://h/f#sha-256={h}") == h
    assert expected_digest("http://h/f#sha256=short") is None


@pytest.mark.parametrize(
    "url", ["not a url", "ftp://h/x", "http://", "http://[::1", "", "http://\x00/", "/a/b"]
)
def test_malformed_urls_are_clear_non_retryable_failures(url: str, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with HttpFileExchange(url, retries=3) as ex:
        down = ex.download(url, tmp_path / "out", max_bytes=10).failure()
        up = ex.upload(src).failure()
    assert (down.code, up.code) == (ErrorCode.DOWNLOAD_FAILED, ErrorCode.UPLOAD_FAILED)
    assert URL_INVALID in down.public
    assert URL_INVALID in up.public
    assert not down.retryable
    assert not up.retryable
    assert not (tmp_path / "out").exists()


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=30), st.text(max_size=20))
def test_download_never_raises_whatever_the_url(
    tmp_path_factory: pytest.TempPathFactory, path: str, fragment: str
) -> None:
    node = tmp_path_factory.mktemp("n")
    with HttpFileExchange("http://127.0.0.1:1/upload", retries=0, connect_timeout=0.5) as ex:
        result = ex.download(f"http://127.0.0.1:1/{path}#{fragment}", node / "x", max_bytes=10)
    assert result.failure().code is ErrorCode.DOWNLOAD_FAILED
    assert list(node.iterdir()) == []


def test_clients_drop_idle_connections_before_the_server_does() -> None:
    # a connection the server closes just as a client reuses it fails the request on it (ReadError)
    from fedpipe.adapters.http_exchange import CLIENT_LIMITS, KEEPALIVE_EXPIRY_S
    from fedpipe.server import KEEPALIVE_S

    assert CLIENT_LIMITS.keepalive_expiry == KEEPALIVE_EXPIRY_S < KEEPALIVE_S / 2
