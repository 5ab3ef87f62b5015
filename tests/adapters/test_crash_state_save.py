"""Crash safety: a node killed (SIGKILL) while saving state leaves the previous state loadable and whole."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedpipe.adapters.sqlite import Database, SqliteStateStore

BLOB_BYTES = 2 * 1024 * 1024

# The child saves ever newer states of one job, each a large blob derived from its round, and
# appends "round" to the ack file only after save() returned.
CHILD = """
import random, sys
from pathlib import Path
from fedpipe.adapters.sqlite import Database, SqliteStateStore
from fedpipe.ports import NodeState, SplitRecord

db_path, ack_path, start, size = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
store = SqliteStateStore(Database(db_path), keep_per_job=3)
with ack_path.open("a") as ack:
    for r in range(start, start + 100_000):
        state = NodeState(
            state_id=f"s{r}", job_id="job", round=r,
            previous_state_id=f"s{r - 1}" if r else None,
            plan_state=random.Random(r).randbytes(size),
            split=SplitRecord(dataset_id="ds", n_samples=1000, test_ratio=0.1, test_indices=tuple(range(r % 7, 1000, 10))),
        )
        assert store.save(state).unwrap() is None
        ack.write(f"{r}\\n")
        ack.flush()
"""


def _check_state(store: SqliteStateStore, round_number: int) -> None:
    loaded = store.load("job", f"s{round_number}").unwrap()
    assert loaded is not None, f"state s{round_number} is gone"
    assert loaded.round == round_number
    assert loaded.plan_state == random.Random(round_number).randbytes(BLOB_BYTES), "torn blob"
    assert loaded.split is not None
    assert loaded.split.test_indices == tuple(range(round_number % 7, 1000, 10))


@pytest.mark.slow
def test_sigkill_during_state_saves_leaves_the_last_saved_state_loadable(tmp_path: Path) -> None:
    db_path = tmp_path / "node.sqlite"
    ack_path = tmp_path / "acks"
    rng = random.Random(20241130)
    root = Path(__file__).resolve().parents[2]  # the repository, so the child imports this fedpipe
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    next_round = 0
    kills = 0
    for _ in range(5):
        ack_path.write_text("")
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db_path), str(ack_path), str(next_round), str(BLOB_BYTES)],
            env=env,
        )
        deadline = time.monotonic() + 60
        while not ack_path.read_text().strip() and time.monotonic() < deadline:  # let one save land
            assert child.poll() is None, "the saving child died by itself"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))  # then kill it at a random moment, most likely mid-save
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        kills += child.returncode == -signal.SIGKILL
        acked = [int(line) for line in ack_path.read_text().split()]
        assert acked, "no save completed before the kill"

        with sqlite3.connect(db_path) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db = Database(db_path)
        try:
            store = SqliteStateStore(db, keep_per_job=3)
            _check_state(store, acked[-1])  # the last acknowledged save survived, whole
            listed = [s.round for s in store.list("job")]
            assert acked[-1] in listed
            assert len(listed) <= 3
            for r in listed:  # and whatever else is listed is whole too (no half-written newer state)
                _check_state(store, r)
            assert store.chain("job", f"s{max(listed)}")[0] == f"s{max(listed)}"
            next_round = max(listed) + 1
        finally:
            db.close()
    assert kills == 5
