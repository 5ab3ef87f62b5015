"""The in-memory transport: payloads shared by a round's tasks, results read once, replies after the batch."""

from collections.abc import Sequence
from pathlib import Path

from returns.result import Failure

from fedpipe.simulation.transport import MemoryBoard, MemoryExchange, RoundBatch, TaskExchange, TaskOutcome


class EchoBatch:
    """A fake running batch: hands out its outcomes one per ``wait``, in order."""

    def __init__(self, outcomes: Sequence[TaskOutcome]) -> None:
        self.outcomes = list(outcomes)
        self.cancelled = False

    @property
    def pending(self) -> int:
        return len(self.outcomes)

    @property
    def done(self) -> bool:
        return not self.outcomes

    def wait(self, timeout: float) -> Sequence[TaskOutcome]:
        return [self.outcomes.pop(0)] if self.outcomes else []

    def cancel(self) -> None:
        self.cancelled = True
        self.outcomes.clear()


class EchoEngine:
    """A fake engine: each node uploads one file and replies with its URL; batches are recorded."""

    def __init__(self) -> None:
        self.batches: list[RoundBatch] = []
        self.running: list[EchoBatch] = []

    def submit(self, batch: RoundBatch) -> EchoBatch:
        self.batches.append(batch)
        outcomes = []
        for task in batch.tasks:
            exchange = TaskExchange(batch.files, task.task_id)
            path = Path(task.request["scratch"]) / f"{task.task_id}.bin"
            path.write_bytes(batch.files[task.request["params_url"]] + task.node_id.encode())
            url = exchange.upload(path).unwrap()
            event = {"job_id": "j", "node_id": task.node_id, "round": task.request.get("round", 0)}
            outcomes.append(
                TaskOutcome(
                    task_id=task.task_id, reply={"url": url}, events=(event,), uploads=exchange.uploads
                )
            )
        self.running.append(EchoBatch(outcomes))
        return self.running[-1]

    def close(self) -> None:
        pass


def test_a_round_runs_as_one_batch_sharing_its_payloads(tmp_path: Path) -> None:
    exchange = MemoryExchange()
    (tmp_path / "params").write_bytes(b"weights")
    params = exchange.upload(tmp_path / "params").unwrap()
    (tmp_path / "unrelated").write_bytes(b"x" * 100)
    exchange.upload(tmp_path / "unrelated").unwrap()
    engine = EchoEngine()
    board = MemoryBoard(engine, exchange)
    request = {"params_url": params, "scratch": str(tmp_path)}
    tasks = [board.post_task(n, request) for n in ("a", "b", "c")]
    assert engine.batches == []  # nothing runs before the researcher waits for a reply
    replies = [board.reply(t, wait=1.0) for t in tasks]
    assert len(engine.batches) == 1 and len(engine.batches[0].tasks) == 3
    assert dict(engine.batches[0].files) == {params: b"weights"}  # only what the requests name
    assert len(board.events("j")) == 3 and board.events("other") == []
    for node, reply in zip("abc", replies, strict=True):
        assert reply is not None
        dest = tmp_path / f"got-{node}"
        assert exchange.download(reply["url"], dest, max_bytes=100).unwrap() == dest
        assert dest.read_bytes() == b"weights" + node.encode()
        # a node's results are read once, then dropped
        assert isinstance(exchange.download(reply["url"], dest, max_bytes=100), Failure)
    assert board.reply(tasks[0], wait=1.0) is None


def test_node_downloads_fail_like_a_missing_or_oversized_file(tmp_path: Path) -> None:
    exchange = TaskExchange({"http://simulation.invalid/files/0": b"12345"}, "task-0")
    assert isinstance(
        exchange.download("http://simulation.invalid/files/9", tmp_path / "a", max_bytes=10), Failure
    )
    assert isinstance(
        exchange.download("http://simulation.invalid/files/0", tmp_path / "b", max_bytes=4), Failure
    )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_node_whose_root_cannot_be_made_replies_with_a_failure(tmp_path: Path) -> None:
    import numpy as np

    from fedpipe.simulation.nodes import VirtualNodes
    from fedpipe.simulation.transport import SimTask

    nodes = VirtualNodes(
        tmp_path,
        ids=("sim-0001", "sim-0002"),
        features=np.zeros((4, 2), dtype=np.float32),
        labels=np.array([0, 1, 0, 1], dtype=np.float32),
        columns=("a", "b", "label"),
        partitions=[np.array([0, 1]), np.array([2, 3])],
        dataset_id="d",
        plan_source="class P:\n    pass\n",
    )
    (tmp_path / "nodes").mkdir()
    (tmp_path / "nodes" / "sim-0001").write_text("a file where the node root should be")
    request = {"researcher_id": "r", "job_id": "j", "round": 0}
    for node in ("sim-0001", "sim-0009"):
        outcome = nodes.run(SimTask(task_id="t", node_id=node, request=request), {})
        assert outcome.reply["success"] is False and outcome.reply["node_id"] == node
        assert outcome.reply["msg"] == "The simulated node could not open its node root."
        assert str(tmp_path) not in str(outcome.reply)


def test_a_new_round_cancels_the_last_one_and_drops_what_nobody_took(tmp_path: Path) -> None:
    exchange = MemoryExchange()
    (tmp_path / "params").write_bytes(b"weights")
    params = exchange.upload(tmp_path / "params").unwrap()
    engine = EchoEngine()
    board = MemoryBoard(engine, exchange)
    first = [board.post_task(n, {"params_url": params, "scratch": str(tmp_path), "round": 0}) for n in "ab"]
    # the researcher takes "a", then gives up on "b" (its round deadline passed)
    assert board.reply(first[0], wait=0.0) is not None
    second = board.post_task("b", {"params_url": params, "scratch": str(tmp_path), "round": 1})
    assert engine.running[0].pending == 1  # "b"'s first outcome is still to come
    reply = board.reply(second, wait=1.0)
    assert engine.running[0].cancelled and engine.running[0].done
    assert reply is not None and board.reply(first[1], wait=1.0) is None  # never delivered late
    assert [e["round"] for e in board.events("j")] == [0, 1]  # "a" in round 0, "b" in round 1 only
    results = [u for u in exchange.files if "/results/" in u]
    assert results == [f"http://simulation.invalid/results/{first[0]}/0", reply["url"]]
    board.close()
    assert engine.running[1].cancelled


def test_the_researcher_reads_results_from_memory_once_and_within_its_limit(tmp_path: Path) -> None:
    from fedpipe.researcher.experiment import HeldExchange

    exchange = MemoryExchange()
    assert isinstance(exchange, HeldExchange)  # the experiment decodes its results with no file
    url = "http://simulation.invalid/results/task-0/0"
    exchange.put(url, b"12345")
    assert exchange.read_bytes(url, max_bytes=5).unwrap() == b"12345"
    gone = exchange.read_bytes(url, max_bytes=5)
    assert isinstance(gone, Failure) and "404" in gone.failure().detail  # read once
    exchange.put(url, b"12345")
    big = exchange.read_bytes(url, max_bytes=4)
    assert isinstance(big, Failure) and "> limit 4" in big.failure().detail
    (tmp_path / "params").write_bytes(b"weights")
    params = exchange.upload(tmp_path / "params").unwrap()
    for _ in range(2):  # the researcher's own payloads stay for every node that reads them
        assert exchange.read_bytes(params, max_bytes=10).unwrap() == b"weights"
