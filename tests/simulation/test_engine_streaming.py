"""Streaming engines: a slow virtual node misses the round deadline, the others' round goes on without it."""

import importlib.util
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from fedpipe.researcher.experiment import ProgressEvent, RoundRecord
from fedpipe.simulation import simulate
from fedpipe.simulation.engine import InlineEngine
from fedpipe.simulation.nodes import VirtualNodes, node_ids
from fedpipe.simulation.ray_engine import slot_of
from fedpipe.simulation.transport import RoundBatch, SimTask
from tests.simulation.test_simulate import EXAMPLE, _config

DEMO_PLAN = Path(__file__).parents[2] / "fedpipe" / "researcher" / "demo_plan.py"

SLOW_PLAN = '''

import time as _time
from pathlib import Path as _Path


class SlowOnOneNode(BreastCancerMlp):
    """The demo plan; the node named in <workdir>/slow holds its first step until <workdir>/release exists."""

    def training_step(self, data, target):
        path = _Path(self.dataset_path)  # <workdir>/nodes/<node id>/data/partition.csv
        workdir, node = path.parents[3], path.parents[1].name
        slow = workdir / "slow"
        if slow.exists() and slow.read_text() == node:
            slow.unlink()
            end = _time.monotonic() + 120
            while not (workdir / "release").exists() and _time.monotonic() < end:
                _time.sleep(0.02)
        return super().training_step(data, target)
'''

LATE = "no reply before the round deadline"


def _slow_plan(folder: Path) -> Path:
    path = folder / "slow_plan.py"
    path.write_text(DEMO_PLAN.read_text(encoding="utf-8") + SLOW_PLAN, encoding="utf-8")
    return path


def _states(root: Path) -> dict[str, str | None]:
    """The node states the node at ``root`` holds, id -> previous id."""
    with closing(sqlite3.connect(f"file:{root / 'node.sqlite'}?mode=ro", uri=True)) as db:
        return dict(db.execute("SELECT state_id, previous_state_id FROM node_states").fetchall())


def _run_with_a_late_node(
    tmp_path: Path, *, nodes: int, slow: str, engine: str, deadline: float
) -> tuple[list[RoundRecord], list[ProgressEvent]]:
    """Two rounds and the validation; ``slow`` holds its first round until that round is recorded.

    ``deadline`` only has to leave the other nodes ample time: the slow one is late whatever it is.
    """
    work = tmp_path / "work"
    work.mkdir()
    (work / "slow").write_text(slow)
    records: list[RoundRecord] = []
    events: list[ProgressEvent] = []

    def recorded(record: RoundRecord) -> None:
        records.append(record)
        (work / "release").touch()  # the late node may finish now: its round is over

    config = _config(
        rounds=2, plan_class="SlowOnOneNode", round_deadline=deadline, training_args={"epochs": 1}
    )
    result = simulate(
        config,
        nodes=nodes,
        seed=1,
        workdir=work,
        engine=engine,
        plan_file=_slow_plan(tmp_path),
        on_round=recorded,
        on_progress=events.append,
    )
    assert result.final is not None and result.final_metric is not None
    return records, events


def _check_the_late_node(
    tmp_path: Path, records: Sequence[RoundRecord], events: Sequence[ProgressEvent], slow: str, nodes: int
) -> None:
    first, second, final = records
    late = {r.node_id: r for r in first.results if not r.success}
    assert list(late) == [slow] and late[slow].msg == LATE
    assert sum(r.success for r in first.results) == nodes - 1  # the others' round went on without it
    ends = [(e.node_id, e.status) for e in events if e.number == 1 and e.training and e.status != "sent"]
    assert (slow, "timeout") in ends and len(ends) == nodes
    # the next rounds run on every node, the late one included
    assert all(r.success for r in second.results) and len(second.results) == nodes
    assert all(r.success for r in final.results) and len(final.results) == nodes
    # the late round did finish on the node, but the researcher never took its state: round 2
    # started the node afresh, and the late state is an orphan no reply named
    mine = next(r for r in second.results if r.node_id == slow)
    states = _states(tmp_path / "work" / "nodes" / slow)
    assert states[str(mine.state_id)] is None
    assert len(states) == 2


def test_a_slow_node_misses_the_deadline_and_the_next_round_goes_on_inline(tmp_path: Path) -> None:
    # the inline engine runs one task at a time, in order: the last node is behind every other one
    slow = node_ids(4)[-1]
    records, events = _run_with_a_late_node(tmp_path, nodes=4, slow=slow, engine="inline", deadline=6.0)
    _check_the_late_node(tmp_path, records, events, slow, 4)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the ray extra")
def test_a_slow_node_misses_the_deadline_and_the_next_round_goes_on_on_ray(tmp_path: Path) -> None:
    # a process of its own, as a user runs it (a Ray runtime keeps some settings for its process's life)
    ids = node_ids(6)
    # an actor runs its nodes in order: the slow node is the last of its actor's share
    slow = [n for n in ids if slot_of(n, 2) == slot_of(ids[0], 2)][-1]
    work = tmp_path / "work"
    work.mkdir()
    (work / "slow").write_text(slow)
    config = tmp_path / "experiment.toml"
    text = EXAMPLE.read_text(encoding="utf-8")
    for old, new in [
        ("rounds = 3 ", "rounds = 2 "),
        ("# round_deadline = 300", "round_deadline = 8"),
        ('plan_class = "BreastCancerMlp"', 'plan_class = "SlowOnOneNode"'),
        ("epochs = 2", "epochs = 1"),
    ]:
        assert old in text
        text = text.replace(old, new)
    config.write_text(text, encoding="utf-8")
    command = [sys.executable, "-m", "fedpipe", "simulate", "--config", str(config), "--nodes", "6"]
    options = ["--plan", str(_slow_plan(tmp_path)), "--engine", "ray", "--cpus", "2", "--workdir", "work"]
    lines = []
    with subprocess.Popen(
        [*command, *options, "--output", "out"], cwd=tmp_path, stderr=subprocess.PIPE, text=True
    ) as run:
        assert run.stderr is not None
        for line in run.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith("round 1/2:"):
                (work / "release").touch()  # the late node may finish now: its round is over
        assert run.wait(timeout=300) == 0, lines
    summaries = [line for line in lines if " nodes ok" in line]
    assert [line.split(":")[0] for line in summaries] == ["round 1/2", "round 2/2", "final validation"]
    assert "5/6 nodes ok (1 no reply before the round deadline)" in summaries[0]
    assert "6/6 nodes ok," in summaries[1] and "6/6 nodes ok," in summaries[2]
    # the late round did finish on the node, but the researcher never took its state: round 2
    # started the node afresh beside the orphan state no reply named
    assert list(_states(work / "nodes" / slow).values()) == [None, None]


def _nodes(tmp_path: Path, n: int) -> VirtualNodes:
    return VirtualNodes(
        tmp_path,
        ids=node_ids(n),
        features=np.zeros((2 * n, 2), dtype=np.float32),
        labels=np.zeros(2 * n, dtype=np.float32),
        columns=("a", "b", "label"),
        partitions=[np.array([2 * i, 2 * i + 1]) for i in range(n)],
        dataset_id="d",
        plan_source="class P:\n    pass\n",
    )


def test_the_inline_engine_runs_a_task_only_while_someone_waits(tmp_path: Path) -> None:
    engine = InlineEngine(_nodes(tmp_path, 3))
    # an unknown dataset: each node replies at once with a failure, after making its node root
    request = {"researcher_id": "r", "job_id": "j", "round": 0, "dataset_id": "missing"}
    tasks = tuple(SimTask(task_id=f"t{i}", node_id=n, request=request) for i, n in enumerate(node_ids(3)))
    running = engine.submit(RoundBatch(tasks=tasks, files={}))
    assert running.pending == 3 and not running.done
    assert running.wait(0.0) == []  # nobody waited: nothing started
    assert not (tmp_path / "nodes").exists()
    assert [o.task_id for o in running.wait(30.0)] == ["t0"] and running.pending == 2
    # the caller still had time: the next task was sent to the worker as the first one's outcome came
    running.cancel()
    assert running.done and running.wait(1.0) == []
    engine.close()  # a task the worker had begun finishes; the third one never runs
    assert "sim-0001" in engine.nodes.created and "sim-0003" not in engine.nodes.created
    # a cancelled batch leaves the engine usable for the next one
    engine = InlineEngine(_nodes(tmp_path / "again", 1))
    again = engine.submit(RoundBatch(tasks=tasks[:1], files={}))
    assert [o.task_id for o in again.wait(30.0)] == ["t0"] and again.done
    engine.close()


def test_fedpipe_simulate_shows_a_few_progress_lines_per_round_off_a_terminal(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedpipe",
            "simulate",
            "--config",
            str(EXAMPLE),
            "--nodes",
            "8",
            "--output",
            "out",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert "\r" not in done.stderr and "\x1b" not in done.stderr  # no terminal control in a log
    summaries = [line for line in lines if " nodes ok" in line]
    assert [line.split(":")[0] for line in summaries] == [
        "round 1/3",
        "round 2/3",
        "round 3/3",
        "final validation",
    ]
    # between two summaries, the round's bar at a quarter, half and three quarters of its 8 nodes
    bars = [line for line in lines if "]  " in line]
    assert len(bars) == 12
    assert [b.split("]  ")[1].split(" nodes")[0] for b in bars[:3]] == ["2/8", "4/8", "6/8"]
    assert bars[0].startswith("round 1/3  [#####-----") and bars[-1].startswith("final validation  [")
    assert lines.index(summaries[0]) == 3 and lines[-1] == summaries[-1]
