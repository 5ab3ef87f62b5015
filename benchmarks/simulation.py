"""Simulation benchmark: ``fedpipe simulate`` on Ray vs Flower 1.42's simulation engine, one run, side by side.

The same task on both: breast-cancer logistic regression (``examples/logistic_plan.py``; Flower:
``torch.nn.Linear(30, 1)`` on the same scaling), FedAvg, 5 rounds, Adam, 1 epoch, batch 16,
the same rows (the 569 shipped ones grown to 20 per node by ``fedpipe.training.enlarge``), the
same IID partitions and the same test rows per node (fedpipe's own split, passed to Flower), the
same CPUs (a local Ray of ``--cpus``, one CPU per actor or client), and on both a node keeps its
Adam state from one round to the next (fedpipe: the node state; Flower: the client's
``context.state``). Configurations: N = 10, 100
and 1000 with every node each round, and 100 of 1000 sampled per round.

Each side runs in its own process (fedpipe in this environment, Flower in the scratch environment
that ``benchmarks/flower_env.py`` builds, CPU torch pinned); each measures itself:

- round wall time: between the ends of consecutive rounds (fedpipe: the researcher's round
  records; Flower: ``aggregate_train``), median over rounds 2-5;
- start-up: from the side's process start to its first round's tasks being sent (imports, Ray,
  the nodes' first set-up is in round 1 for fedpipe, where the virtual nodes' roots are made);
- peak memory: the peak of the summed RSS and PSS of the process tree (``benchmarks/proctree.py``:
  the driver, Ray's GCS and raylet, its workers);
- final accuracy: the final global model on every node's test rows (weighted by their counts).

fedpipe's nodes run the full node round (approval check, node state in SQLite, the codec, files),
Flower's clients train on tensors in memory. Targets at N = 1000: round time at most a third of
Flower's, peak memory no higher, accuracy within 1 point. Nothing is asserted: the figures are
printed, with ratios, and written to ``--out`` as JSON.

Usage: ``python benchmarks/simulation.py [--quick] [--configs 10,100,1000,1000/100] [--cpus 2]
[--sides fedpipe,flower] [--repeat R] [--out results.json]``. ``--quick``: N = 10 and 100, 3 rounds.
``--repeat R``: R runs of each configuration, the sides' order reversed every other run (the
host's speed drifts between runs of minutes; this weighs it on both sides alike), then the
median over the runs of each side's round time.
The fedpipe side alone: ``python benchmarks/simulation.py --side fedpipe --data D.npz --result R.json``.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

T0 = time.perf_counter()

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

CONFIG = ROOT / "examples" / "simulation.toml"
ROWS_PER_NODE = 20
DEFAULT_CONFIGS = ("10", "100", "1000", "1000/100")


def _config(rounds: int) -> Any:
    import attrs

    from fedpipe.researcher.config import load_config

    return attrs.evolve(load_config(CONFIG), rounds=rounds)


def write_data(path: Path, nodes: int, per_round: int, *, rounds: int, cpus: int, seed: int) -> None:
    """The task of one configuration as Flower's side reads it, made with fedpipe's own functions.

    ``fedpipe.simulation.simulate`` draws the same rows and partitions from ``rows`` and ``seed``
    and each node the same test rows (its split is seeded by the job id and dataset id), so both
    sides hold the same data; ``check`` in the fedpipe side verifies it.
    """
    import numpy as np

    from fedpipe.simulation.partition import partition
    from fedpipe.steps.data import split_indices, split_seed
    from fedpipe.training import enlarge, load_breast_cancer

    config = _config(rounds)
    data = enlarge(load_breast_cancer(), max(569, ROWS_PER_NODE * nodes), seed=seed)
    parts = partition(data.labels, nodes, scheme="iid", seed=seed)
    args = config.training_args
    job_id = config.job_id or f"simulation-{seed}"
    tests = []
    for rows in parts:
        split = split_indices(len(rows), float(args["test_ratio"]), split_seed(job_id, config.dataset))
        tests.append(rows[list(split.test_indices)])
    model_args = config.model_args
    np.savez(
        path,
        features=data.features,
        labels=data.labels,
        indices=np.concatenate(parts),
        offsets=np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64),
        test_indices=np.concatenate(tests).astype(np.int64),
        test_offsets=np.concatenate([[0], np.cumsum([len(t) for t in tests])]).astype(np.int64),
        feature_mean=np.asarray(model_args["feature_mean"], dtype=np.float32),
        feature_std=np.asarray(model_args["feature_std"], dtype=np.float32),
        rounds=np.asarray(rounds),
        per_round=np.asarray(per_round),
        epochs=np.asarray(int(args["epochs"])),
        batch_size=np.asarray(int(args["loader_args"]["batch_size"])),
        lr=np.asarray(float(args["optimizer_args"]["lr"])),
        test_ratio=np.asarray(float(args["test_ratio"])),
        seed=np.asarray(seed),
        cpus=np.asarray(cpus),
        client_cpus=np.asarray(1.0),
    )


def fedpipe_side(data: Path, result: Path) -> None:
    """Run the configuration of ``data`` with ``fedpipe.simulation.simulate`` on Ray; write its figures."""
    import numpy as np
    import proctree

    from fedpipe.simulation import EngineOptions, simulate

    with np.load(data) as arrays:
        scalars = {key: arrays[key].item() for key in ("rounds", "per_round", "seed", "cpus")}
        nodes = len(arrays["offsets"]) - 1
        rows = len(arrays["labels"])
    config = _config(int(scalars["rounds"]))
    per_round = int(scalars["per_round"])
    ends: list[float] = []
    first_sent: list[float] = []

    def on_progress(event: Any) -> None:
        if not first_sent and event.status == "sent":
            first_sent.append(time.perf_counter())

    with proctree.PeakMemory() as peak:
        outcome = simulate(
            config,
            nodes=nodes,
            per_round=None if per_round >= nodes else per_round,
            rows=rows,
            seed=int(scalars["seed"]),
            engine="ray",
            engine_options=EngineOptions(num_cpus=int(scalars["cpus"])),
            on_round=lambda record: ends.append(time.perf_counter()),
            on_progress=on_progress,
        )
    total = time.perf_counter() - T0
    starts = first_sent[:1] + ends[:-1]
    round_s = [end - start for start, end in zip(starts, ends, strict=False)]
    training = round_s[: int(scalars["rounds"])]
    record = {
        "nodes": nodes,
        "per_round": per_round,
        "round_s": training,
        "median_round_s_2_5": statistics.median(training[1:5] or training),
        "startup_s": first_sent[0] - T0 if first_sent else None,
        "final_eval_s": round_s[-1] if len(round_s) > len(training) else None,
        "total_s": total,
        "peak_rss_mib": peak.peak_rss_mib,
        "peak_pss_mib": peak.peak_pss_mib,
        "final_accuracy": outcome.final_metric,
        "failures": sum(1 for r in outcome.rounds for n in r.results if not n.success),
    }
    result.write_text(json.dumps(record, indent=2) + "\n")


def _run_side(command: list[str], result: Path, timeout: float) -> dict[str, Any] | None:
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0 or not result.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        print(f"  failed (exit {done.returncode}): " + " | ".join(tail), file=sys.stderr)
        return None
    record: dict[str, Any] = json.loads(result.read_text())
    record["wall_s"] = time.perf_counter() - started
    return record


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _ratio(a: Any, b: Any) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


def main() -> int:
    """Run every configuration on both sides and print them side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 10 and 100, 3 rounds")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="N or N/K, comma-separated")
    parser.add_argument("--rounds", type=int, default=5, help="training rounds (default 5)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of each side's local Ray (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the rows, partitions and splits")
    parser.add_argument("--sides", default="fedpipe,flower", help="which sides to run")
    parser.add_argument("--env", type=Path, default=None, help="the Flower scratch environment's folder")
    parser.add_argument("--out", type=Path, default=None, help="write every figure here as JSON")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per side and configuration")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each configuration, the sides' order reversed every other run (ABBA...), so that a"
        " shared host's drift in speed weighs on both sides alike; the medians over runs are printed too",
    )
    parser.add_argument("--side", choices=("fedpipe",), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "fedpipe":
        fedpipe_side(args.data, args.result)
        return 0
    configs = ["10", "100"] if args.quick else args.configs.split(",")
    rounds = 3 if args.quick else args.rounds
    sides = args.sides.split(",")
    flower_python: Path | None = None
    if "flower" in sides:
        from flower_env import ensure_flower_env

        flower_python = ensure_flower_env(args.env)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedpipe-bench-sim-") as scratch:
        for spec in configs:
            nodes_text, _, per_text = spec.partition("/")
            nodes, per_round = int(nodes_text), int(per_text or nodes_text)
            data = Path(scratch) / f"task-{nodes}-{per_round}.npz"
            write_data(data, nodes, per_round, rounds=rounds, cpus=args.cpus, seed=args.seed)
            for run in range(max(1, args.repeat)):
                row: dict[str, Any] = {"nodes": nodes, "per_round": per_round, "run": run + 1}
                for side in sides if run % 2 == 0 else sides[::-1]:
                    out = Path(scratch) / f"{side}-{nodes}-{per_round}-{run}.json"
                    print(f"N = {nodes}, {per_round} per round: {side} ...", file=sys.stderr, flush=True)
                    if side == "fedpipe":
                        command = [sys.executable, str(Path(__file__).resolve()), "--side", "fedpipe"]
                        command += ["--data", str(data), "--result", str(out)]
                    else:
                        command = [str(flower_python), str(HERE / "flower_sim.py"), "--data", str(data)]
                        command += ["--out", str(out)]
                    row[side] = _run_side(command, out, args.timeout)
                results.append(row)
    _print(results)
    if args.repeat > 1:
        _print_medians(results)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _print(results: list[dict[str, Any]]) -> None:
    print("\nfedpipe simulate (Ray) vs Flower 1.42 (Ray), same task, partitions and CPUs")
    header = (
        f"{'N':>5} {'K':>5} | {'round s (median 2-5)':>22} {'ratio':>6} | {'start-up s':>13} |"
        f" {'peak RSS MiB':>13} {'ratio':>6} | {'peak PSS MiB':>13} | {'final accuracy':>15}"
    )
    print(header)
    print("-" * len(header))
    for row in results:
        if row.get("run", 1) > 1:
            print(f"{'':>5} {'':>5} | run {row['run']}")
        ours, theirs = row.get("fedpipe") or {}, row.get("flower") or {}
        accuracy = f"{_fmt(ours.get('final_accuracy'), '.3f')}/{_fmt(theirs.get('final_accuracy'), '.3f')}"
        print(
            f"{row['nodes']:>5} {row['per_round']:>5} |"
            f" {_fmt(ours.get('median_round_s_2_5')):>10} /{_fmt(theirs.get('median_round_s_2_5')):>10}"
            f" {_ratio(ours.get('median_round_s_2_5'), theirs.get('median_round_s_2_5')):>6} |"
            f" {_fmt(ours.get('startup_s'), '.1f'):>6}/{_fmt(theirs.get('startup_s'), '.1f'):>6} |"
            f" {_fmt(ours.get('peak_rss_mib'), '.0f'):>6}/{_fmt(theirs.get('peak_rss_mib'), '.0f'):>6}"
            f" {_ratio(ours.get('peak_rss_mib'), theirs.get('peak_rss_mib')):>6} |"
            f" {_fmt(ours.get('peak_pss_mib'), '.0f'):>6}/{_fmt(theirs.get('peak_pss_mib'), '.0f'):>6} |"
            f" {accuracy:>15}"
        )
    print("(each cell: fedpipe/Flower; ratio: fedpipe over Flower)")


def _print_medians(results: list[dict[str, Any]]) -> None:
    """Per configuration, the median over its runs of each side's round time, and their ratio."""
    print("\nmedian over the runs of each side's round time (median of rounds 2-5 in each run)")
    configs = sorted({(r["nodes"], r["per_round"]) for r in results})
    for nodes, per_round in configs:
        runs = [r for r in results if (r["nodes"], r["per_round"]) == (nodes, per_round)]
        sides = {}
        for side in ("fedpipe", "flower"):
            times = [t for r in runs if (t := (r.get(side) or {}).get("median_round_s_2_5")) is not None]
            sides[side] = statistics.median(times) if times else None
        ratios = [
            _ratio(
                (r.get("fedpipe") or {}).get("median_round_s_2_5"),
                (r.get("flower") or {}).get("median_round_s_2_5"),
            )
            for r in runs
        ]
        print(
            f"{nodes:>5} {per_round:>5} | {_fmt(sides['fedpipe']):>10} /{_fmt(sides['flower']):>10}"
            f" {_ratio(sides['fedpipe'], sides['flower']):>6} | {len(runs)} runs, ratios {' '.join(ratios)}"
        )


if __name__ == "__main__":
    sys.exit(main())
