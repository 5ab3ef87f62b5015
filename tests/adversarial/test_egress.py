"""Egress allow-list: the node connects only to its allowed exchange origins, and says nothing else.

Real sockets throughout: "traps" are listening sockets that count every connection they accept
(the node must make none to them), allowed origins are tiny HTTP servers on loopback that answer
what a test scripts (404, a redirect, a file), and the public-message law drives the real fetch
steps with the real ``HttpFileExchange`` against the real file-exchange server and fault proxy.
"""

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from attrs import define, field
from hypothesis import given
from hypothesis import strategies as st

from fedpipe.adapters.http_exchange import (
    DOWNLOAD_PUBLIC,
    MAX_REDIRECTS,
    UPLOAD_PUBLIC,
    HttpFileExchange,
    origin_of,
    parse_origin,
)
from fedpipe.context import RoundContext, new_context
from fedpipe.errors import ErrorCode, RoundError, printable
from fedpipe.ports import URL_INVALID, URL_NOT_ALLOWED
from fedpipe.request import parse_request
from fedpipe.settings import NodeSettings
from fedpipe.steps.fetch import (
    MAX_PLAN_SOURCE_BYTES,
    fetch_aggregator_args,
    fetch_aux_vars,
    fetch_params,
    fetch_plan,
)
from fedpipe.testing import FakeNode
from tests.conftest import Fault, FaultProxy

TOKEN = {"Authorization": "Bearer node-secret"}


# --- real listeners on loopback -------------------------------------------------------------


@define
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


Responder = Callable[[Seen], bytes]


def http(status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    """One whole HTTP/1.1 response that closes the connection."""
    lines = [f"HTTP/1.1 {status} Scripted", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def not_found(seen: Seen) -> bytes:
    return http(404)


@define
class Listener:
    """A TCP listener on one port of several loopback addresses, counting the connections it accepts.

    Without ``respond`` it is a trap: each connection is counted, then closed at once. With it,
    the request (head and body) is read and ``respond``'s bytes are sent back. The count goes up
    before the connection is closed, so a client that returned has always been counted.
    """

    hosts: Sequence[str] = ("127.0.0.1",)
    port: int = 0
    respond: Responder | None = None
    tls: ssl.SSLContext | None = None
    connections: int = 0
    seen: list[Seen] = field(factory=list)
    _sockets: list[socket.socket] = field(factory=list)
    _lock: threading.Lock = field(factory=threading.Lock)

    def __attrs_post_init__(self) -> None:
        for _ in range(50):  # another process may hold the port on a second address: pick again
            with contextlib.suppress(OSError):
                self._bind()
                break
        else:
            raise RuntimeError(f"no free port on all of {self.hosts}")
        for sock in self._sockets:
            threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _bind(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        port = self.port
        for host in self.hosts:
            sock = socket.socket()
            self._sockets.append(sock)
            sock.bind((host, port))
            sock.listen(32)
            port = sock.getsockname()[1]
        self.port = port

    @property
    def origin(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.hosts[0]}:{self.port}"

    def url(self, path: str = "/", host: str | None = None) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host or self.hosts[0]}:{self.port}{path}"

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            if self.respond is None:
                conn.close()
            else:
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        assert self.respond is not None
        with contextlib.suppress(OSError, ValueError), raw:
            raw.settimeout(10)
            conn = self.tls.wrap_socket(raw, server_side=True) if self.tls else raw
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            length = int(headers.get("content-length", "0"))
            chunked = headers.get("transfer-encoding", "").lower() == "chunked"
            while (len(body) < length) or (chunked and not body.endswith(b"0\r\n\r\n")):
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                body += chunk
            seen = Seen(method, target, headers, body)
            with self._lock:
                self.seen.append(seen)
            conn.sendall(self.respond(seen))


@contextlib.contextmanager
def listening(*hosts: str, port: int = 0, respond: Responder | None = None) -> Iterator[Listener]:
    listener = Listener(hosts or ("127.0.0.1",), port=port, respond=respond)
    try:
        yield listener
    finally:
        listener.close()


@pytest.fixture
def trap() -> Iterator[Listener]:
    """A trap on one port of both 127.0.0.1 and 127.0.0.2: the node must never connect to it."""
    with listening("127.0.0.1", "127.0.0.2") as t:
        yield t


@pytest.fixture
def allowed() -> Iterator[Listener]:
    """The node's one allowed origin: a server on 127.0.0.1 that answers 404 to everything."""
    with listening(respond=not_found) as a:
        yield a


@pytest.fixture
def twin(allowed: Listener) -> Iterator[Listener]:
    """A trap on 127.0.0.2 at the allowed origin's port: same port, another host."""
    with listening("127.0.0.2", port=allowed.port) as t:
        yield t


def exchange(*origins: str, **options: Any) -> HttpFileExchange:
    settings: dict[str, Any] = {
        "retries": 0,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
        "headers": TOKEN,
        "allowed_origins": list(origins),
    }
    settings.update(options)
    return HttpFileExchange(f"{origins[0]}/upload", **settings)


def download(ex: HttpFileExchange, url: str, tmp_path: Path, max_bytes: int = 10_000) -> Any:
    dest = tmp_path / "dl" / "file"
    dest.parent.mkdir(exist_ok=True)
    return ex.download(url, dest, max_bytes=max_bytes)


def assert_refused_before_connecting(error: RoundError, code: ErrorCode = ErrorCode.DOWNLOAD_FAILED) -> None:
    assert error.code is code
    assert not error.retryable
    assert URL_NOT_ALLOWED in error.public or URL_INVALID in error.public, error


# --- origins ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("HTTP://Exchange.Example", "http://exchange.example:80/"),
        ("https://exchange.example:443/", "https://EXCHANGE.example"),
        ("http://[::1]:80", "http://[0:0::1]/"),
        ("https://bücher.example", "https://xn--bcher-kva.example:443"),
    ],
)
def test_equivalent_spellings_are_one_origin(a: str, b: str) -> None:
    assert parse_origin(a) == parse_origin(b) == origin_of(b + "/some/path?q#f")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("http://exchange.example", "https://exchange.example"),
        ("http://exchange.example", "http://exchange.example:8080"),
        ("http://exchange.example", "http://exchange.example.evil"),
        ("http://exchange.example", "http://exchange.example."),
        ("http://127.0.0.1", "http://127.1"),
        ("http://allowed", "http://%61llowed"),
    ],
)
def test_different_origins_stay_different(a: str, b: str) -> None:
    assert origin_of(a) != origin_of(b)


@pytest.mark.parametrize(
    "text",
    ["http://h/upload", "http://u:p@h", "http://h?x=1", "http://h#f", "ftp://h", "h:80", "http://", ""],
)
def test_a_configured_origin_is_scheme_host_port_only(text: str) -> None:
    with pytest.raises(ValueError):
        parse_origin(text)
    with pytest.raises(ValueError):
        HttpFileExchange("http://h/upload", allowed_origins=[text])


# --- nothing outside the allow-list is ever connected to ------------------------------------


def tricks(allowed: Listener, trap: Listener) -> list[tuple[str, bool]]:
    """URLs and whether the node may fetch them (allowed at 127.0.0.1:A; traps at :T and 127.0.0.2)."""
    a, t = allowed.port, trap.port
    return [
        (f"http://127.0.0.1:{a}/files/x", True),  # controls: the allowed origin is reachable
        (f"HTTP://127.0.0.1:0{a}/files/x", True),
        (f"http://127.0.0.1:{a}/a@127.0.0.2:{t}/#@x", True),  # '@' in the path is only a path
        (f"http://127.0.0.1:{t}/files/x", False),  # another port
        (f"http://127.0.0.2:{t}/files/x", False),  # another host
        (f"http://127.0.0.2:{a}/files/x", False),  # another host, same port
        (f"https://127.0.0.1:{a}/files/x", False),  # another scheme
        (f"http://user:pw@127.0.0.1:{a}/files/x", False),  # user info, even on the allowed origin
        (f"http://127.0.0.1:{a}@127.0.0.2:{t}/files/x", False),  # the allowed origin as user info
        (f"http://127.0.0.2:{t}#@127.0.0.1:{a}/", False),  # the allowed origin in the fragment
        (f"http://127.0.0.2:{t}?@127.0.0.1:{a}/", False),  # ... in the query
        (f"http://127.0.0.2:{t}\\@127.0.0.1:{a}/", False),  # backslash parsers disagree on
        (f"http://127.0.0.1%3A{a}@127.0.0.2:{t}/", False),
        (f"http://127.0.0.1:{a}.127.0.0.2:{t}/", False),
        (f"http://localhost:{a}/files/x", False),  # other names for the allowed host
        (f"http://127.1:{a}/files/x", False),
        (f"http://2130706433:{a}/files/x", False),
        (f"http://0x7f.0.0.1:{a}/files/x", False),
        (f"http://[::ffff:127.0.0.1]:{a}/files/x", False),
        (f"http://127.0.0.1.:{a}/files/x", False),
        (f"http://%31%32%37.0.0.1:{a}/files/x", False),  # percent-encoded host
        (f"http://127.0.0.1.allowed.invalid:{a}/", False),  # the allowed host as a prefix
        (f"http://xn--bcher-kva.invalid:{a}/", False),  # IDNA
        (f"http://bücher.invalid:{a}/", False),
        (f"//127.0.0.2:{t}/files/x", False),  # scheme-relative
        (f"http:127.0.0.2:{t}/files/x", False),
        (f"file:///etc/passwd#127.0.0.1:{a}", False),
    ]


def test_tricky_urls_reach_the_allowed_origin_only(
    allowed: Listener, trap: Listener, twin: Listener, tmp_path: Path
) -> None:
    with exchange(allowed.origin) as ex:
        for url, may in tricks(allowed, trap):
            before = allowed.connections
            error = download(ex, url, tmp_path).failure()
            assert allowed.connections == before + may, url
            if may:
                assert error.detail.endswith("HTTP 404"), url  # the allowed server answered
                assert allowed.seen[-1].headers["authorization"] == TOKEN["Authorization"]
            else:
                assert_refused_before_connecting(error)
    assert (trap.connections, twin.connections) == (0, 0)


def test_upload_url_outside_the_allow_list_is_refused_before_connecting(
    allowed: Listener, trap: Listener, tmp_path: Path
) -> None:
    src = tmp_path / "results.mpk"
    src.write_bytes(b"results")
    for url in (
        trap.url("/upload"),
        trap.url("/upload", host="127.0.0.2"),
        f"http://u:p@127.0.0.1:{allowed.port}/upload",
    ):
        with HttpFileExchange(url, allowed_origins=[allowed.origin], headers=TOKEN, retries=3) as ex:
            assert_refused_before_connecting(ex.upload(src).failure(), ErrorCode.UPLOAD_FAILED)
    assert (trap.connections, allowed.connections) == (0, 0)


def test_default_allow_list_is_the_upload_origin(allowed: Listener, trap: Listener, tmp_path: Path) -> None:
    with HttpFileExchange(allowed.url("/upload"), headers=TOKEN, retries=0) as ex:
        assert "HTTP 404" in download(ex, allowed.url("/files/x"), tmp_path).failure().detail
        assert_refused_before_connecting(download(ex, trap.url("/files/x"), tmp_path).failure())
    assert (allowed.connections, trap.connections) == (1, 0)


SCHEMES = st.sampled_from(["http", "HTTP", "HtTp", "https", "ftp", "file"])
USERINFO = st.sampled_from([None, "user:pw", "u", "127.0.0.1", "@"])
HOSTS = st.sampled_from(
    [
        *("127.0.0.1", "127.0.0.2", "localhost", "127.1", "2130706433", "0x7f.0.0.1", "[::ffff:127.0.0.1]"),
        *("[::1]", "127.0.0.1.", "%31%32%37.0.0.1", "127.0.0.1%00", "xn--127-0.0.0.1", "127.0.0.1\\"),
    ]
)
PATHS = st.text(alphabet="/@?#:\\.a%;=&", max_size=12).map(lambda p: "/" + p)


@st.composite
def urls(draw: st.DrawFn, allowed: int, trap: int) -> tuple[str, bool]:
    """A URL built from tricky parts, and whether it names the allowed origin (http://127.0.0.1:A)."""
    # each part is the allowed one half of the time: many URLs are one trick away from allowed
    scheme = draw(st.one_of(st.just("http"), SCHEMES))
    userinfo = draw(st.one_of(st.none(), USERINFO))
    host = draw(st.one_of(st.just("127.0.0.1"), HOSTS))
    port = draw(st.one_of(st.just(str(allowed)), st.sampled_from([f"0{allowed}", str(trap), "80", "", None])))
    path = draw(PATHS)
    authority = (
        (f"{userinfo}@" if userinfo is not None else "") + host + (f":{port}" if port is not None else "")
    )
    may = (
        scheme.lower() == "http"
        and userinfo is None
        and host == "127.0.0.1"
        and port in (str(allowed), f"0{allowed}")
    )
    return f"{scheme}://{authority}{path}", may


def test_no_generated_url_outside_the_allow_list_is_ever_connected_to(
    allowed: Listener, trap: Listener, twin: Listener, tmp_path: Path
) -> None:
    """Law: a URL is fetched iff it names the allowed origin; traps at other ports and hosts see nothing."""
    with exchange(allowed.origin) as ex:

        @given(st.data())
        def law(data: st.DataObject) -> None:
            url, may = data.draw(
                st.one_of(
                    urls(allowed.port, trap.port), st.text(max_size=40).map(lambda t: (f"http://{t}", None))
                )
            )
            before = allowed.connections
            result = download(ex, url, tmp_path)
            assert result.failure().code is ErrorCode.DOWNLOAD_FAILED
            connected = allowed.connections - before
            if may is None:  # free text: whatever it says, a connection means the allowed origin
                assert connected == 0 or origin_of(url) == origin_of(allowed.origin)
            else:
                assert connected == int(may), url
            if not connected:
                assert_refused_before_connecting(result.failure())
            assert (trap.connections, twin.connections) == (0, 0), url

        law()


# --- redirects -------------------------------------------------------------------------------


def redirects(status: int, where: Callable[[str], str | None], body: bytes = b"landed") -> Responder:
    """Answer ``/hop/<n>`` with a redirect to ``where(path)`` while n > 0, then with ``body``."""

    def respond(seen: Seen) -> bytes:
        path = seen.target.split("?", 1)[0]
        if path.startswith("/hop/") and path != "/hop/0":
            location = where(path)
            return http(status, {"Location": location} if location is not None else {})
        return http(200, {"Content-Type": "application/octet-stream"}, body)

    return respond


def hop_down(path: str) -> str:
    return f"/hop/{int(path.rsplit('/', 1)[1]) - 1}"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_chain_within_the_origin_is_followed_with_the_headers(status: int, tmp_path: Path) -> None:
    with listening(respond=redirects(status, hop_down)) as origin, exchange(origin.origin) as ex:
        path = download(ex, origin.url(f"/hop/{MAX_REDIRECTS}"), tmp_path).unwrap()
    assert path.read_bytes() == b"landed"
    assert [s.target for s in origin.seen] == [f"/hop/{n}" for n in range(MAX_REDIRECTS, -1, -1)]
    assert {s.headers["authorization"] for s in origin.seen} == {TOKEN["Authorization"]}


def test_absolute_and_relative_locations_on_the_origin_are_followed(tmp_path: Path) -> None:
    def where(path: str) -> str:
        n = int(path.rsplit("/", 1)[1])
        return {3: f"http://127.0.0.1:{port}/hop/2", 2: "1", 1: "/hop/0"}[n]

    with listening(respond=redirects(302, where)) as origin, exchange(origin.origin) as ex:
        port = origin.port
        assert download(ex, origin.url("/hop/3"), tmp_path).unwrap().read_bytes() == b"landed"
    assert [s.target for s in origin.seen] == ["/hop/3", "/hop/2", "/hop/1", "/hop/0"]


def test_more_redirects_than_the_limit_fail_without_retry(tmp_path: Path) -> None:
    with listening(respond=redirects(302, hop_down)) as origin, exchange(origin.origin, retries=3) as ex:
        error = download(ex, origin.url(f"/hop/{MAX_REDIRECTS + 1}"), tmp_path).failure()
    assert (error.code, error.retryable, error.public) == (ErrorCode.DOWNLOAD_FAILED, False, DOWNLOAD_PUBLIC)
    assert "redirects" in error.detail
    assert len(origin.seen) == MAX_REDIRECTS + 1


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize(
    "target",
    ["trap-port", "trap-host", "twin", "userinfo", "scheme-relative", "https", "none", "malformed"],
)
def test_redirect_off_the_origin_is_refused_and_never_connected(
    status: int, target: str, trap: Listener, tmp_path: Path
) -> None:
    def where(path: str) -> str | None:
        return {
            "trap-port": trap.url("/x"),
            "trap-host": trap.url("/x", host="127.0.0.2"),
            "twin": f"http://127.0.0.2:{origin.port}/x",
            "userinfo": f"http://u:p@127.0.0.1:{origin.port}/hop/0",
            "scheme-relative": f"//127.0.0.2:{trap.port}/x",
            "https": f"https://127.0.0.1:{origin.port}/hop/0",
            "none": None,
            "malformed": "http://[::1",
        }[target]

    with (
        listening(respond=redirects(status, where)) as origin,
        listening("127.0.0.2", port=origin.port) as twin,
        exchange(origin.origin, retries=3) as ex,
    ):
        error = download(ex, origin.url("/hop/1"), tmp_path).failure()
    assert (error.code, error.retryable, error.public) == (ErrorCode.DOWNLOAD_FAILED, False, DOWNLOAD_PUBLIC)
    assert any(why in error.detail for why in (f"HTTP {status} without", "redirect to", "in location header"))
    assert len(origin.seen) == 1  # no retry, no second hop
    assert (trap.connections, twin.connections) == (0, 0)
    assert list((tmp_path / "dl").iterdir()) == []


def test_redirect_to_another_allowed_origin_is_followed(trap: Listener, tmp_path: Path) -> None:
    with (
        listening(respond=redirects(302, hop_down)) as second,
        listening(respond=redirects(307, lambda path: second.url("/hop/0"))) as first,
        exchange(first.origin, second.origin) as ex,
    ):
        assert download(ex, first.url("/hop/1"), tmp_path).unwrap().read_bytes() == b"landed"
    assert second.seen[0].headers["authorization"] == TOKEN["Authorization"]


def uploads(first: Callable[[], str | None], status: int = 307) -> Responder:
    """POST /upload answers ``status`` to ``first()``; any other POST stores and names the file."""

    def respond(seen: Seen) -> bytes:
        if seen.target == "/upload":
            location = first()
            return http(status, {"Location": location} if location else {})
        body = json.dumps({"file": "http://127.0.0.1:1/files/f"}).encode()
        return http(201, {"Content-Type": "application/json"}, body)

    return respond


@pytest.mark.parametrize("status", [307, 308])
def test_upload_follows_a_body_keeping_redirect_within_the_origin(status: int, tmp_path: Path) -> None:
    src = tmp_path / "results.mpk"
    src.write_bytes(b"r" * 100_000)
    with listening(respond=uploads(lambda: "/upload/", status)) as origin, exchange(origin.origin) as ex:
        assert ex.upload(src).unwrap() == "http://127.0.0.1:1/files/f"
    assert [s.target for s in origin.seen] == ["/upload", "/upload/"]
    assert all(b"r" * 100_000 in s.body for s in origin.seen)
    assert {s.headers["authorization"] for s in origin.seen} == {TOKEN["Authorization"]}


@pytest.mark.parametrize(("status", "where"), [(307, "trap"), (308, "twin"), (302, "same"), (303, "same")])
def test_upload_redirect_elsewhere_or_changing_the_method_fails(
    status: int, where: str, trap: Listener, tmp_path: Path
) -> None:
    src = tmp_path / "results.mpk"
    src.write_bytes(b"results")

    def first() -> str:
        return {
            "trap": trap.url("/upload"),
            "twin": f"http://127.0.0.2:{origin.port}/upload",
            "same": "/upload/",
        }[where]

    with (
        listening(respond=uploads(first, status)) as origin,
        listening("127.0.0.2", port=origin.port) as twin,
        exchange(origin.origin, retries=3) as ex,
    ):
        error = ex.upload(src).failure()
    assert (error.code, error.retryable, error.public) == (ErrorCode.UPLOAD_FAILED, False, UPLOAD_PUBLIC)
    assert len(origin.seen) == 1
    assert (trap.connections, twin.connections) == (0, 0)


# --- HTTPS with the owner's private CA -------------------------------------------------------


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a certificate it signed for 127.0.0.1, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("ca")
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=fedpipe test CA")  # fmt: skip
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    run(
        "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "leaf.pem", "-days", "2", "-extfile", "ext.cnf",
    )  # fmt: skip
    return {"ca": d / "ca.pem", "cert": d / "leaf.pem", "key": d / "leaf.key"}


def test_verify_checks_the_server_against_the_owners_ca(private_ca: dict[str, Path], tmp_path: Path) -> None:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(private_ca["cert"], private_ca["key"])
    served = Listener(("127.0.0.1",), respond=lambda seen: http(200, body=b"secret"), tls=tls)
    try:
        url = served.url("/files/x")
        for verify in (
            str(private_ca["ca"]),
            private_ca["ca"],
            ssl.create_default_context(cafile=private_ca["ca"]),
        ):
            with exchange(served.origin, verify=verify) as ex:
                assert download(ex, url, tmp_path).unwrap().read_bytes() == b"secret"
        with exchange(served.origin) as ex:  # the public CAs do not know this server
            error = download(ex, url, tmp_path).failure()
    finally:
        served.close()
    assert error.public == DOWNLOAD_PUBLIC
    assert "CERTIFICATE_VERIFY_FAILED" in error.detail
    assert [s.headers["authorization"] for s in served.seen] == [TOKEN["Authorization"]] * 3


# --- the public-message law, through the fetch steps -----------------------------------------

NAME = "lr\x1bmu"  # an aggregator argument name as a researcher may send it
WHATS = {
    "fetch_plan": "training plan",
    "fetch_params": "model parameters",
    "fetch_aggregator_args": f"aggregator argument `{printable(NAME)}`",
    "fetch_aux_vars": "optimizer auxiliary variables",
}
STEPS = {
    "fetch_plan": fetch_plan,
    "fetch_params": fetch_params,
    "fetch_aggregator_args": fetch_aggregator_args,
    "fetch_aux_vars": fetch_aux_vars,
}


def round_context(tmp_path: Path, url: str, settings: NodeSettings) -> RoundContext:
    """A round's context whose every download (plan, params, aggregator arg, aux vars) is ``url``."""
    node = FakeNode(settings=settings)
    raw = node.request(
        params_url=url, training_plan_url=url, aux_var_urls=[url], aggregator_args={NAME: {"url": url}}
    )
    workdir = tmp_path / "round"
    workdir.mkdir(exist_ok=True)
    return new_context(parse_request(raw).unwrap(), settings, workdir, None)


@define
class Cause:
    url: str
    marker: str  # what the node log's detail says about it
    options: dict[str, Any] = field(factory=dict)


def make_cause(name: str, server: str, proxy: FaultProxy, headers: dict[str, str], tmp_path: Path) -> Cause:
    """Set the world up so that a download of the returned URL fails for the reason ``name``."""

    def publish(content: bytes, via: str) -> str:
        src = tmp_path / "blob"
        src.write_bytes(content)
        with HttpFileExchange(f"{via}/upload", headers=headers) as ex:
            return ex.upload(src).unwrap()

    if name == "refused":
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        return Cause(
            f"http://127.0.0.1:{port}/files/x", "ConnectError", {"extra": f"http://127.0.0.1:{port}"}
        )
    if name == "http404":
        return Cause(f"{server}/files/{'0' * 64}", "HTTP 404")
    if name == "digest":
        return Cause(publish(b"payload", server) + "#sha256=" + "ab" * 32, "pinned")
    if name == "over-limit":
        return Cause(publish(b"x" * (MAX_PLAN_SOURCE_BYTES + 1), server), "limit")
    if name == "redirect-off-origin":
        hopper = Listener(("127.0.0.1",), respond=redirects(302, lambda path: "http://127.0.0.2:9/x"))
        return Cause(hopper.url("/hop/1"), "redirect to", {"extra": hopper.origin, "close": hopper})
    url = publish(b"p" * 800, proxy.url)  # under the 1000-byte limit: the proxy's fault is the cause
    proxy.always, marker, options = {
        "timeout": (Fault("delay", seconds=1.0), "ReadTimeout", {"read_timeout": 0.2}),
        "reset": (Fault("reset", keep=100), "ReadError", {}),
        "http500": (Fault("status", status=500), "HTTP 500", {}),
        "truncated": (Fault("truncate", keep=100), "RemoteProtocolError", {}),
    }[name]
    return Cause(url, marker, options)


CAUSES = ["refused", "timeout", "reset", "http404", "http500", "truncated", "digest", "over-limit"]


@pytest.mark.parametrize("cause", [*CAUSES, "redirect-off-origin"])
def test_download_failures_read_the_same_whatever_the_network_cause(
    cause: str, server: str, proxy: FaultProxy, node_headers: dict[str, str], tmp_path: Path
) -> None:
    """Law: the researcher reads "Could not download the <what>." for every cause; the log tells them apart."""
    setup = make_cause(cause, server, proxy, node_headers, tmp_path)
    settings = NodeSettings(node_id="node-1", root=tmp_path / "node", max_download_bytes=1000)
    ctx = round_context(tmp_path, setup.url, settings)
    origins = [server, proxy.url, *([setup.options["extra"]] if "extra" in setup.options else [])]
    options = {"read_timeout": setup.options.get("read_timeout", 5.0)}
    try:
        with HttpFileExchange(
            f"{server}/upload",
            allowed_origins=origins,
            headers=node_headers,
            retries=1,
            sleep=lambda _: None,
            **options,
        ) as ex:
            for step, what in WHATS.items():
                error = STEPS[step](ex)(ctx).failure()
                assert error.code is ErrorCode.DOWNLOAD_FAILED, (step, error)
                assert error.public == f"Could not download the {what}.", (step, error)
                assert setup.marker in error.detail, (step, error.detail)
    finally:
        if "close" in setup.options:
            setup.options["close"].close()
    assert list(ctx.workdir.iterdir()) == []


def test_an_allow_list_refusal_says_so_and_connects_nowhere(
    server: str, trap: Listener, node_headers: dict[str, str], tmp_path: Path
) -> None:
    settings = NodeSettings(node_id="node-1", root=tmp_path / "node")
    ctx = round_context(tmp_path, trap.url("/files/x"), settings)
    with HttpFileExchange(f"{server}/upload", headers=node_headers) as ex:
        for step, what in WHATS.items():
            error = STEPS[step](ex)(ctx).failure()
            assert error.code is ErrorCode.DOWNLOAD_FAILED
            assert error.public == f"Could not download the {what}: {URL_NOT_ALLOWED}.", step
            assert not error.retryable
            assert "not allowed" in error.detail
    assert trap.connections == 0


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("lr\u2028" + "m" * 100, "lr\\u2028" + "m" * 61 + "..."),  # escaped, cut at 64 characters
        ("a\nb\nc", None),  # escapes that look like a path: the argument goes unnamed
        ("model.py", None),
    ],
)
def test_aggregator_argument_names_are_escaped_and_cut_in_the_public_text(
    name: str, shown: str | None, server: str, node_headers: dict[str, str], tmp_path: Path
) -> None:
    settings = NodeSettings(node_id="node-1", root=tmp_path / "node")
    node = FakeNode(settings=settings)
    raw = node.request(aggregator_args={name: {"url": f"{server}/files/{'0' * 64}"}})
    (tmp_path / "round").mkdir()
    ctx = new_context(parse_request(raw).unwrap(), settings, tmp_path / "round", None)
    with HttpFileExchange(f"{server}/upload", headers=node_headers) as ex:
        error = fetch_aggregator_args(ex)(ctx).failure()
    named = f" `{shown}`" if shown is not None else ""
    assert error.public == f"Could not download the aggregator argument{named}."
    assert error.public.isprintable()


def test_a_payload_that_is_not_msgpack_is_still_a_bad_payload(
    server: str, node_headers: dict[str, str], tmp_path: Path
) -> None:
    src = tmp_path / "junk"
    src.write_bytes(b"\xc1 not msgpack")
    with HttpFileExchange(f"{server}/upload", headers=node_headers) as ex:
        url = ex.upload(src).unwrap()
        ctx = round_context(tmp_path, url, NodeSettings(node_id="node-1", root=tmp_path / "node"))
        for step in ("fetch_aggregator_args", "fetch_aux_vars"):
            assert STEPS[step](ex)(ctx).failure().code is ErrorCode.BAD_PAYLOAD
