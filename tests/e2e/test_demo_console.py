"""What `fedpipe demo` tells its user on the console: rounds numbered from 1, and the GPU fallback."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedpipe.researcher.demo import GPU_FALLBACK_LINE

pytestmark = [pytest.mark.e2e]


def test_the_console_numbers_rounds_from_one_and_says_the_gpu_fallback(tmp_path: Path) -> None:
    """One round: its table is "round 1", then "final"; no "round 0" anywhere; with --gpu on a
    machine without one, the console (not only the node logs) says that nodes train on the CPU."""
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "fedpipe", "demo", "--rounds", "1", "--nodes", "2", "--gpu"]
    run = subprocess.run(
        [*command, "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    console = run.stdout
    lines = console.splitlines()
    if torch.cuda.is_available():
        assert GPU_FALLBACK_LINE not in console
    else:
        assert GPU_FALLBACK_LINE in lines[:3], console  # said at the start, before anything runs
    tables = [line for line in lines if re.match(r"(round\s+\d+|final)\s+\[", line)]
    assert [re.split(r"\s+", t)[1] if t.startswith("round") else "final" for t in tables] == ["1", "final"]
    assert not re.search(r"\bround\s+0\b", console), console
    assert "Traceback" not in run.stderr
    assert (out / "accuracy.png").stat().st_size > 0
