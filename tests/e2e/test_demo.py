"""End to end: the demo's server, node processes and researcher, at a small size (issue 6 acceptance)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedpipe.researcher.demo import DemoOptions, run_demo, run_experiment

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_command_exits_zero_and_reaches_the_stated_accuracy(tmp_path: Path) -> None:
    """`fedpipe demo` at a small size exits 0, prints the final global accuracy (>= 90%) and writes the plot."""
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "fedpipe", "demo", "--rounds", "2", "--nodes", "3", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("final global accuracy:"))
    accuracy = float(line.split(":")[1].split("%")[0])
    assert accuracy >= 90.0, proc.stdout
    assert (out / "accuracy.png").stat().st_size > 1000
    assert "approved by the owner" in proc.stdout


def test_secure_demo_matches_plain_run(tmp_path: Path) -> None:
    """With --secagg the global model equals the plain run's within the quantization step.

    One round, so both runs aggregate the very same local updates (training is seeded): the only
    difference left is quantization, at most half a step 2c/(T-1) per value, i.e. < 3.7e-4.
    """
    plain = run_experiment(DemoOptions(rounds=1, nodes=3, output=tmp_path / "plain", quiet=True))
    secure = run_experiment(
        DemoOptions(rounds=1, nodes=3, output=tmp_path / "secure", secagg=True, quiet=True)
    )
    step = 2 * 3 / (2**13 - 1)
    worst = max(float((plain.params[k].float() - secure.params[k].float()).abs().max()) for k in plain.params)
    assert worst <= step, worst
    assert plain.final_metric is not None and secure.final_metric is not None
    assert abs(plain.final_metric - secure.final_metric) <= 0.02


def test_node_killed_mid_round_is_restarted_and_experiment_completes(tmp_path: Path) -> None:
    """A node process killed mid-round and restarted picks its task up again; no state is lost."""
    from fedpipe.bootstrap import open_owner

    out = tmp_path / "kill"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedpipe", "demo", "--rounds", "3", "--nodes", "3", "--output", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # wait for round 1 to start on node-2, then kill its process (the demo restarts dead nodes)
    pid_file = out / "nodes" / "node-2" / "node.pid"
    deadline = time.monotonic() + 120
    killed = False
    while time.monotonic() < deadline and not killed:
        log = out / "nodes" / "node-2" / "node.log"
        if pid_file.exists() and log.exists() and "running round" in log.read_text(errors="replace"):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
            killed = True
        time.sleep(0.2)
    output, _ = proc.communicate(timeout=300)
    assert killed, "node-2 never started a round"
    assert proc.returncode == 0, output[-4000:]
    assert "restarted node-2" in output
    with open_owner(out / "nodes" / "node-2") as owner:
        chains = owner.states.list()
    assert chains, "node-2 lost its state"


def test_run_demo_quiet_returns_zero(tmp_path: Path) -> None:
    """run_demo as a library call: 0 and a plot, 1 round, 2 nodes, SCAFFOLD."""
    assert run_demo(DemoOptions(rounds=1, nodes=2, scaffold=True, output=tmp_path / "s", quiet=True)) == 0
    assert (tmp_path / "s" / "accuracy.png").exists()
