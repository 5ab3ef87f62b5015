"""``fedpipe simulate`` as a user runs it: progress and a summary line per round, the outputs of ``fedpipe run``, one-line errors."""

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "examples" / "experiment.toml"


def _simulate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedpipe", "simulate", "--config", str(EXAMPLE), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_simulate_runs_and_writes_the_outputs_of_fedpipe_run(tmp_path: Path) -> None:
    done = _simulate(
        "--nodes", "40", "--per-round", "6", "--partition", "label", "--output", "out", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    lines = [
        line for line in done.stderr.splitlines() if " nodes ok" in line
    ]  # the rounds' summaries, not their bars
    assert [line.split(":")[0] for line in lines] == [
        "round 1/3",
        "round 2/3",
        "round 3/3",
        "final validation",
    ]
    assert "6/6 nodes ok" in lines[0] and "40/40 nodes ok" in lines[-1]  # and no plot warning
    assert "Traceback" not in done.stderr
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"model.mpk", "model.safetensors", "metrics.csv"}
    assert "final global accuracy:" in done.stdout
    assert not any(tmp_path.glob("fedpipe-simulation*"))  # the nodes lived in a temporary folder


def test_mistakes_are_one_line_exit_2_and_write_nothing(tmp_path: Path) -> None:
    for args, message in [
        (("--nodes", "0"), "--nodes: must be a whole number of at least 1, not '0'"),
        (("--nodes", "900"), "error: cannot partition the data: n_nodes (900)"),
        (("--nodes", "3", "--per-round", "5"), "error: 5 nodes per round is more than the 3 nodes simulated"),
        (("--nodes", "3", "--plan", "missing.py"), "error: no training plan file at missing.py"),
    ]:
        done = _simulate(*args, "--output", "out", "--workdir", "work", cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
        if args != ("--nodes", "0"):  # argparse prints its usage first
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == []
