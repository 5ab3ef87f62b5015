"""The README's "Your own federation by hand" walkthrough, run exactly as written, in order, in one shell."""

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SECTION = "## Your own federation by hand"
# what the walkthrough's commands read from the clone; everything they write goes under fed/
CLONE_ENTRIES = ("examples", "fedpipe")
PORT_DEFAULT = "PORT=${PORT:-8844}"
WALKTHROUGH_TIMEOUT_S = 300


def walkthrough_blocks(readme: str) -> list[str]:
    """The fenced ``bash`` blocks of the README section headed SECTION, in order.

    The section runs from its heading to the next second-level heading; a missing section or one
    without a bash block is an AssertionError.
    """
    lines = readme.splitlines()
    assert SECTION in lines, f"README.md has no section {SECTION!r}"
    start = lines.index(SECTION) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    section = "\n".join(lines[start:end]) + "\n"
    blocks = re.findall(r"^```bash\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)
    assert blocks, f"no ```bash block in README section {SECTION!r}"
    return blocks


def test_walkthrough_blocks_are_the_section_blocks_in_order() -> None:
    """The extraction takes every bash block of the section and nothing outside it."""
    readme = "\n".join(
        [
            "# t",
            "```bash",
            "echo before",
            "```",
            SECTION,
            "Start:",
            "```bash",
            "echo one",
            "echo two &",
            "```",
            "```python",
            "print('no')",
            "```",
            "Stop:",
            "```bash",
            "kill %1",
            "```",
            "## Next",
            "```bash",
            "echo after",
            "```",
        ]
    )
    assert walkthrough_blocks(readme) == ["echo one\necho two &\n", "kill %1\n"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_group(pgid: int) -> None:
    """SIGTERM every process of the walkthrough's group, then SIGKILL what is left after 15 s."""
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)


def test_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    """Every command of the walkthrough exits 0; `fedpipe run` reaches at least 90% on the two
    hand-started nodes and writes the model, the metrics and the plot; the last block stops the
    server and the nodes."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "fedpipe").exists():
        pytest.skip(f"{venv} has no bin/fedpipe: run the tests from the .venv that scripts/install.sh makes")
    script = "\n".join(walkthrough_blocks((REPO / "README.md").read_text(encoding="utf-8")))
    env = dict(os.environ)
    if PORT_DEFAULT in script:
        env["PORT"] = str(_free_port())
    elif _port_taken(8844):
        pytest.skip("port 8844, which the walkthrough uses, is taken")

    # a directory that looks like a fresh clone after `bash scripts/install.sh`
    work = tmp_path / "clone"
    work.mkdir()
    (work / ".venv").symlink_to(venv, target_is_directory=True)
    for name in CLONE_ENTRIES:
        (work / name).symlink_to(REPO / name, target_is_directory=True)
    (tmp_path / "walkthrough.sh").write_text(script, encoding="utf-8")
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"

    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        # its own session: the server and nodes it starts in the background share its process group
        shell = subprocess.Popen(
            ["bash", "-e", str(tmp_path / "walkthrough.sh")],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        try:
            status = shell.wait(timeout=WALKTHROUGH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            status = None
        left_running = _group_alive(shell.pid)
    finally:
        _stop_group(shell.pid)
        shell.wait(timeout=5)

    fed = work / "fed"
    logs = "".join(
        f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(fed.glob("*.log"))
    )
    report = f"--- stdout\n{out.read_text()}\n--- stderr\n{err.read_text()[-5000:]}{logs}"
    assert status is not None, f"the walkthrough did not finish in {WALKTHROUGH_TIMEOUT_S} s\n{report}"
    assert status == 0, f"a walkthrough command failed (status {status})\n{report}"
    assert not left_running, f"the last block left processes running\n{report}"
    assert "Traceback" not in report, report

    found = re.findall(r"^final global accuracy: (\d+(?:\.\d+)?)%", out.read_text(), flags=re.MULTILINE)
    assert len(found) == 1, report
    assert float(found[0]) >= 90.0, report

    results = fed / "results"
    with open(results / "metrics.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    final = [r for r in rows if r["phase"] == "final"]
    assert {r["node"] for r in final} == {"node-1", "node-2", "aggregate"}, rows
    assert all(r["status"] == "ok" for r in rows if r["node"] != "aggregate"), rows
    assert (results / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    for name in ("model.mpk", "model.safetensors"):
        assert (results / name).stat().st_size > 0, name
