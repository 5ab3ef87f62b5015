"""A simulation on a real two-node Ray cluster of this machine (``ray start --head`` plus a worker), joined by address."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from fedpipe.simulation import simulate
from fedpipe.simulation.engine import EngineOptions
from tests.simulation.test_simulate import _config

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a ``ray start --block`` and the Ray processes it started (its own process group)."""
    if process.poll() is None:
        process.terminate()  # it stops the processes it started, then exits
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head and a second Ray node of one CPU each, on this machine; yields the head's address."""
    if not RAY.exists():
        pytest.skip("no ray command beside this Python")
    # token authentication would need the token on every node; this cluster never leaves the machine
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    logs = tmp_path_factory.mktemp("ray-logs")
    address = f"127.0.0.1:{_free_port()}"
    common = ["--block", "--num-cpus", "1", "--disable-usage-stats"]
    started: list[subprocess.Popen[bytes]] = []
    try:
        with (logs / "head.log").open("wb") as log:
            head = [
                str(RAY),
                "start",
                "--head",
                "--port",
                address.rsplit(":", 1)[1],
                "--include-dashboard=false",
            ]
            started.append(
                subprocess.Popen([*head, *common], env=env, stdout=log, stderr=log, start_new_session=True)
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        with (logs / "worker.log").open("wb") as log:
            worker = [str(RAY), "start", "--address", address]
            started.append(
                subprocess.Popen([*worker, *common], env=env, stdout=log, stderr=log, start_new_session=True)
            )
        os.environ["RAY_AUTH_MODE"] = "disabled"
        yield address
    finally:
        os.environ.pop("RAY_AUTH_MODE", None)
        for process in reversed(started):
            _stop(process)


def _alive_nodes(address: str, want: int) -> int:
    """How many Ray nodes the cluster at ``address`` has, once ``want`` joined (or after a minute)."""
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, time, ray\n"
            "ray.init(address=sys.argv[1], logging_level='ERROR')\n"
            "end = time.monotonic() + 60\n"
            "while len([n for n in ray.nodes() if n['Alive']]) < int(sys.argv[2]) and time.monotonic() < end:\n"
            "    time.sleep(0.2)\n"
            "print(len([n for n in ray.nodes() if n['Alive']]))\n",
            address,
            str(want),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(probe.stdout.strip().splitlines()[-1])


def test_a_simulation_joins_a_two_node_cluster_and_runs_on_both(cluster: str, tmp_path: Path) -> None:
    assert _alive_nodes(cluster, 2) == 2
    hosts: set[str] = set()

    def where(actors: Sequence[Any]) -> None:
        hosts.update(node for node, _ in ray.get([a.where.remote() for a in actors]))

    result = simulate(
        _config(rounds=2, training_args={"epochs": 1}),
        nodes=20,
        seed=2,
        workdir=tmp_path,
        engine="ray",
        engine_options=EngineOptions(address=cluster, on_submit=where),
    )
    assert len(hosts) == 2  # one actor per CPU: one on the head, one on the worker node
    assert all(len(r.results) == 20 and all(n.success for n in r.results) for r in result.rounds)
    assert result.final_metric is not None and result.final_metric > 0.8
    assert not ray.is_initialized()  # the engine left the cluster again, and the cluster runs on
    assert _alive_nodes(cluster, 2) == 2
