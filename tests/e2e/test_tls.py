"""HTTPS end to end: `fedpipe serve --certfile --keyfile` and `fedpipe node --ca-file`."""

import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from attrs import frozen

from fedpipe.bootstrap import open_owner
from fedpipe.researcher.board import BoardClient
from fedpipe.server.auth import bearer
from tests.e2e.support import issue, node_token_file, spawn_node

pytestmark = pytest.mark.e2e

SERVE = (sys.executable, "-m", "fedpipe", "serve")
NODE = (sys.executable, "-m", "fedpipe", "node")


@frozen
class Tls:
    url: str
    server_root: Path
    ca: Path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    """`fedpipe serve` on HTTPS, with a certificate for 127.0.0.1 signed by a private CA."""
    trustme = pytest.importorskip("trustme")
    where = tmp_path_factory.mktemp("tls-e2e")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    cert.private_key_pem.write_to_path(str(where / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(where / "cert.pem"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = where / "server"
    proc = subprocess.Popen(
        [
            *SERVE,
            "--root",
            str(root),
            "--port",
            str(port),
            "--certfile",
            str(where / "cert.pem"),
            "--keyfile",
            str(where / "key.pem"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(
                    f"{url}/health", verify=ssl.create_default_context(cafile=where / "ca.pem"), timeout=1
                )
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the HTTPS server did not start"
                time.sleep(0.2)
        yield Tls(url=url, server_root=root, ca=where / "ca.pem")
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_plain_http_and_unknown_certificates_are_refused(tls_server: Tls) -> None:
    """The server speaks only TLS; a client without the CA refuses the certificate."""
    with pytest.raises(httpx.HTTPError):
        httpx.get(tls_server.url.replace("https", "http") + "/health", timeout=2)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{tls_server.url}/health", timeout=2)


def test_a_node_verifying_the_ca_serves_a_task_over_https(tls_server: Tls, tmp_path: Path) -> None:
    """A node given --ca-file polls, runs the round and replies; the researcher reads it over HTTPS."""
    root = tmp_path / "node-tls"
    with open_owner(root, node_id="node-tls"):
        pass
    token_file = node_token_file(tls_server.server_root, root, "node-tls")
    researcher = issue(tls_server.server_root, "researcher", "tls-researcher")
    node = subprocess.Popen(
        [
            *NODE,
            "--server",
            tls_server.url,
            "--root",
            str(root),
            "--token-file",
            str(token_file),
            "--ca-file",
            str(tls_server.ca),
            "--poll-wait",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    board = BoardClient(tls_server.url, token=researcher, verify=str(tls_server.ca))
    try:
        task = board.post_task(
            "node-tls",
            {
                "researcher_id": "tls-researcher",
                "job_id": "job-tls",
                "params_url": f"{tls_server.url}/files/{'0' * 64}",
                "dataset_id": "absent",
                "training_plan_url": f"{tls_server.url}/files/{'1' * 64}",
                "training_plan_class": "Plan",
                "training": True,
            },
        )
        deadline = time.monotonic() + 60
        reply = None
        while reply is None:
            assert time.monotonic() < deadline, "no reply over HTTPS"
            reply = board.reply(task, wait=2.0)
        assert reply["node_id"] == "node-tls"
        assert reply["msg"] == "The requested dataset is not available on this node."
    finally:
        board.close()
        node.terminate()
        node.wait(timeout=15)


def test_a_node_without_the_ca_never_talks_to_the_server(tls_server: Tls, tmp_path: Path) -> None:
    """Without --ca-file the node refuses the server's certificate: it backs off and never polls."""
    root = tmp_path / "node-noca"
    log = tmp_path / "node.log"
    token_file = node_token_file(tls_server.server_root, root, "node-noca")
    researcher = issue(tls_server.server_root, "researcher", "tls-watcher")
    node = spawn_node(tls_server.url, root, token_file, node_id="node-noca", log=log)
    try:
        deadline = time.monotonic() + 30
        while "retrying" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, "the node never reported the failed connection"
            time.sleep(0.2)
        assert node.poll() is None  # it keeps trying, it does not crash
        seen = httpx.get(
            f"{tls_server.url}/nodes",
            headers=bearer(researcher),
            verify=ssl.create_default_context(cafile=tls_server.ca),
            timeout=5,
        ).json()["nodes"]
        assert "node-noca" not in seen
    finally:
        node.terminate()
        node.wait(timeout=15)
