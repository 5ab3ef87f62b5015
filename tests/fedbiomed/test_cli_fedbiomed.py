"""``fedpipe node --fedbiomed``: one-line errors for each misconfiguration, and a pin confirmed once.

Real processes of the ``fedpipe`` command against a real TLS gRPC researcher (the stub), as a
node owner would start them.
"""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedpipe.fedbiomed.messages import encode_message
from fedpipe.fedbiomed.tls import fingerprint
from tests.fedbiomed.researcher_stub import ResearcherStub, make_certificate

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RESEARCHER = "RESEARCHER_5b0d4c1e-0000-4000-8000-00000000cafe"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _node(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedpipe", "node", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=REPO,
    )


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line or line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[ResearcherStub]:
    cert = make_certificate("127.0.0.1", RESEARCHER)
    (tmp_path / "researcher.pem").write_bytes(cert.certificate)
    with ResearcherStub(cert) as running:
        yield running


def test_bad_addresses_and_options_are_one_line_errors(tmp_path: Path) -> None:
    root = str(tmp_path / "node")
    line = _one_line_error(_node("--fedbiomed", "http://127.0.0.1:50051", "--root", root))
    assert "HOST:PORT" in line
    line = _one_line_error(_node("--fedbiomed", "127.0.0.1:1", "--server", "http://x:1", "--root", root))
    assert "either --server" in line
    line = _one_line_error(_node("--fedbiomed", "no-such-host.invalid:50051", "--root", root))
    assert "cannot resolve" in line


def test_a_certificate_for_another_name_is_refused(stub: ResearcherStub, tmp_path: Path) -> None:
    done = _node(
        "--fedbiomed",
        f"localhost:{stub.port}",
        "--root",
        str(tmp_path / "node"),
        "--researcher-certificate",
        str(tmp_path / "researcher.pem"),
    )
    line = _one_line_error(done)
    assert "127.0.0.1" in line and "localhost" in line


def test_an_unpinned_researcher_is_refused_with_its_fingerprint(stub: ResearcherStub, tmp_path: Path) -> None:
    done = _node("--fedbiomed", f"127.0.0.1:{stub.port}", "--root", str(tmp_path / "node"))
    line = _one_line_error(done)
    assert fingerprint(stub.certificate.certificate) in line
    assert "--researcher-fingerprint" in line


def test_a_pinned_certificate_that_changed_is_refused(stub: ResearcherStub, tmp_path: Path) -> None:
    other = make_certificate("127.0.0.1", RESEARCHER)
    (tmp_path / "other.pem").write_bytes(other.certificate)
    done = _node(
        "--fedbiomed",
        f"127.0.0.1:{stub.port}",
        "--root",
        str(tmp_path / "node"),
        "--researcher-certificate",
        str(tmp_path / "other.pem"),
    )
    line = _one_line_error(done)
    assert fingerprint(other.certificate) in line and fingerprint(stub.certificate.certificate) in line


def test_a_fingerprint_confirmed_once_is_pinned_and_the_node_serves(stub: ResearcherStub, tmp_path: Path) -> None:
    """Confirmed by fingerprint on the first start; later starts need no option; Ping answered."""
    root = tmp_path / "node"
    served = fingerprint(stub.certificate.certificate)
    for extra in (["--researcher-fingerprint", served], []):
        process = subprocess.Popen(
            [sys.executable, "-m", "fedpipe", "node", "--fedbiomed", f"127.0.0.1:{stub.port}", "--root", str(root),
             "--node-id", "NODE_cli-test", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
            cwd=REPO,
        )  # fmt: skip
        try:
            assert stub.wait_for(lambda s: any(e.kind == "poll" for e in s.events), timeout=60), "no poll"
            stub.queue_task(
                encode_message(
                    "PingRequest", {"request_id": f"ping-{len(extra)}", "researcher_id": RESEARCHER}
                )
            )
            assert stub.wait_for(lambda s: any(e.kind == "reply" for e in s.events), timeout=30), "no reply"
        finally:
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert "Traceback" not in output
        stub.events.clear()
