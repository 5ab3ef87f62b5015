"""Pinning the researcher's certificate: file or confirmed fingerprint, reuse, refusals in one line.

The researcher is a real gRPC TLS server (``ResearcherStub``) with certificates made as
Fed-BioMed makes them; the node root is a temporary directory.
"""

import datetime
import hashlib
import logging
import socket
import ssl
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from returns.result import Failure, Success

from fedpipe.fedbiomed.tls import (
    FINGERPRINT_OPTION,
    PinnedResearcher,
    check_owner_choice,
    fetch_certificate,
    fingerprint,
    names_match,
    names_of,
    parse_fingerprint,
    pin_path,
    pin_researcher,
    researcher_id_of,
    wait_reachable,
)
from fedpipe.fedbiomed.wire import LogFeedback, encode_feedback
from tests.fedbiomed.researcher_stub import ResearcherStub, StubCertificate, make_certificate

HOST = "127.0.0.1"
RID = "RESEARCHER_5f0c"


@pytest.fixture(scope="module")
def certificate() -> StubCertificate:
    return make_certificate(HOST, RID)


@pytest.fixture
def serve() -> Iterator[Callable[..., ResearcherStub]]:
    """Start stubs (stopped at the end); ``serve(certificate, port=...)``."""
    started: list[ResearcherStub] = []

    def start(cert: StubCertificate, port: int = 0) -> ResearcherStub:
        stub = ResearcherStub(cert, port=port).start()
        started.append(stub)
        return stub

    yield start
    for stub in started:
        stub.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def one_line(result: object) -> str:
    assert isinstance(result, Failure), result
    message = result.failure()
    assert isinstance(message, str) and "\n" not in message
    return message


# --- reading certificates -------------------------------------------------------------------


def test_fingerprint_is_sha256_of_the_der(certificate: StubCertificate) -> None:
    der = ssl.PEM_cert_to_DER_cert(certificate.certificate.decode())
    assert fingerprint(certificate.certificate) == "SHA256:" + hashlib.sha256(der).hexdigest()


def test_fingerprints_are_read_as_people_paste_them(certificate: StubCertificate) -> None:
    ours = fingerprint(certificate.certificate)
    hexed = ours.removeprefix("SHA256:")
    colons = ":".join(hexed[i : i + 2] for i in range(0, 64, 2)).upper()
    for text in (ours, hexed, hexed.upper(), colons, f"SHA256 Fingerprint={colons}", f" sha256:{hexed} "):
        assert parse_fingerprint(text) == ours
    for text in ("", "SHA256:", hexed[:-1], hexed + "0", "SHA1:" + hexed[:40], "z" * 64):
        assert parse_fingerprint(text) is None


def test_researcher_id_and_names_come_from_the_certificate(certificate: StubCertificate) -> None:
    assert researcher_id_of(certificate.certificate) == RID
    assert names_of(certificate.certificate) == (HOST,)  # the CN and its IP SAN, once
    assert names_of(make_certificate("localhost", RID).certificate) == ("localhost",)
    assert researcher_id_of(make_certificate(HOST, None).certificate) is None


@pytest.mark.parametrize(
    ("made_for", "dialled", "accepted"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "localhost", False),  # an IP certificate never accepts a name
        ("localhost", "localhost", True),  # no SAN: the CN counts for a name
        ("localhost", "LocalHost.", True),  # case and one trailing dot do not matter
        ("localhost", "127.0.0.1", False),  # ... but never for an IP
        ("researcher.example.org", "other.example.org", False),
        ("*.example.org", "researcher.example.org", True),  # a wildcard covers one label
        ("*.example.org", "a.b.example.org", False),
        ("*.example.org", "example.org", False),
        ("*.org", "example.org", False),  # never a whole top-level domain
    ],
)
def test_host_names_match_as_grpc_checks_them(made_for: str, dialled: str, accepted: bool) -> None:
    assert names_match(make_certificate(made_for, RID).certificate, dialled) is accepted


def test_grpc_itself_refuses_the_name_we_refuse(
    certificate: StubCertificate, serve: Callable[..., ResearcherStub]
) -> None:
    # the rule above is grpc's: check one refusal and one acceptance against the real library
    stub = serve(certificate)
    message = encode_feedback(LogFeedback(node_id="n", level="INFO", msg="{}"), RID)
    for host, accepted in (("localhost", False), (HOST, True)):
        assert names_match(certificate.certificate, host) is accepted
        with grpc.secure_channel(
            f"{host}:{stub.port}", grpc.ssl_channel_credentials(certificate.certificate)
        ) as channel:
            call = channel.unary_unary("/researcher.ResearcherService/Feedback")
            try:
                call(message, timeout=10)
            except grpc.RpcError as err:
                assert not accepted, err
                assert err.code() == grpc.StatusCode.UNAVAILABLE
            else:
                assert accepted


# --- fetching what the researcher serves ------------------------------------------------------


def test_fetch_certificate_reads_the_served_certificate(
    certificate: StubCertificate, serve: Callable[..., ResearcherStub]
) -> None:
    stub = serve(certificate)
    served = fetch_certificate(HOST, stub.port, timeout=5).unwrap()
    assert fingerprint(served) == fingerprint(certificate.certificate)


def test_an_unreachable_researcher_is_one_line() -> None:
    port = free_port()
    assert one_line(fetch_certificate(HOST, port, timeout=2)) == (
        f"cannot reach the researcher at {HOST}:{port}: connection refused"
    )


def test_a_port_that_is_not_tls_is_one_line() -> None:
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        port = listener.getsockname()[1]

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        message = one_line(fetch_certificate(HOST, port, timeout=5))
        thread.join(5)
    assert message.startswith(f"cannot reach the researcher at {HOST}:{port}: ")


def test_wait_reachable_logs_once_and_returns_when_the_researcher_listens(
    certificate: StubCertificate, serve: Callable[..., ResearcherStub], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    log = logging.getLogger("test.fedbiomed.tls")
    caplog.set_level(logging.INFO, logger=log.name)
    stop = threading.Event()
    outcome: list[bool] = []
    waiter = threading.Thread(
        target=lambda: outcome.append(wait_reachable(HOST, port, stop, log=log, retry_delay=0.05))
    )
    waiter.start()
    try:
        for _ in range(200):  # let it fail a few times before the researcher comes
            if caplog.records:
                break
            stop.wait(0.02)
        stop.wait(0.2)
        serve(certificate, port=port)
        waiter.join(15)
    finally:
        stop.set()
        waiter.join(5)
    assert outcome == [True]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == f"cannot reach the researcher at {HOST}:{port}: connection refused; waiting for it"
    assert messages[1:] == [f"the researcher at {HOST}:{port} is reachable"]


def test_wait_reachable_gives_up_when_stopped() -> None:
    stop = threading.Event()
    stop.set()
    assert wait_reachable(HOST, free_port(), stop, log=logging.getLogger("test.fedbiomed.tls")) is False


# --- the pinning policy ------------------------------------------------------------------------


def test_nothing_pinned_is_refused_with_the_served_fingerprint(
    tmp_path: Path, certificate: StubCertificate, serve: Callable[..., ResearcherStub]
) -> None:
    stub = serve(certificate)
    message = one_line(pin_researcher(tmp_path, HOST, stub.port))
    served = fingerprint(certificate.certificate)
    assert f"is not pinned yet: it serves certificate {served} (researcher {RID})" in message
    assert f"{FINGERPRINT_OPTION} {served}" in message
    assert not pin_path(tmp_path, HOST, stub.port).exists()


def test_a_confirmed_fingerprint_is_pinned_then_reused(
    tmp_path: Path, certificate: StubCertificate, serve: Callable[..., ResearcherStub]
) -> None:
    stub = serve(certificate)
    pinned = pin_researcher(
        tmp_path, HOST, stub.port, fingerprint=fingerprint(certificate.certificate).upper()
    )
    assert pinned == Success(
        PinnedResearcher(
            host=HOST, port=stub.port, certificate=pinned.unwrap().certificate, researcher_id=RID
        )
    )
    assert pinned.unwrap().fingerprint == fingerprint(certificate.certificate)
    path = pin_path(tmp_path, HOST, stub.port)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert fingerprint(path.read_bytes()) == fingerprint(certificate.certificate)
    # a later start gives nothing and gets the stored pin
    again = pin_researcher(tmp_path, HOST, stub.port)
    assert again == pinned


def test_a_wrong_fingerprint_is_refused_naming_both(
    tmp_path: Path, certificate: StubCertificate, serve: Callable[..., ResearcherStub]
) -> None:
    stub = serve(certificate)
    wrong = "SHA256:" + "0" * 64
    message = one_line(pin_researcher(tmp_path, HOST, stub.port, fingerprint=wrong))
    assert message == (
        f"the researcher at {HOST}:{stub.port} serves certificate {fingerprint(certificate.certificate)}, "
        f"not the confirmed {wrong}"
    )
    assert not pin_path(tmp_path, HOST, stub.port).exists()
    assert "is not a SHA-256 fingerprint" in one_line(
        pin_researcher(tmp_path, HOST, stub.port, fingerprint="abc")
    )


def test_a_certificate_file_is_copied_under_the_root(
    tmp_path: Path, certificate: StubCertificate, serve: Callable[..., ResearcherStub]
) -> None:
    stub = serve(certificate)
    given = tmp_path / "researcher.pem"
    given.write_bytes(certificate.certificate)
    root = tmp_path / "node"
    pinned = pin_researcher(root, HOST, stub.port, certificate_file=given).unwrap()
    assert pinned.researcher_id == RID
    given.unlink()  # the copy under the root is what counts from now on
    path = pin_path(root, HOST, stub.port)
    assert path.is_relative_to(root) and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pin_researcher(root, HOST, stub.port) == Success(pinned)


def test_a_certificate_file_the_researcher_does_not_serve_is_refused(
    tmp_path: Path, certificate: StubCertificate, serve: Callable[..., ResearcherStub]
) -> None:
    stub = serve(certificate)
    other = make_certificate(HOST, RID)
    given = tmp_path / "other.pem"
    given.write_bytes(other.certificate)
    message = one_line(pin_researcher(tmp_path, HOST, stub.port, certificate_file=given))
    assert message == (
        f"the researcher at {HOST}:{stub.port} serves certificate {fingerprint(certificate.certificate)}, "
        f"not {fingerprint(other.certificate)} of {given}"
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read the researcher certificate"),
        (b"not a certificate", "is not a PEM certificate"),
        (b"", "is not a PEM certificate"),
    ],
)
def test_a_bad_certificate_file_is_one_line(tmp_path: Path, content: bytes | None, expected: str) -> None:
    given = tmp_path / "given.pem"
    if content is not None:
        given.write_bytes(content)
    # refused before any connection: no researcher needed
    assert expected in one_line(pin_researcher(tmp_path, HOST, free_port(), certificate_file=given))


def test_a_file_with_two_certificates_is_refused(tmp_path: Path, certificate: StubCertificate) -> None:
    given = tmp_path / "chain.pem"
    given.write_bytes(certificate.certificate + make_certificate(HOST, RID).certificate)
    assert "holds 2 certificates" in one_line(
        pin_researcher(tmp_path, HOST, free_port(), certificate_file=given)
    )


def test_a_changed_certificate_is_refused_naming_both_fingerprints(
    tmp_path: Path, certificate: StubCertificate, serve: Callable[..., ResearcherStub]
) -> None:
    stub = serve(certificate)
    pin_researcher(tmp_path, HOST, stub.port, fingerprint=fingerprint(certificate.certificate)).unwrap()
    port = stub.port
    stub.stop()
    renewed = make_certificate(HOST, RID)
    serve(renewed, port=port)
    message = one_line(pin_researcher(tmp_path, HOST, port))
    assert message.startswith(
        f"the researcher at {HOST}:{port} serves certificate {fingerprint(renewed.certificate)}, "
        f"not the pinned {fingerprint(certificate.certificate)}"
    )
    assert fingerprint(pin_path(tmp_path, HOST, port).read_bytes()) == fingerprint(certificate.certificate)
    # the owner confirms the renewed certificate: it replaces the pin
    assert pin_researcher(
        tmp_path, HOST, port, fingerprint=fingerprint(renewed.certificate)
    ).unwrap().fingerprint == (fingerprint(renewed.certificate))
    assert pin_researcher(tmp_path, HOST, port).unwrap().fingerprint == fingerprint(renewed.certificate)


def test_dialling_another_name_than_the_certificate_is_refused(
    tmp_path: Path, certificate: StubCertificate, serve: Callable[..., ResearcherStub]
) -> None:
    stub = serve(certificate)
    message = one_line(
        pin_researcher(tmp_path, "localhost", stub.port, fingerprint=fingerprint(certificate.certificate))
    )
    assert message.startswith("the researcher's certificate is for 127.0.0.1, not localhost")


@pytest.mark.parametrize(
    ("made", "expected"),
    [
        (lambda: make_certificate(HOST, None), "names no researcher id"),
        (
            lambda: make_certificate(
                HOST, RID, days=1, not_before=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
            ),
            "expired on",
        ),
        (
            lambda: make_certificate(
                HOST, RID, not_before=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3)
            ),
            "is valid only from",
        ),
    ],
)
def test_unfit_certificates_are_refused(
    tmp_path: Path, serve: Callable[..., ResearcherStub], made: Callable[[], StubCertificate], expected: str
) -> None:
    cert = made()
    stub = serve(cert)
    assert expected in one_line(
        pin_researcher(tmp_path, HOST, stub.port, fingerprint=fingerprint(cert.certificate))
    )


def test_an_unreachable_researcher_is_refused_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    assert one_line(pin_researcher(tmp_path, HOST, port)) == (
        f"cannot reach the researcher at {HOST}:{port}: connection refused"
    )


def test_a_corrupt_stored_pin_is_one_line(
    tmp_path: Path, certificate: StubCertificate, serve: Callable[..., ResearcherStub]
) -> None:
    stub = serve(certificate)
    path = pin_path(tmp_path, HOST, stub.port)
    path.parent.mkdir(parents=True)
    path.write_text("garbage")
    assert "is not a certificate: pin the researcher again" in one_line(
        pin_researcher(tmp_path, HOST, stub.port)
    )
    # pinning again repairs it
    assert pin_researcher(
        tmp_path, HOST, stub.port, fingerprint=fingerprint(certificate.certificate)
    ).unwrap()
    assert fingerprint(path.read_bytes()) == fingerprint(certificate.certificate)


def test_what_the_owner_gives_is_checked_without_the_network(
    tmp_path: Path, certificate: StubCertificate
) -> None:
    good = tmp_path / "researcher.pem"
    good.write_bytes(certificate.certificate)
    assert check_owner_choice(None, None) == Success(None)
    assert check_owner_choice(good, None) == Success(None)
    assert check_owner_choice(good, fingerprint(certificate.certificate)) == Success(None)
    assert "not a SHA-256 fingerprint" in one_line(check_owner_choice(None, "xyz"))
    assert "cannot read" in one_line(check_owner_choice(tmp_path / "missing.pem", None))
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert "not a PEM certificate" in one_line(check_owner_choice(tmp_path / "junk.pem", None))
    other = make_certificate(HOST, "RESEARCHER_other").certificate
    assert "not the given" in one_line(check_owner_choice(good, fingerprint(other)))
