"""Virtual nodes' round workspaces: on a tmpfs folder of their process, removed with it, never in the roots."""

import gc
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fedpipe.researcher.config import parse_config
from fedpipe.simulation import simulate
from fedpipe.simulation.nodes import TMPFS, node_ids, workspace_folder

EXAMPLES = Path(__file__).parents[2] / "examples"


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_a_folder_per_process_and_what_dead_processes_left_is_removed(tmp_path: Path) -> None:
    dead = tmp_path / f"fedpipe-rounds-{_dead_pid()}-abc"
    (dead / "round_x").mkdir(parents=True)
    (dead / "round_x" / "params.mpk").write_bytes(b"left by a killed actor")
    living = tmp_path / f"fedpipe-rounds-{os.getppid()}-def"
    living.mkdir()
    other = tmp_path / "someone-else"
    other.mkdir()
    made = workspace_folder(tmp_path)
    assert made is not None and made.parent == tmp_path
    assert made.name.startswith(f"fedpipe-rounds-{os.getpid()}-")
    assert (made.stat().st_mode & 0o777) == 0o700
    assert not dead.exists() and living.exists() and other.exists()
    assert workspace_folder(tmp_path / "absent") is None


@pytest.mark.skipif(not TMPFS.is_dir(), reason="no tmpfs at /dev/shm")
def test_rounds_of_virtual_nodes_work_on_the_tmpfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "plan-file.txt"
    plan = tmp_path / "recording_plan.py"
    plan.write_text(
        (EXAMPLES / "logistic_plan.py").read_text(encoding="utf-8")
        + "\nimport os as _os\nopen(_os.environ['FEDPIPE_TEST_RECORD'], 'w').write(__file__)\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("FEDPIPE_TEST_RECORD", str(record))
    table = tomllib.loads((EXAMPLES / "simulation.toml").read_text(encoding="utf-8"))
    config = parse_config({**table, "rounds": 1}, base_dir=EXAMPLES)
    work = tmp_path / "work"
    result = simulate(config, nodes=3, workdir=work, plan_file=plan)
    assert all(n.success for n in result.rounds[0].results)
    # the plan ran from its round's workspace, in this process's folder on the tmpfs
    workspace = Path(record.read_text(encoding="utf-8")).parent
    folder = workspace.parent
    assert workspace.name.startswith("round_") and folder.parent == TMPFS
    assert folder.name.startswith(f"fedpipe-rounds-{os.getpid()}-")
    assert not workspace.exists()  # each round removes its workspace
    for node in node_ids(3):
        assert not (work / "nodes" / node / "tmp").exists()
    del result
    gc.collect()
    assert not folder.exists()  # the folder goes with the nodes
