"""``fedpipe demo``: a real federated experiment on embedded defaults, end to end over HTTP.

It starts the file-exchange and task server on 127.0.0.1, prepares N node directories (each with
its own SQLite database, its non-IID shard of the shipped breast-cancer data and plan approval
on), has each node owner register the dataset and approve the demo plan, starts one node process
per directory (nodes only poll the server: outbound connections only), runs sample-weighted FedAvg
(or SCAFFOLD, or secure aggregation) with validation before and after training, prints a table per
round and writes a plot. With LOM secure aggregation the node owners also pin each other's identity
keys, and the nodes agree their pairwise keys through the server on the first round.
"""

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from attrs import evolve, frozen

from fedpipe.approval import plan_digest
from fedpipe.researcher.experiment import Experiment, ExperimentResult, RoundRecord, SecureReport

__all__ = ["DEMO_PLAN_CLASS", "DemoOptions", "demo_plan_source", "run_demo", "secure_line", "secure_totals"]

DEMO_PLAN_CLASS = "BreastCancerMlp"
DATASET_ID = "breast-cancer"
TOKEN_FILE = "node.token"  # noqa: S105 - the name of the file, not a secret
GPU_FALLBACK_LINE = "no GPU here: nodes train on the CPU"

# FedAvg trains with the plan's default Adam. SCAFFOLD steps with plain SGD (its correction
# assumes SGD steps), which at Adam's rate barely moves in the demo's few steps per round (86.5%
# after 5 rounds at 0.01): it gets a rate 30 times larger and reaches FedAvg's plateau (95.7%).
# No momentum: the final validation-only round builds the default Adam from the same arguments.
FEDAVG_OPTIMIZER_ARGS: Mapping[str, float] = {"lr": 0.01}
SCAFFOLD_OPTIMIZER_ARGS: Mapping[str, float] = {"lr": 0.3}


@frozen(kw_only=True)
class DemoOptions:
    """What ``fedpipe demo`` runs (``secagg_scheme``, "joye-libert" or "lom", matters when ``secagg`` is on)."""

    rounds: int = 5
    nodes: int = 3
    epochs: int = 2
    secagg: bool = False
    secagg_scheme: str = "joye-libert"
    scaffold: bool = False
    gpu: bool = False
    seed: int = 0
    output: Path = Path("demo-output")
    quiet: bool = False


def demo_plan_source() -> str:
    """The source text of the demo training plan (what node owners approve)."""
    return (Path(__file__).parent / "demo_plan.py").read_text(encoding="utf-8")


def _say(options: DemoOptions, text: str = "") -> None:
    if not options.quiet:
        print(text, flush=True)


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = round(width * done / max(total, 1))
    return "[" + "#" * filled + "-" * (width - filled) + f"] {done}/{total}"


def _write_shards(options: DemoOptions, roots: list[Path]) -> list[Path]:
    from fedpipe.training import load_breast_cancer, non_iid_shards

    data = load_breast_cancer()
    shards = non_iid_shards(data.labels, len(roots), seed=options.seed)
    header = ",".join([*data.feature_names, "label"])
    paths = []
    for root, rows in zip(roots, shards, strict=True):
        table = np.column_stack([data.features[rows], data.labels[rows]])
        path = root / "data" / "breast_cancer_shard.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savetxt(path, table, delimiter=",", header=header, comments="", fmt="%.6g")
        paths.append(path)
    return paths


def _prepare_nodes(options: DemoOptions, roots: list[Path], source: str, secagg: Any) -> None:
    """What each node owner does by hand: settings, dataset registration, plan approval, keys."""
    from fedpipe.bootstrap import open_owner
    from fedpipe.plan import DatasetRecord
    from fedpipe.ports import Approval

    shard_paths = _write_shards(options, roots)
    digest = plan_digest(source).map(lambda d: d.text(short=True)).value_or("(no digest)")
    for i, (root, shard) in enumerate(zip(roots, shard_paths, strict=True)):
        node_id = f"node-{i + 1}"
        with open_owner(root, node_id=node_id, gpu=options.gpu) as owner:
            owner.datasets.add(
                DatasetRecord(
                    dataset_id=DATASET_ID,
                    name="Wisconsin breast cancer (shard)",
                    path=str(shard),
                    data_type="csv",
                    description="non-IID shard written by fedpipe demo",
                )
            )
            if owner.approvals.find(source) is None:
                owner.approvals.register(source, name="demo breast-cancer MLP", status=Approval.APPROVED)
            if secagg is not None:
                secagg.install(owner, node_id)
        _say(
            options,
            f"  {node_id}: dataset `{DATASET_ID}` registered ({shard.stat().st_size} bytes), plan {digest} approved by the owner",
        )


def _pin_peers(options: DemoOptions, roots: list[Path], node_ids: list[str]) -> None:
    """What the node owners do before a LOM run: hand each other their identity keys and pin them."""
    from fedpipe.bootstrap import open_owner

    keys: dict[str, bytes] = {}
    for root, node_id in zip(roots, node_ids, strict=True):
        with open_owner(root, node_id=node_id) as owner:
            keys[node_id] = owner.identity.public_pem()
    for root, node_id in zip(roots, node_ids, strict=True):
        with open_owner(root, node_id=node_id) as owner:
            pinned = [owner.peers.add(peer, pem) for peer, pem in keys.items() if peer != node_id]
        _say(
            options,
            f"  {node_id}: pinned the identity keys of "
            + ", ".join(f"{p.node_id} ({p.fingerprint[:15]}…)" for p in pinned),
        )


class _NodeSupervisor:
    """Starts one node process per root and restarts any that dies while the experiment runs."""

    def __init__(self, options: DemoOptions, server_url: str, roots: list[Path]) -> None:
        self.options = options
        self.server_url = server_url
        self.roots = roots
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="node-supervisor", daemon=True)

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        root = self.roots[i]
        with open(root / "node.log", "ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fedpipe",
                    "node",
                    "--server",
                    self.server_url,
                    "--root",
                    str(root),
                    "--node-id",
                    f"node-{i + 1}",
                    "--token-file",
                    str(root / TOKEN_FILE),
                    "--poll-wait",
                    "2",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        (root / "node.pid").write_text(str(proc.pid))
        return proc

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None and not self._stop.is_set():
                    _say(
                        self.options,
                        f"  ! node-{i + 1} exited (code {proc.returncode}): restarted node-{i + 1}",
                    )
                    self.procs[i] = self._spawn(i)

    def __enter__(self) -> "_NodeSupervisor":
        self.procs = [self._spawn(i) for i in range(len(self.roots))]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def _fmt(value: float | None, pct: bool = True) -> str:
    if value is None:
        return "   -  "
    return f"{100 * value:5.1f}%" if pct else f"{value:6.3f}"


def _seconds(value: float | None) -> str:
    """A duration as the demo prints it.

    >>> _seconds(0.0042), _seconds(0.213), _seconds(3.42), _seconds(None)
    ('4 ms', '0.21 s', '3.4 s', '-')
    """
    if value is None:
        return "-"
    if value < 0.1:
        return f"{1000 * value:.0f} ms"
    return f"{value:.2f} s" if value < 1 else f"{value:.1f} s"


def _counts(values: list[int]) -> str:
    """One count, or the range when the nodes differ.

    >>> _counts([4097, 4097]), _counts([10, 12])
    ('4,097', '10-12')
    """
    low, high = min(values), max(values)
    return f"{low:,}" if low == high else f"{low:,}-{high:,}"


def _many(count: int, word: str) -> str:
    """``count`` and ``word``, plural unless one.

    >>> _many(1, "round"), _many(1234, "value")
    ('1 round', '1,234 values')
    """
    return f"{count:,} {word}" + ("" if count == 1 else "s")


def _masks(reports: Sequence[SecureReport], *, total: bool = False) -> str:
    """``, masks <cpu> cpu (<share>% ready)``, or nothing when no node reported its mask figures.

    For one round: the largest mask CPU time and the least ready share of the nodes (the node the
    round waited for); for the whole run (``total``): the sum, and the mean share.
    """
    cpu = [r.mask_cpu_seconds for r in reports if r.mask_cpu_seconds is not None]
    ready = [r.precomputed_fraction for r in reports if r.precomputed_fraction is not None]
    if not cpu:
        return ""
    text = f", masks {_seconds(sum(cpu) if total else max(cpu))} cpu"
    if not ready:
        return text
    share = sum(ready) / len(ready) if total else min(ready)
    return text + f" ({100 * share:.0f}% ready{' on average' if total else ''})"


def secure_line(record: RoundRecord) -> str | None:
    """The line that says a round was encrypted, or None for a plain round.

    The encryption time is the slowest node's (the one the round waited for); a figure that no
    node reported is left out.
    """
    reports = record.secure
    if not reports:
        return None
    schemes = sorted({r.scheme for r in reports})
    encrypt = [r.encrypt_seconds for r in reports if r.encrypt_seconds is not None]
    clipped = sum(r.out_of_range for r in reports)
    return (
        f"round {record.number}: secure ({', '.join(schemes)}) {_many(len(reports), 'node')}, "
        f"{_counts([r.values for r in reports])} values -> {_counts([r.ciphertexts for r in reports])} "
        "ciphertexts/node"
        + (f", encrypt {_seconds(max(encrypt))}" if encrypt else "")
        + _masks(reports)
        + (f", {_many(clipped, 'value')} clipped" if clipped else "")
    )


def secure_totals(result: ExperimentResult) -> str | None:
    """The secure-aggregation totals of the run, or None when no round was encrypted."""
    reports = [r for record in result.rounds for r in record.secure]
    if not reports:
        return None
    rounds = sum(1 for record in result.rounds if record.secure)
    encrypt = [r.encrypt_seconds for r in reports if r.encrypt_seconds is not None]
    return (
        f"secure aggregation: {_many(rounds, 'round')}, {_many(len(reports), 'encrypted update')}, "
        f"{_many(sum(r.values for r in reports), 'value')} -> "
        f"{_many(sum(r.ciphertexts for r in reports), 'ciphertext')}"
        + (f", encrypt {_seconds(sum(encrypt))}" if encrypt else "")
        + _masks(reports, total=True)
        + f" in all, {_many(sum(r.out_of_range for r in reports), 'value')} clipped"
    )


def _print_round(options: DemoOptions, record: RoundRecord, total: int) -> None:
    title = f"round {record.number:>2}" if record.training else "final   "
    _say(
        options,
        f"{title} {_bar(record.round + 1, total)}  ({record.seconds:.1f} s)"
        + ("" if record.training else "  validation of the final global model"),
    )
    # the columns appear only when a node reported its timings (a secure round of a fedpipe node)
    secure = {
        r.node_id: r for r in record.secure if r.encrypt_seconds is not None or r.mask_cpu_seconds is not None
    }
    _say(
        options,
        "    node      samples   loss    acc(global)  acc(local)"
        + ("    encrypt  masks(cpu)" if secure else ""),
    )
    for result in record.results:
        m = record.metrics.get(result.node_id)
        if not result.success:
            _say(options, f"    {result.node_id:<9} FAILED: {result.msg}")
            continue
        if not record.training:
            _say(options, f"    {result.node_id:<9} {'':>7}  {'':>6}   {_fmt(m.before if m else None)}")
            continue
        report = secure.get(result.node_id)
        _say(
            options,
            f"    {result.node_id:<9} {result.sample_size:>7}  {_fmt(m.train_loss if m else None, pct=False)}   {_fmt(m.before if m else None)}       {_fmt(m.after if m else None)}"
            + (
                ""
                if report is None
                else f"       {_seconds(report.encrypt_seconds):>8}  {_seconds(report.mask_cpu_seconds):>10}"
            ),
        )
    losses = [m.train_loss for m in record.metrics.values() if m.train_loss is not None]
    mean_loss = sum(losses) / len(losses) if losses else None
    _say(
        options,
        f"    {'global':<9} {'':>7}  {_fmt(mean_loss, pct=False)}   {_fmt(record.weighted('before'))}       {_fmt(record.weighted('after'))}",
    )
    line = secure_line(record)
    if line is not None:
        _say(options, f"    {line}")


def _plot(result: ExperimentResult, path: Path) -> None:
    from fedpipe.researcher.outputs import plot_accuracy

    plot_accuracy(result, path, title="fedpipe demo: federated breast-cancer MLP")


def reference_statistics() -> tuple[list[float], list[float]]:
    """Mean and standard deviation of ``log1p`` of each feature: the study protocol's fixed scaling.

    In a real study these come from published reference data; the demo derives them from the
    shipped copy of the data set, which every party of the protocol has.
    """
    from fedpipe.training import load_breast_cancer

    logs = np.log1p(load_breast_cancer().features.astype(np.float64))
    return [float(x) for x in logs.mean(axis=0)], [float(x) for x in logs.std(axis=0)]


def initial_params(seed: int, hidden: int = 16) -> dict[str, torch.Tensor]:
    """The researcher's initial global model (the demo plan's MLP built with ``seed``)."""
    from fedpipe.researcher.demo_plan import build_model

    torch.manual_seed(seed)
    model = build_model(hidden)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _issue_credentials(server_root: Path, roots: list[Path]) -> str:
    """What the server operator does by hand: one token per node (given to its owner), one for us."""
    from fedpipe.adapters.private_file import write_private
    from fedpipe.server.auth import TokenStore

    store = TokenStore(server_root)
    try:
        for i, root in enumerate(roots):
            write_private(root / TOKEN_FILE, store.issue("node", f"node-{i + 1}").token)
        return store.issue("researcher", "demo-researcher").token
    finally:
        store.close()


def run_experiment(options: DemoOptions) -> ExperimentResult:
    """Run the whole demo and return the experiment's records (used by ``run_demo`` and the tests)."""
    from fedpipe.adapters.http_exchange import HttpFileExchange
    from fedpipe.researcher.board import BoardClient
    from fedpipe.researcher.strategies import make_strategy
    from fedpipe.server.auth import bearer
    from fedpipe.server.testing import running_server

    out = options.output.resolve()
    if out.exists():
        shutil.rmtree(out)
    roots = [out / "nodes" / f"node-{i + 1}" for i in range(options.nodes)]
    for root in roots:
        root.mkdir(parents=True)
    source = demo_plan_source()
    node_ids = [f"node-{i + 1}" for i in range(options.nodes)]
    job_id = f"job-demo-seed{options.seed}"  # deterministic: the split (and so the run) depends on it
    lom = options.secagg and options.secagg_scheme == "lom"
    if options.secagg and options.secagg_scheme not in ("joye-libert", "lom"):
        raise ValueError(f"unknown secure-aggregation scheme {options.secagg_scheme!r}")
    secagg: Any
    if lom:
        from fedpipe.researcher.secure import FedpipeLomAggregation

        inner, _ = make_strategy(
            evolve(options, secagg=False), initial_params(options.seed), node_ids=node_ids, job_id=job_id
        )
        secagg = FedpipeLomAggregation(node_ids=tuple(node_ids), secagg_id=f"lom-{job_id}")
        strategy = secagg.wrap(inner, initial_params(options.seed))
    else:
        strategy, secagg = make_strategy(
            options, initial_params(options.seed), node_ids=node_ids, job_id=job_id
        )
    scheme = "LOM" if lom else "Joye-Libert"
    _say(
        options,
        f"fedpipe demo: {options.nodes} nodes, {options.rounds} rounds, "
        + (
            f"SCAFFOLD (SGD, lr {SCAFFOLD_OPTIMIZER_ARGS['lr']:g})"
            if options.scaffold
            else f"FedAvg (Adam, lr {FEDAVG_OPTIMIZER_ARGS['lr']:g})"
        )
        + (f" + {scheme} secure aggregation" if options.secagg else ""),
    )
    if options.gpu and not torch.cuda.is_available():
        _say(options, GPU_FALLBACK_LINE)  # the nodes' own warning lands in their logs, not here
    _say(options, "node owners:")
    _prepare_nodes(options, roots, source, None if lom else secagg)
    if lom:
        _pin_peers(options, roots, node_ids)
    with running_server(out / "server") as server_url:
        token = _issue_credentials(out / "server", roots)
        _say(options, f"server: {server_url} (file exchange + task board; a token for each node and us)")
        exchange = HttpFileExchange(f"{server_url}/upload", headers=bearer(token))
        plan_path = out / "demo_plan.py"
        plan_path.write_text(source, encoding="utf-8")
        plan_url = exchange.upload(plan_path).unwrap()
        board = BoardClient(server_url, token=token)
        with _NodeSupervisor(options, server_url, roots):
            training_args: Mapping[str, Any] = {
                "epochs": options.epochs,
                "loader_args": {"batch_size": 16},
                "optimizer_args": dict(
                    SCAFFOLD_OPTIMIZER_ARGS if options.scaffold else FEDAVG_OPTIMIZER_ARGS
                ),
                "test_ratio": 0.25,
                "test_on_global_updates": True,
                "test_on_local_updates": True,
                "test_metric": "ACCURACY",
                "random_seed": options.seed,
                "use_gpu": options.gpu,
                "log_interval": 5,
            }
            mean, std = reference_statistics()
            experiment = Experiment(
                board=board,
                exchange=exchange,
                node_ids=node_ids,
                job_id=job_id,
                plan_source_url=plan_url,
                plan_class=DEMO_PLAN_CLASS,
                dataset_id=DATASET_ID,
                training_args=training_args,
                model_args={"hidden": 16, "feature_mean": mean, "feature_std": std},
                initial_params=initial_params(options.seed),
                strategy=strategy,
                workdir=out / "researcher",
                round_deadline_s=300.0,
                secagg_fields=secagg.request_fields if secagg is not None else None,
                on_round=lambda record: _print_round(options, record, options.rounds + 1),
            )
            started = time.monotonic()
            result = experiment.run(options.rounds)
            _say(options, f"experiment finished in {time.monotonic() - started:.1f} s")
        board.close()
    return result


def run_demo(options: DemoOptions) -> int:
    """Run the demo, print the table and the final global accuracy, write the plot; 0 on success."""
    result = run_experiment(options)
    plot = options.output / "accuracy.png"
    _plot(result, plot)
    final = result.final_metric
    _say(options, f"plot: {plot}")
    totals = secure_totals(result)
    if totals is not None:
        _say(options, totals)
    if final is None:
        _say(options, "final global accuracy: unavailable (no node validated the final model)")
        return 1
    _say(options, f"final global accuracy: {100 * final:.1f}% (sample-weighted over the nodes' test subsets)")
    return 0
