"""Stock Fed-BioMed 6.4.1 nodes against fedpipe nodes, driven by the same stock researcher.

Run: ``python benchmarks/fedbiomed_round.py [--rounds 3] [--sizes small,big]`` from the repository
root (it builds the scratch environment with the real package, ``scripts/fedbiomed_env.sh``, on
first use). One researcher component and the same two seeded CSV shards of the shipped
breast-cancer data serve every run; each run is one unmodified ``Experiment`` (FedAverage, two
nodes, validation before and after training) over two stock nodes, then over two fedpipe nodes,
for a 513-parameter model (30-16-1) and a 1,048,577-parameter one (30-32768-1).

Per run it reports, as medians over rounds and nodes:

- round wall: one ``Experiment.run_once`` at the researcher;
- outside training: from the train request's send to its reply's arrival at the researcher, less
  the node's own ``rtime_training`` (so: plan loading, data loading and splitting, the two
  validations, state saving, encoding, both transfers);
- training: the node's ``rtime_training``;
- peak RSS: the largest ``VmHWM`` of the two node processes, read before they stop.

By default node i runs on CPU i with one torch thread (``taskset``, ``OMP_NUM_THREADS=1``), the
same for both implementations, as if each node had a machine of its own: two nodes with torch's
default threads on two shared cores slow each other's training twentyfold and every figure with
it. ``--shared-cpus`` measures that set-up instead.

and the fedpipe/stock ratio of each (the targets: outside training at most 0.5, peak RSS at most 1).
Figures move with the machine's load; the ratios compare runs made one after the other here.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fedbiomed.fedpipe_nodes import running_fedpipe_nodes, set_up_node  # noqa: E402
from tests.fedbiomed.shards import SHIPPED_CSV, write_shards  # noqa: E402
from tests.fedbiomed.stock_federation import (  # noqa: E402
    PLANS,
    create_federation,
    run_harness,
    running_nodes,
)

SIZES = {"small": (16, 0.01), "big": (32768, 0.001)}  # hidden units, learning rate


def _peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _experiment(python: Path, root: Path, researcher_dir: Path, *, name: str, hidden: int, lr: float,
                rounds: int) -> dict[str, Any]:  # fmt: skip
    out = root / f"{name}.json"
    run_harness(
        python,
        [
            "experiment", "--dir", str(researcher_dir), "--plan", str(PLANS / "breast_cancer_plan.py"),
            "--class", "BreastCancerPlan", "--nodes", "2", "--rounds", str(rounds), "--seed", "0",
            "--hidden", str(hidden), "--lr", str(lr), "--skip-params", "--timeout", "600", "--out", str(out),
        ],
        cwd=root,
        timeout=700,
    )  # fmt: skip
    results: dict[str, Any] = json.loads(out.read_text())
    if not results["completed"]:
        raise SystemExit(f"{name}: the experiment did not complete: {results['errors'][:3]}")
    return results


def _summary(results: dict[str, Any], rss: list[float]) -> dict[str, float]:
    outside, training = [], []
    for round_, by_node in results["reply_seconds"].items():
        for node, seconds in by_node.items():
            rtime = results["node_timings"][round_][node]["rtime_training"]
            outside.append(seconds - rtime)
            training.append(rtime)
    return {
        "round_wall": statistics.median(results["timings"]["round_walls"]),
        "outside_training": statistics.median(outside),
        "training": statistics.median(training),
        "peak_rss_mib": max(rss),
        "accuracy": results["final_global_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="small,big", help="comma-separated: small, big")
    parser.add_argument("--env", type=Path, default=REPO / ".fbm-env", help="the scratch environment")
    parser.add_argument(
        "--shared-cpus",
        action="store_true",
        help="let the node processes share every CPU with torch's default threads (default: node i on "
        "CPU i with one torch thread, as if each node had a machine of its own)",
    )
    args = parser.parse_args()
    subprocess.run(["bash", str(REPO / "scripts" / "fedbiomed_env.sh"), str(args.env)], check=True)
    python = args.env / "bin" / "python"
    root = Path(tempfile.mkdtemp(prefix="fedbiomed-bench-"))
    shards = write_shards(SHIPPED_CSV, root / "shards", n=2, seed=0)
    researcher, stock = create_federation(python, root, shards)
    ours = [
        set_up_node(root / f"fedpipe{i}", node_id=f"fedpipe-node-{i}", name=f"fedpipe{i}", csv=shard,
                    plan=PLANS / "breast_cancer_plan.sent.py")
        for i, shard in enumerate(shards, 1)
    ]  # fmt: skip
    table: dict[str, dict[str, dict[str, float]]] = {}
    for size in args.sizes.split(","):
        hidden, lr = SIZES[size]
        table[size] = {}
        for impl in ("stock", "fedpipe"):
            started = time.monotonic()
            if impl == "stock":
                with running_nodes(python, stock, cwd=root, pin=not args.shared_cpus) as procs:
                    results = _experiment(python, root, researcher.dir, name=f"{size}-{impl}", hidden=hidden,
                                          lr=lr, rounds=args.rounds)  # fmt: skip
                    rss = [_peak_rss_mib(p.pid) for p in procs]
            else:
                with running_fedpipe_nodes(
                    ours, researcher, logs=root / "logs", pin=not args.shared_cpus
                ) as procs:
                    results = _experiment(python, root, researcher.dir, name=f"{size}-{impl}", hidden=hidden,
                                          lr=lr, rounds=args.rounds)  # fmt: skip
                    rss = [_peak_rss_mib(p.pid) for p in procs]
            table[size][impl] = _summary(results, rss)
            print(f"{size} {impl}: {time.monotonic() - started:.1f} s", file=sys.stderr)

    print(f"\n{'model':<6} {'figure':<18} {'stock':>10} {'fedpipe':>10} {'ratio':>7}")
    for size, runs in table.items():
        for figure, unit in (
            ("round_wall", "s"),
            ("outside_training", "s"),
            ("training", "s"),
            ("peak_rss_mib", "MiB"),
            ("accuracy", ""),
        ):
            a, b = runs["stock"][figure], runs["fedpipe"][figure]
            ratio = b / a if a else float("nan")
            print(
                f"{size:<6} {figure + (' (' + unit + ')' if unit else ''):<18} {a:>10.3f} {b:>10.3f} {ratio:>7.2f}"
            )
    print(f"\n(work directory: {root})")


if __name__ == "__main__":
    main()
