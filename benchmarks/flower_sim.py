"""The Flower 1.42 side of the simulation benchmark: the same federated task on Flower's Ray engine.

Run with the python of the scratch environment that ``benchmarks/flower_env.py`` builds (it imports
flwr, torch and numpy, nothing of fedpipe)::

    python benchmarks/flower_sim.py --data DATA.npz --out RESULT.json
    python benchmarks/flower_sim.py --make-test-data 100 [--per-round 10] --data DATA.npz

``DATA.npz`` holds the rows (``features``, ``labels``), the partitions (node ``i`` owns
``indices[offsets[i]:offsets[i + 1]]``), the scaling (``feature_mean``, ``feature_std``) and the run's
scalars (``rounds``, ``per_round``, ``epochs``, ``batch_size``, ``lr``, ``test_ratio``, ``seed``,
``cpus``, ``client_cpus``) and, optionally, each node's test rows (``test_indices``,
``test_offsets``, laid out like the partitions; without them each node draws its own split). The
task is logistic regression (``torch.nn.Linear(30, 1)`` on ``(log1p(x) - mean) / std``) trained
with FedAvg: each round Flower samples ``per_round`` of the nodes; a node first measures the received global model on its test split, then trains ``epochs``
epochs of Adam on its train split (restoring its Adam state of its previous round from Flower's
``context.state``, as a fedpipe node restores its node state) and replies with its parameters,
weighted by its train count.
After the last round one federated evaluation of the final model on every node gives the final
accuracy (weighted by test counts).

It uses Flower's Message API (``ServerApp`` with ``@main``, ``ClientApp`` with ``@train`` and
``@evaluate``, ``flwr.serverapp.strategy.FedAvg``) run by ``flwr.simulation.run_simulation`` on the
Ray backend, with ``num_cpus = cpus`` and ``client_resources = {"num_cpus": client_cpus}``; Ray is
always a fresh local instance (``address="local"``) in its own temporary directory. The client
handlers live in this module, which the Ray workers import by name (Flower puts the driver's
``sys.path`` on theirs), so each worker loads the data file once.

``RESULT.json`` reports the round wall times (between consecutive ends of ``aggregate_train``;
round 1 from its ``configure_train``), their median over rounds 2-5, the start-up time (from the
start of this script to round 1's ``configure_train``, which waits until Ray is initialised), the
final evaluation's time, the peak RSS and PSS of the whole process tree (``proctree.py``), the
final accuracy and the number of failed or missing replies.
"""

import argparse
import itertools
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

T0 = time.perf_counter()
T0_WALL = time.time()

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# Read by the Ray workers, which inherit this process's environment through the raylet.
DATA_ENV = "FEDPIPE_FLOWER_BENCH_DATA"
SCALARS = ("rounds", "per_round", "epochs", "batch_size", "lr", "test_ratio", "seed", "cpus", "client_cpus")

# Per worker process: the loaded task and each node's split, kept between messages.
_CACHE: dict[Any, Any] = {}


def _task() -> dict[str, Any]:
    """Load the data file named by ``DATA_ENV`` once per process: scaled features as a tensor."""
    path = os.environ[DATA_ENV]
    task = _CACHE.get(path)
    if task is None:
        import numpy as np
        import torch

        with np.load(path) as data:
            raw = {key: data[key] for key in data.files}
        scaled = (np.log1p(raw["features"]) - raw["feature_mean"]) / raw["feature_std"]
        task = {
            "x": torch.from_numpy(scaled.astype(np.float32)),
            "y": torch.from_numpy(raw["labels"].astype(np.float32)),
            "indices": raw["indices"].astype(np.int64),
            "offsets": raw["offsets"].astype(np.int64),
            **{key: raw[key].item() for key in SCALARS},
        }
        if "test_offsets" in raw:
            task["test_indices"] = raw["test_indices"].astype(np.int64)
            task["test_offsets"] = raw["test_offsets"].astype(np.int64)
        _CACHE[path] = task
    return task


def n_test(n: int, ratio: float) -> int:
    """Test rows of a node with ``n`` rows: ``ceil(ratio * n)``, at least 1 when n >= 2, at most n - 1."""
    if n < 2:
        return 0
    return min(n - 1, max(1, math.ceil(ratio * n)))


def _split(task: dict[str, Any], node: int) -> tuple[Any, Any]:
    """The node's (train, test) row indices, drawn once per node from ``(seed, node)``."""
    key = ("split", id(task), node)
    split = _CACHE.get(key)
    if split is None:
        import numpy as np
        import torch

        rows = task["indices"][task["offsets"][node] : task["offsets"][node + 1]]
        if "test_offsets" in task:
            # The data file gives each node's test rows: the rest of its rows train.
            tests = task["test_indices"][task["test_offsets"][node] : task["test_offsets"][node + 1]]
            train_rows = rows[~np.isin(rows, tests)]
            split = (torch.from_numpy(train_rows), torch.from_numpy(tests.astype(np.int64)))
            _CACHE[key] = split
            return split
        order = np.random.default_rng([int(task["seed"]), node]).permutation(len(rows))
        cut = n_test(len(rows), float(task["test_ratio"]))
        rows = torch.from_numpy(rows[order])
        split = (rows[cut:], rows[:cut])
        _CACHE[key] = split
    return split


def _model(message: Any) -> Any:
    import torch

    torch.set_num_threads(1)
    model = torch.nn.Linear(30, 1)
    model.load_state_dict(message.content["arrays"].to_torch_state_dict())
    return model


def _correct(model: Any, task: dict[str, Any], rows: Any) -> int:
    import torch

    if len(rows) == 0:
        return 0
    with torch.no_grad():
        predicted = model(task["x"][rows]).squeeze(1) > 0
    return int((predicted == (task["y"][rows] > 0.5)).sum())


_OPTIMIZER = "adam-state"


def _restore_optimizer(optimizer: Any, context: Any) -> None:
    """Load the node's Adam state of its previous round, kept in the node's Flower ``context.state``.

    A fedpipe node saves its optimizer state with its node state and restores it the next round
    (as Fed-BioMed's nodes do); the Flower clients do the same, so that both train alike.
    """
    if _OPTIMIZER not in context.state:
        return
    flat = context.state[_OPTIMIZER].to_torch_state_dict()
    state: dict[int, dict[str, Any]] = {}
    for key, value in flat.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def _keep_optimizer(optimizer: Any, context: Any) -> None:
    from flwr.app import ArrayRecord

    flat = {
        f"{index}.{name}": value.reshape(1) if value.ndim == 0 else value
        for index, entry in optimizer.state_dict()["state"].items()
        for name, value in entry.items()
    }
    # 0-d tensors (Adam's step) travel as 1-element arrays; load_state_dict takes them back
    context.state[_OPTIMIZER] = ArrayRecord(flat)


def train_handler(message: Any, context: Any) -> Any:
    """Flower ``@train``: measure the global model on the test split, then train on the train split."""
    import torch
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    started = time.time()
    task = _task()
    node = int(context.node_config["partition-id"])
    train, test = _split(task, node)
    model = _model(message)
    correct = _correct(model, task, test)
    server_round = int(message.content["config"]["server-round"])
    generator = torch.Generator().manual_seed(int(task["seed"]) * 1_000_003 + node * 1_009 + server_round)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(task["lr"]))
    _restore_optimizer(optimizer, context)
    batch = int(task["batch_size"])
    x, y = task["x"], task["y"]
    for _ in range(int(task["epochs"])):
        order = train[torch.randperm(len(train), generator=generator)]
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[rows]).squeeze(1), y[rows])
            loss.backward()
            optimizer.step()
    _keep_optimizer(optimizer, context)
    metrics = MetricRecord(
        {
            "num-examples": len(train),
            "test-correct": correct,
            "test-examples": len(test),
            "started": started,
        }
    )
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=message)


def evaluate_handler(message: Any, context: Any) -> Any:
    """Flower ``@evaluate``: the received model's accuracy on the node's test split."""
    from flwr.app import Message, MetricRecord, RecordDict

    task = _task()
    node = int(context.node_config["partition-id"])
    _, test = _split(task, node)
    correct = _correct(_model(message), task, test)
    metrics = {"num-examples": len(test), "correct": correct, "accuracy": correct / max(1, len(test))}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=message)


def make_test_data(path: Path, nodes: int, per_round: int, cpus: int, client_cpus: float, seed: int) -> None:
    """Write a synthetic data file: positive features, labels from a linear rule, IID partitions."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = max(569, 24 * nodes)
    features = np.exp(rng.normal(0.0, 1.0, size=(rows, 30)) + rng.normal(1.0, 1.0, size=30)).astype(
        np.float32
    )
    logged = np.log1p(features)
    mean, std = logged.mean(axis=0), logged.std(axis=0) + 1e-6
    weights = rng.normal(0.0, 1.0, size=30)
    score = ((logged - mean) / std) @ weights + rng.normal(0.0, 1.0, size=rows)
    labels = (score > 0).astype(np.float32)
    parts = np.array_split(rng.permutation(rows), nodes)
    offsets = np.cumsum([0] + [len(part) for part in parts]).astype(np.int64)
    np.savez(
        path,
        features=features,
        labels=labels,
        indices=np.concatenate(parts).astype(np.int64),
        offsets=offsets,
        feature_mean=mean.astype(np.float32),
        feature_std=std.astype(np.float32),
        rounds=np.array(5),
        per_round=np.array(per_round),
        epochs=np.array(1),
        batch_size=np.array(16),
        lr=np.array(0.05),
        test_ratio=np.array(0.25),
        seed=np.array(seed),
        cpus=np.array(cpus),
        client_cpus=np.array(client_cpus),
    )


def run(data: Path, *, memory: bool = True) -> dict[str, Any]:
    """Run the simulation described by ``data`` and return the result record.

    ``memory=False`` leaves the memory sampler off (the peaks are then 0), to see what it costs.
    """
    os.environ[DATA_ENV] = str(data.resolve())
    # Flower's telemetry would try to reach the internet; worker threads are set per client.
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import proctree

    temp_dir = tempfile.mkdtemp(prefix="flwrb")
    peak = proctree.PeakMemory(extra_pids=lambda: proctree.pids_matching(temp_dir))
    if memory:
        peak.start()
    try:
        return _run(data, temp_dir, peak)
    finally:
        peak.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _run(data: Path, temp_dir: str, peak: Any) -> dict[str, Any]:
    # This file again as an importable module, so that the workers import the handlers by name.
    import flower_sim
    import numpy as np
    import ray
    import torch
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
    with np.load(data) as arrays:
        scalars = {key: arrays[key].item() for key in SCALARS}
        nodes = len(arrays["offsets"]) - 1
    per_round = int(scalars["per_round"])
    rounds = int(scalars["rounds"])
    marks: dict[str, Any] = {"configure": [], "aggregate": [], "failures": 0, "accuracy": []}

    class TimedFedAvg(FedAvg):  # type: ignore[misc]
        """FedAvg that records when each round is configured and aggregated."""

        def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Any:
            marks["configure"].append(time.perf_counter())
            messages = list(super().configure_train(server_round, arrays, config, grid))
            marks["sampled"] = len(messages)
            return messages

        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            replies = list(replies)
            good = [reply for reply in replies if not reply.has_error()]
            marks["failures"] += marks["sampled"] - len(good)
            correct = sum(int(reply.content["metrics"]["test-correct"]) for reply in good)
            tested = sum(int(reply.content["metrics"]["test-examples"]) for reply in good)
            marks["accuracy"].append(correct / max(1, tested))
            if server_round == 1 and good:
                marks["first_client"] = min(float(reply.content["metrics"]["started"]) for reply in good)
            result = super().aggregate_train(server_round, replies)
            marks["aggregate"].append(time.perf_counter())
            return result

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Any, context: Any) -> None:
        # The server thread starts while the engine is still starting Ray: wait for it, so that
        # start-up holds Ray's start and round 1 does not.
        while not ray.is_initialized():
            time.sleep(0.01)
        strategy = TimedFedAvg(
            fraction_train=per_round / nodes,
            fraction_evaluate=0.0,
            min_train_nodes=per_round,
            min_available_nodes=nodes,
        )
        torch.manual_seed(int(scalars["seed"]))
        initial = ArrayRecord(torch.nn.Linear(30, 1).state_dict())
        result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds)
        started = time.perf_counter()
        strategy.fraction_evaluate, strategy.min_evaluate_nodes = 1.0, nodes
        messages = list(strategy.configure_evaluate(rounds, result.arrays, ConfigRecord(), grid))
        replies = [reply for reply in grid.send_and_receive(messages) if not reply.has_error()]
        marks["failures"] += nodes - len(replies)
        correct = sum(int(reply.content["metrics"]["correct"]) for reply in replies)
        tested = sum(int(reply.content["metrics"]["num-examples"]) for reply in replies)
        marks["final_accuracy"] = correct / max(1, tested)
        marks["final_eval_s"] = time.perf_counter() - started

    client_app = ClientApp()
    client_app.train()(flower_sim.train_handler)
    client_app.evaluate()(flower_sim.evaluate_handler)

    backend_config = {
        "init_args": {
            "address": "local",
            "num_cpus": int(scalars["cpus"]),
            "_temp_dir": temp_dir,
            "log_to_driver": False,
            "logging_level": "ERROR",
        },
        "client_resources": {"num_cpus": float(scalars["client_cpus"]), "num_gpus": 0.0},
    }
    run_simulation(
        server_app=server_app, client_app=client_app, num_supernodes=nodes, backend_config=backend_config
    )
    total = time.perf_counter() - T0
    ends = marks["aggregate"]
    round_s = [b - a for a, b in itertools.pairwise([marks["configure"][0], *ends])] if ends else []
    peak.stop()
    import flwr

    return {
        "flower_version": flwr.__version__,
        "ray_version": ray.__version__,
        "torch_version": torch.__version__,
        "nodes": nodes,
        "per_round": per_round,
        "cpus": scalars["cpus"],
        "client_cpus": scalars["client_cpus"],
        "round_s": round_s,
        "median_round_s_2_5": statistics.median(round_s[1:5] or round_s) if round_s else None,
        "startup_s": marks["configure"][0] - T0 if marks["configure"] else None,
        "first_client_s": marks.get("first_client", math.nan) - T0_WALL,
        "final_eval_s": marks.get("final_eval_s"),
        "total_s": total,
        "peak_rss_mib": peak.peak_rss_mib,
        "peak_pss_mib": peak.peak_pss_mib,
        "final_accuracy": marks.get("final_accuracy"),
        "round_accuracy": marks["accuracy"],
        "failures": marks["failures"] + (rounds - len(ends)) * per_round,
    }


def main() -> None:
    """Parse the command line; make test data or run the simulation and write the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the .npz data file (read or written)")
    parser.add_argument("--out", type=Path, help="where to write the result JSON")
    parser.add_argument("--make-test-data", type=int, metavar="N", help="write synthetic data for N nodes")
    parser.add_argument("--per-round", type=int, help="with --make-test-data: nodes per round (default N)")
    parser.add_argument("--cpus", type=int, default=2, help="with --make-test-data: CPUs for Ray")
    parser.add_argument("--client-cpus", type=float, default=1.0, help="with --make-test-data")
    parser.add_argument("--seed", type=int, default=0, help="with --make-test-data")
    parser.add_argument("--no-memory", action="store_true", help="do not sample memory (peaks are 0)")
    args = parser.parse_args()
    if args.make_test_data is not None:
        nodes = args.make_test_data
        make_test_data(args.data, nodes, args.per_round or nodes, args.cpus, args.client_cpus, args.seed)
        return
    if args.out is None:
        parser.error("--out is required unless --make-test-data is given")
    result = run(args.data, memory=not args.no_memory)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
