"""Drive stock Fed-BioMed 6.4.1 components on loopback for fedpipe's interop tests and benchmark.

Runs under the python of the scratch environment that holds the real package (never under
fedpipe's own venv; fedpipe never imports fedbiomed). Every command but ``start-node`` prints one
JSON line on stdout and exits 0, or prints ``{"error": ...}`` there, the same one line on stderr,
and exits non-zero. Fed-BioMed's own console output goes to stderr.

    stock.py create-researcher --dir DIR --host 127.0.0.1 --port PORT
    stock.py create-node --dir DIR --researcher-host 127.0.0.1 --researcher-port PORT \
        --csv FILE --tags breast-cancer [--name NAME]
    stock.py start-node --dir DIR                  # foreground; terminate it to stop
    stock.py experiment --dir RESEARCHER_DIR --plan PLAN.py --class BreastCancerPlan --nodes N \
        --rounds 3 --seed 0 --out results.json [--timeout 600] [--hidden H | --param-count big] \
        [--secagg none|jl|lom]
    stock.py requests --dir RESEARCHER_DIR --nodes N --plan PLAN.py --class BreastCancerPlan \
        --out out.json
    stock.py shards --csv FILE --out DIR --n 2 --seed 0
"""

import argparse
import configparser
import contextlib
import importlib.util
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from shards import SHIPPED_CSV, feature_stats, write_shards  # noqa: E402

TAGS_DEFAULT = "breast-cancer"
SECAGG_CHOICES = ("none", "jl", "lom")
# The researcher's secagg set-up requests (LOM's key agreement, Joye-Libert's server key).
SECAGG_SETUP_REQUESTS = ("SecaggRequest", "AdditiveSSSetupRequest")
BIG_HIDDEN = 32768  # 30*h + h + h + 1 = 1,048,577 parameters
NODE_ARGS = {"gpu": False, "gpu_num": 1, "gpu_only": False, "debug": False}


class HarnessError(Exception):
    """A one-line failure of a harness command."""


# ----------------------------------------------------------------------------- output plumbing


class Output:
    """Keeps the real stdout for the one JSON line; everything else printed goes to stderr."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self._fd = os.dup(1)
        # Fed-BioMed prints banners, tables and tracebacks on stdout: send them to stderr at the
        # descriptor level so that child output and C-level writes follow too.
        os.dup2(2, 1)

    def emit(self, payload: dict[str, Any]) -> None:
        """Write ``payload`` as the one JSON line of this command."""
        sys.stdout.flush()
        os.write(self._fd, (json.dumps(payload) + "\n").encode())


def plain(value: Any) -> Any:
    """A JSON-ready copy of ``value`` (tensors and arrays become nested lists, enums values)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(item) for item in value]
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": len(value)}
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "value") and hasattr(value, "name"):
        return plain(value.value)
    if hasattr(value, "get_dict"):
        return plain(value.get_dict())
    return repr(value)


@contextlib.contextmanager
def captured_logs(level: int = logging.WARNING) -> Iterator[list[dict[str, Any]]]:
    """Collect Fed-BioMed's log records at ``level`` and above while the block runs."""
    records: list[dict[str, Any]] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                message = record.getMessage()
            except Exception:  # a record whose arguments do not format is still worth keeping
                message = str(record.msg)
            records.append({"level": record.levelname, "message": message, "t": time.time()})

    handler = _Collect(level)
    fbm_logger = logging.getLogger("fedbiomed")
    fbm_logger.addHandler(handler)
    try:
        yield records
    finally:
        fbm_logger.removeHandler(handler)


def researcher_errors(records: list[dict[str, Any]]) -> list[str]:
    """The researcher's error lines: errors, and warnings that report a node's ErrorMessage."""
    return [
        f"{item['level']}: {item['message']}"
        for item in records
        if item["level"] in ("ERROR", "CRITICAL") or "Error message received" in item["message"]
    ]


class EchoedStdout:
    """Writes through to the current ``sys.stdout`` and keeps a copy of the text.

    Experiment methods report a failure only by printing it to stdout ("Fed-BioMed researcher
    stopped due to exception: ...") before ``sys.exit``; the copy lets the harness name it.
    """

    def __init__(self, target: Any) -> None:
        self._target = target
        self._parts: list[str] = []

    def write(self, text: str) -> int:
        """Write ``text`` through and keep it."""
        self._parts.append(text)
        return int(self._target.write(text))

    def flush(self) -> None:
        """Flush the underlying stream."""
        self._target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    def stop_reasons(self) -> list[str]:
        """The messages of every "researcher stopped due to ..." block printed so far, one line each."""
        text = "".join(self._parts)
        found = re.findall(
            r"Fed-BioMed researcher stopped due to (?:exception|unknown error):\s*\n(.*?)(?:\n-{5,}|\Z)",
            text,
            flags=re.DOTALL,
        )
        reasons = []
        for block in found:
            lines = [line.strip() for line in block.splitlines() if line.strip()]
            # An unknown error adds a pointer to the backtrace below: not part of the reason.
            lines = [line for line in lines if not line.startswith("More details in the backtrace")]
            reasons.append(" ".join(lines))
        return reasons


@contextlib.contextmanager
def echoed_stdout() -> Iterator[EchoedStdout]:
    """Route ``sys.stdout`` through an ``EchoedStdout`` while the block runs."""
    saved = sys.stdout
    echo = EchoedStdout(saved)
    sys.stdout = echo  # type: ignore[assignment]
    try:
        yield echo
    finally:
        sys.stdout = saved


# ----------------------------------------------------------------------------- components


def read_config(root: Path) -> configparser.ConfigParser:
    """The component's ``etc/config.ini``."""
    path = root / "etc" / "config.ini"
    parser = configparser.ConfigParser()
    if not parser.read(path):
        raise HarnessError(f"no Fed-BioMed component in {root} (no etc/config.ini)")
    return parser


def run_fedbiomed_cli(argv: list[str]) -> None:
    """Run the ``fedbiomed`` command line in this process with ``argv``; exit codes raise."""
    saved = sys.argv
    # The CLI reads sys.argv itself (it looks for -y and --help there), not only its parser's input.
    sys.argv = ["fedbiomed", *argv]
    try:
        from fedbiomed.cli import run

        run()
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise HarnessError(f"fedbiomed {' '.join(argv)} exited with {exc.code}") from None
    finally:
        sys.argv = saved


def create_researcher(args: argparse.Namespace) -> dict[str, Any]:
    """``fedbiomed component create -c researcher`` with the server host and port set."""
    root = args.dir.resolve()
    os.environ["FBM_SERVER_HOST"] = args.host
    os.environ["FBM_SERVER_PORT"] = str(args.port)
    os.environ["FBM_RESEARCHER_COMPONENT_ROOT"] = str(root)
    started = time.monotonic()
    run_fedbiomed_cli(["component", "create", "-c", "researcher", "-p", str(root)])
    config = read_config(root)
    certificate = (root / "etc" / config["certificate"]["public_key"]).resolve()
    if not certificate.is_file():
        raise HarnessError(f"the researcher's certificate is missing: {certificate}")
    return {
        "researcher_id": config["default"]["id"],
        "certificate": str(certificate),
        "host": config["server"]["host"],
        "port": int(config["server"]["port"]),
        "dir": str(root),
        "seconds": round(time.monotonic() - started, 3),
    }


def create_node(args: argparse.Namespace) -> dict[str, Any]:
    """Create a stock node component and add the CSV dataset with the tags, non-interactively.

    Both steps are the stock command line (``fedbiomed component create -c node`` and
    ``fedbiomed node dataset add --file``), run in this one process so that fedbiomed is imported
    once. The CLI splits the JSON file's ``tags`` with ``str(tags).split(",")``, so the tags go in
    as one comma-separated string (a JSON list would become the single tag "['breast-cancer']").
    """
    root = args.dir.resolve()
    csv_path = args.csv.resolve()
    if not csv_path.is_file():
        raise HarnessError(f"no such CSV file: {csv_path}")
    name = args.name or root.name
    tags = [tag for tag in args.tags.split(",") if tag]
    os.environ["FBM_RESEARCHER_IP"] = args.researcher_host
    os.environ["FBM_RESEARCHER_PORT"] = str(args.researcher_port)
    os.environ["FBM_NODE_COMPONENT_ROOT"] = str(root)
    started = time.monotonic()
    run_fedbiomed_cli(["component", "create", "-c", "node", "-p", str(root), "-n", name])
    created = time.monotonic()
    description = root / "dataset.json"
    description.write_text(
        json.dumps(
            {
                "path": str(csv_path),
                "data_type": "csv",
                "description": f"breast cancer shard {csv_path.name}",
                "tags": ",".join(tags),
                "name": args.dataset_name or f"bc-{name}",
            }
        )
    )
    from fedbiomed.node.cli import NodeCLI

    cli = NodeCLI()
    saved = sys.argv
    sys.argv = ["fedbiomed", "node", "-p", str(root), "dataset", "add", "--file", str(description)]
    try:
        cli.parse_args(sys.argv[2:])
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise HarnessError(f"fedbiomed node dataset add exited with {exc.code}") from None
    finally:
        sys.argv = saved
    datasets = cli._node.dataset_manager.list_my_datasets(verbose=False)
    mine = [item for item in datasets if item.get("path") == str(csv_path)]
    if len(mine) != 1 or sorted(mine[0].get("tags", [])) != sorted(tags):
        raise HarnessError(f"the node's dataset registry does not hold {csv_path.name} with tags {tags}")
    config = read_config(root)
    return {
        "node_id": config["default"]["id"],
        "node_name": config["default"]["name"],
        "dataset_id": mine[0]["dataset_id"],
        "tags": mine[0]["tags"],
        "shape": plain(mine[0].get("shape")),
        "researcher": f"{config['researcher']['ip']}:{config['researcher']['port']}",
        "dir": str(root),
        "seconds": {
            "create": round(created - started, 3),
            "dataset_add": round(time.monotonic() - created, 3),
        },
    }


def start_node(args: argparse.Namespace) -> None:
    """Replace this process by the stock node runtime, in the foreground.

    ``fedbiomed node start`` runs exactly ``python -m fedbiomed.node.node_pm --config DIR
    --node-args JSON`` as a child and waits for it; a terminated parent would orphan that child,
    so the harness becomes the child itself: the caller's SIGTERM reaches the node's own handler.
    """
    root = args.dir.resolve()
    read_config(root)
    os.environ["FBM_NODE_COMPONENT_ROOT"] = str(root)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(
        sys.executable,
        [
            sys.executable,
            "-m",
            "fedbiomed.node.node_pm",
            "--config",
            str(root),
            "--node-args",
            json.dumps(NODE_ARGS),
        ],
    )


# ----------------------------------------------------------------------------- researcher side


def use_researcher(root: Path) -> None:
    """Point fedbiomed at the researcher component ``root``; call before any fedbiomed import.

    Importing fedbiomed.researcher's config module (which every researcher module does) creates
    or loads the component at FBM_RESEARCHER_COMPONENT_ROOT, else ``./fbm-researcher`` in the
    working directory.
    """
    read_config(root)
    if "fedbiomed.researcher.config" in sys.modules:
        raise HarnessError("fedbiomed's researcher config was imported before the component was chosen")
    os.environ["FBM_RESEARCHER_COMPONENT_ROOT"] = str(root)


def researcher_requests(root: Path) -> Any:
    """The researcher's ``Requests`` singleton for the component at ``root`` (starts its server)."""
    from fedbiomed.researcher.config import config
    from fedbiomed.researcher.requests import Requests

    if Path(config.root).resolve() != root:
        raise HarnessError(f"fedbiomed loaded the researcher at {config.root}, not {root}")
    return Requests(config)


def active_nodes(requests: Any) -> list[str]:
    """Ids of the nodes the researcher's registry shows with an open poll."""
    from fedbiomed.transport.node_agent import NodeActiveStatus

    return [
        agent.id for agent in requests._grpc_server.get_all_nodes() if agent.status == NodeActiveStatus.ACTIVE
    ]


def wait_for_nodes(requests: Any, count: int, deadline: float) -> list[str]:
    """Wait until ``count`` nodes poll the researcher (the Experiment only sees those present)."""
    while True:
        nodes = active_nodes(requests)
        if len(nodes) >= count:
            return sorted(nodes)
        if time.monotonic() > deadline:
            raise HarnessError(f"only {len(nodes)} of {count} nodes connected to the researcher in time")
        time.sleep(0.2)


def load_plan(path: Path, class_name: str) -> type:
    """Import ``class_name`` from the plan file (registered in sys.modules: the researcher reads
    the class's source with ``inspect.getsource``)."""
    if not path.is_file():
        raise HarnessError(f"no such plan file: {path}")
    module_name = f"stock_plan_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise HarnessError(f"cannot import the plan file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    plan = getattr(module, class_name, None)
    if not isinstance(plan, type):
        raise HarnessError(f"{path.name} defines no class {class_name}")
    return plan


def hidden_of(args: argparse.Namespace) -> int:
    """The hidden width: ``--hidden``, or the ~1M-parameter width for ``--param-count big``."""
    if args.hidden is not None:
        return int(args.hidden)
    return BIG_HIDDEN if args.param_count == "big" else 16


def experiment_arguments(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model_args and training_args of the reference experiment."""
    mean, std = feature_stats(args.csv)
    model_args = {
        "in_features": len(mean),
        "hidden": hidden_of(args),
        "feature_mean": mean,
        "feature_std": std,
    }
    training_args = {
        "loader_args": {"batch_size": 16},
        "optimizer_args": {"lr": args.lr},
        "epochs": 2,
        "test_ratio": 0.2,
        "test_on_global_updates": True,
        "test_on_local_updates": True,
        "random_seed": args.seed,
        # The reference baseline ran with 5 (6.4.1's default is 10): 8 training scalars per round.
        "log_interval": args.log_interval,
    }
    return model_args, training_args


class ScalarRecorder:
    """Wraps the Monitor's callback: keeps every Scalar feedback, then hands it to the Monitor."""

    def __init__(self, forward: Callable[[dict[str, Any]], None]) -> None:
        self._forward = forward
        self._lock = threading.Lock()
        self.items: list[dict[str, Any]] = []
        self.run_once = -1  # index of the run_once in progress when a scalar arrives
        self.paused = False  # drop what arrives (forwarded all the same)

    def __call__(self, message: dict[str, Any]) -> None:
        with self._lock:
            if not self.paused:
                item = {key: plain(value) for key, value in message.items() if key != "researcher_id"}
                item["arrival_run_once"] = self.run_once
                item["t"] = time.time()
                self.items.append(item)
        self._forward(message)

    def phases(self, rounds: int) -> list[dict[str, Any]]:
        """Every scalar with its ``round`` and ``phase`` (train, before, after, final).

        Scalars carry no round number. Each node sends its own in order: per round a validation
        of the received (global) parameters, the training batches, a validation after training;
        and after the last round the validation-only request's global validation. So a global
        validation that follows anything else starts the node's next round, and the one after
        the last round is the final validation.
        """
        with self._lock:
            items = list(self.items)
        state: dict[str, tuple[int, str]] = {}
        out = []
        for item in items:
            node = item.get("node_id", "")
            round_, last = state.get(node, (-1, ""))
            if item.get("test") and item.get("test_on_global_updates"):
                kind = "global"
                if last != "global":
                    round_ += 1
                phase = "final" if round_ >= rounds else "before"
            elif item.get("test"):
                kind = phase = "after"
            else:
                kind = phase = "train"
            state[node] = (round_, kind)
            out.append({**item, "round": round_, "phase": phase})
        return out


def summarise_validation(scalars: list[dict[str, Any]]) -> dict[str, Any]:
    """Per round and node, the validation metrics before/after training (and the final ones)."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for item in scalars:
        if item["phase"] == "train":
            continue
        key = "final" if item["phase"] == "final" else str(item["round"])
        entry = table.setdefault(key, {}).setdefault(item["node_id"], {"node_name": item.get("node_name")})
        # A validation split over several batches reports one scalar per batch: keep them all.
        entry.setdefault(item["phase"], []).append(
            {
                "metric": item["metric"],
                "batch_samples": item.get("batch_samples"),
                "total_samples": item.get("total_samples"),
            }
        )
    return table


def global_metric(scalars: list[dict[str, Any]], phase: str = "final") -> dict[str, Any]:
    """Sample-weighted means over nodes (and batches) of the metrics of one validation phase."""
    sums: dict[str, float] = {}
    weight = 0
    per_node: dict[str, dict[str, float]] = {}
    for item in scalars:
        if item["phase"] != phase:
            continue
        samples = int(item.get("batch_samples") or item.get("total_samples") or 0)
        weight += samples
        node = per_node.setdefault(item["node_id"], {"samples": 0})
        node["samples"] += samples
        for name, value in item["metric"].items():
            sums[name] = sums.get(name, 0.0) + float(value) * samples
            node[name] = node.get(name, 0.0) + float(value) * samples
    for node in per_node.values():
        for name in list(node):
            if name != "samples" and node["samples"]:
                node[name] /= node["samples"]
    means = {name: total / weight for name, total in sums.items()} if weight else {}
    return {"metrics": means, "samples": weight, "nodes": per_node}


def reply_summary(reply: dict[str, Any]) -> dict[str, Any]:
    """The fields of a TrainReply as the researcher keeps them, without the parameters."""
    keep = (
        "node_id",
        "node_name",
        "success",
        "msg",
        "dataset_id",
        "sample_size",
        "state_id",
        "encrypted",
        "timing",
    )
    out = {key: plain(reply.get(key)) for key in keep if key in reply}
    params = reply.get("params")
    if isinstance(params, dict):
        out["param_names"] = sorted(params)
    out.update(reply_shape(params, reply.get("encryption_factor"), reply.get("encrypted")))
    return out


def reply_shape(params: Any, encryption_factor: Any, encrypted: Any) -> dict[str, Any]:
    """What a TrainReply carried, without the values.

    ``encrypted`` as the node said; ``params_kind`` "dict" (clear tensors), "list" (a secure
    round's flat list of ints) or "none"; ``params_len`` the number of entries (ints of a list,
    values of a dict); ``encryption_factor`` whether one came and ``encryption_factor_len`` its
    length. For ints the largest bit length (LOM: < 64, Joye-Libert: about 2 x the key size); for
    clear tensors the largest absolute value, which says whether every value lay inside secure
    aggregation's clipping range.
    """
    out: dict[str, Any] = {"encrypted": bool(encrypted)}
    if isinstance(params, dict):
        import torch

        flat = [value.detach().reshape(-1).double() for value in params.values() if hasattr(value, "detach")]
        out["params_kind"] = "dict"
        out["params_len"] = int(sum(item.numel() for item in flat))
        out["params_max_abs"] = float(torch.cat(flat).abs().max()) if flat else None
    elif isinstance(params, (list, tuple)):
        out["params_kind"] = "list"
        out["params_len"] = len(params)
        ints = [item for item in params if isinstance(item, int)]
        out["params_ints"] = len(ints) == len(params)
        out["params_max_bits"] = max((item.bit_length() for item in ints), default=0)
    else:
        out["params_kind"] = "none" if params is None else type(params).__name__
        out["params_len"] = None
    out["encryption_factor"] = encryption_factor is not None
    out["encryption_factor_len"] = (
        len(encryption_factor) if isinstance(encryption_factor, (list, tuple)) else None
    )
    return out


def tensor_dict(params: Any) -> dict[str, Any]:
    """name -> nested list of floats."""
    return {name: plain(value) for name, value in (params or {}).items()}


def param_digest(params: Any) -> dict[str, Any]:
    """Count, sum and L2 norm of a parameter dict (cheap to compare when the lists are skipped)."""
    import torch

    flat = [value.detach().reshape(-1).double() for value in (params or {}).values()]
    if not flat:
        return {"count": 0}
    joined = torch.cat(flat)
    return {"count": int(joined.numel()), "sum": float(joined.sum()), "l2": float(joined.norm())}


def secure_aggregation(scheme: str) -> Any:
    """The researcher's ``SecureAggregation`` for ``--secagg`` (``False`` for "none": a plain run)."""
    if scheme == "none":
        return False
    from fedbiomed.common.constants import SecureAggregationSchemes
    from fedbiomed.researcher.secagg import SecureAggregation

    schemes = {"jl": SecureAggregationSchemes.JOYE_LIBERT, "lom": SecureAggregationSchemes.LOM}
    return SecureAggregation(scheme=schemes[scheme])


def experiment(args: argparse.Namespace) -> dict[str, Any]:
    """Run the reference Experiment against the nodes already polling; write results.json.

    With ``--secagg jl|lom`` the Experiment runs that secure-aggregation scheme with the
    researcher's configuration as created (6.4.1 turns ``secagg_insecure_validation`` on, so each
    node's ``encryption_factor`` is checked every round). Besides what a plain run writes, the
    results hold, per round and node, what each TrainReply carried as it arrived
    (``received``: encrypted, params kind and length, encryption factor; kept even for a round
    that then fails), the ``secagg_arguments`` each TrainRequest sent, the secagg set-up replies,
    and the aggregated parameters of every round. ``--plain-replay`` then reruns each round
    plainly from the model and node states it began with (``plain_replay``), the reference for
    the secure aggregates; a failed replay fails the command. A failure of the researcher (an
    Experiment that stops, e.g. on a FB417 validation failure) becomes an error line naming the
    round; a round that never ends is cut by ``--timeout``, which writes the results gathered so
    far.
    """
    started = time.monotonic()
    root = args.dir.resolve()
    results: dict[str, Any] = {"completed": False, "errors": [], "timings": {}, "rounds": args.rounds}
    out_path = args.out.resolve()
    written = threading.Lock()
    progress: dict[str, Any] = {"round": None}

    def write() -> None:
        with written:
            for _ in range(5):
                try:
                    text = json.dumps(results)
                    break
                except RuntimeError:  # a reply landed mid-dump (another thread): take it again
                    time.sleep(0.05)
            else:
                text = json.dumps({**results, "received": "unavailable"})
            out_path.write_text(text)

    def stage() -> str:
        """The stage in progress: "round N" (N from 0), a plain replay, or "" before the rounds."""
        current = progress["round"]
        if current is None:
            return ""
        return current if isinstance(current, str) else f"round {current}"

    def stop_reasons() -> list[str]:
        where = f"{stage()}: " if stage() else ""
        return [f"{where}the researcher stopped: {reason}" for reason in echo.stop_reasons()]

    def on_timeout() -> None:
        where = f" ({stage()} in progress)" if stage() else ""
        results["errors"].append(f"timeout: the experiment did not finish within {args.timeout} s{where}")
        results["errors"].extend(stop_reasons())
        results["errors"].extend(researcher_errors(logs))
        write()
        message = f"stock.py experiment: timed out after {args.timeout} s{where}"
        output.emit({"error": message, "out": str(out_path)})
        print(message, file=sys.stderr, flush=True)
        os._exit(3)

    model_args, training_args = experiment_arguments(args)
    results["model_args"] = {**model_args, "feature_mean": "...", "feature_std": "..."}
    results["training_args"] = training_args
    results["secagg"] = {"scheme": args.secagg}
    with captured_logs() as logs, echoed_stdout() as echo:
        watchdog = threading.Timer(args.timeout, on_timeout)
        watchdog.daemon = True
        watchdog.start()
        try:
            use_researcher(root)
            t0 = time.monotonic()
            import torch
            from fedbiomed.researcher.aggregators import FedAverage
            from fedbiomed.researcher.federated_workflows import Experiment
            from fedbiomed.researcher.strategies import DefaultStrategy

            results["timings"]["import"] = time.monotonic() - t0
            t0 = time.monotonic()
            requests = researcher_requests(root)
            results["timings"]["server_start"] = time.monotonic() - t0
            t0 = time.monotonic()
            nodes = wait_for_nodes(
                requests, args.nodes, time.monotonic() + min(args.connect_timeout, args.timeout / 2)
            )
            results["timings"]["wait_nodes"] = time.monotonic() - t0
            results["connected_nodes"] = nodes
            plan = load_plan(args.plan.resolve(), args.class_name)
            secagg = secure_aggregation(args.secagg)
            # The global model's initial weights come from the researcher's torch RNG.
            torch.manual_seed(args.seed)
            t0 = time.monotonic()
            exp = Experiment(
                tags=args.tags.split(","),
                training_plan_class=plan,
                model_args=model_args,
                training_args=training_args,
                aggregator=FedAverage(),
                node_selection_strategy=DefaultStrategy(),
                round_limit=args.rounds,
                tensorboard=False,
                secagg=secagg,
            )
            results["timings"]["experiment_init"] = time.monotonic() - t0
            results["experiment_id"] = exp.id
            results["secagg"].update(
                {
                    "active": bool(exp.secagg.active),
                    "scheme_value": plain(exp.secagg.scheme) if exp.secagg.active else None,
                    "insecure_validation": exp.config.getbool("security", "secagg_insecure_validation"),
                }
            )
            found = sorted(exp.training_data().node_ids()) if exp.training_data() else []
            results["federation_nodes"] = found
            if len(found) != args.nodes:
                raise HarnessError(
                    f"the search found {len(found)} of {args.nodes} nodes with tags {args.tags}"
                )
            results["initial_params"] = param_digest(exp.training_plan().after_training_params())
            # What each round starts from (for --plain-replay): the model and the node states.
            starts: list[dict[str, Any]] = []
            states: list[dict[str, Any]] = []
            recorder = ScalarRecorder(exp.monitor().on_message_handler)
            requests.add_monitor_callback(exp.id, recorder)
            seen = _record_replies()
            # The same dicts as the hook fills: a timeout writes what arrived so far.
            results["received"] = seen["received"]
            results["secagg_arguments"] = seen["secagg_arguments"]
            results["secagg_setup"] = seen["setup"]
            results["aggregated_params_digest"] = {}
            if not args.skip_params:
                results["aggregated_params"] = {}
            round_walls = []
            for index in range(args.rounds):
                recorder.run_once = index
                seen["round"] = progress["round"] = index
                last = index == args.rounds - 1
                starts.append(cloned(exp.training_plan().after_training_params()))
                states.append(dict(exp._node_state_agent.get_last_node_states()))
                t0 = time.monotonic()
                # As Experiment.run does: the last round also sends the validation-only request.
                ran = exp.run_once(increase=False, test_after=last)
                round_walls.append(time.monotonic() - t0)
                if ran != 1:
                    raise HarnessError(f"run_once {index} ran {ran} rounds")
                aggregated = exp.training_plan().after_training_params()
                results["aggregated_params_digest"][str(index)] = param_digest(aggregated)
                if not args.skip_params:
                    results["aggregated_params"][str(index)] = tensor_dict(aggregated)
            progress["round"] = None
            results["timings"]["round_walls"] = round_walls
            results["reply_seconds"] = seen["seconds"]
            # Scalars travel on their own RPCs: give the last ones a moment to land.
            time.sleep(0.5)
            final_params = exp.training_plan().after_training_params()
            scalars = recorder.phases(args.rounds)
            results["final_params_digest"] = param_digest(final_params)
            if not args.skip_params:
                results["final_params"] = tensor_dict(final_params)
            results["scalars"] = scalars
            results["validation"] = summarise_validation(scalars)
            results["final_global"] = global_metric(scalars, "final")
            results["final_global_accuracy"] = results["final_global"]["metrics"].get("accuracy")
            replies = exp.training_replies() or {}
            results["training_replies"] = {
                str(round_): {node: reply_summary(reply) for node, reply in by_node.items()}
                for round_, by_node in replies.items()
            }
            results["node_timings"] = {
                str(round_): {node: plain(reply.get("timing")) for node, reply in by_node.items()}
                for round_, by_node in replies.items()
            }
            completed = len(replies) == args.rounds and all(
                len(by_node) == args.nodes and all(reply.get("success") for reply in by_node.values())
                for by_node in replies.values()
            )
            if completed and args.plain_replay:
                # The replays' replies and scalars are not the experiment's.
                seen["round"] = None
                recorder.paused = True
                t0 = time.monotonic()
                results["plain_replay"] = plain_replay(
                    exp, starts, states, progress, with_params=not args.skip_params
                )
                results["timings"]["plain_replay"] = time.monotonic() - t0
            results["completed"] = completed
        except SystemExit as exc:
            # Experiment methods turn every exception into a printed message and sys.exit: the
            # printed message is the reason.
            reasons = stop_reasons()
            results["errors"].extend(reasons or [f"the Experiment stopped (exit {exc.code})"])
        except HarnessError as exc:
            results["errors"].append(str(exc))
        except Exception as exc:
            where = f"{stage()}: " if stage() else ""
            results["errors"].append(f"{where}{type(exc).__name__}: {' '.join(str(exc).split())}")
        watchdog.cancel()
        results["failed_stage"] = stage() or None
        results["errors"].extend(researcher_errors(logs))
        results["log_warnings"] = [f"{item['level']}: {item['message']}" for item in logs][-50:]
    results["timings"]["total"] = time.monotonic() - started
    write()
    summary = {
        "completed": results["completed"],
        "secagg": args.secagg,
        "final_global_accuracy": results.get("final_global_accuracy"),
        "round_walls": [round(value, 3) for value in results["timings"].get("round_walls", [])],
        "timings": {
            key: round(value, 3) for key, value in results["timings"].items() if isinstance(value, float)
        },
        "errors": results["errors"][:5],
        "out": str(out_path),
    }
    if not results["completed"]:
        raise HarnessError(f"experiment failed: {'; '.join(results['errors'][:3]) or 'no error logged'}")
    return summary


def cloned(params: Any) -> dict[str, Any]:
    """A detached copy of a parameter dict (the model's own tensors change with the next round)."""
    return {name: value.detach().clone() for name, value in (params or {}).items()}


def plain_replay(
    exp: Any,
    starts: list[dict[str, Any]],
    states: list[dict[str, Any]],
    progress: dict[str, Any],
    *,
    with_params: bool = True,
) -> dict[str, Any]:
    """Per round, the plain FedAverage of the same nodes' training from the same start.

    Run after the experiment, in the same Experiment (the nodes keep their states per
    experiment): for each round r the model goes back to ``starts[r]``, the node states to the
    ``state_id``s round r sent (``states[r]``: the optimizer state, e.g. Adam's moments, and the
    test split), secure aggregation is switched off, and one round runs as round r. Node
    training is seeded by ``random_seed`` every round, so the nodes train exactly as they did
    in round r: the difference between the experiment's aggregate of round r and this one is
    the secure-aggregation encoding alone. Uses the Experiment's private round counter and node
    state agent (6.4.1 has no public way to rerun a round). Returns round -> {"digest": ...,
    "params": nested lists (unless not ``with_params``)}; afterwards the Experiment's state is
    the last replay's.
    """
    out: dict[str, Any] = {}
    if exp.secagg.active:
        exp.secagg.activate(False)
    for index, (start, state_ids) in enumerate(zip(starts, states, strict=True)):
        progress["round"] = f"plain replay of round {index}"
        exp._set_round_current(index)
        exp.training_plan().set_model_params(start)
        exp._node_state_agent._collection_state_ids = dict(state_ids)
        if exp.run_once(increase=False, test_after=False) != 1:
            raise HarnessError(f"the plain replay of round {index} did not run")
        aggregated = exp.training_plan().after_training_params()
        out[str(index)] = {"digest": param_digest(aggregated)}
        if with_params:
            out[str(index)]["params"] = tensor_dict(aggregated)
    progress["round"] = None
    return out


def _record_replies() -> dict[str, Any]:
    """Record what each request of the Experiment got back, as it arrives.

    Per round (the harness sets ``round``) and node: ``seconds`` from a train request's send to
    its reply's arrival (the researcher's own ``rtime_total`` is one figure for all nodes of a
    request, taken after its 0.5 s wait loop; this reads the send and arrival times its Request
    objects keep); ``received``, the shape of each training reply (``reply_shape``, plus the
    reply's class, success and message; an ErrorMessage gives its errnum and text);
    ``secagg_arguments``, what the TrainRequest sent. ``setup`` lists the replies to secagg
    set-up requests (SecaggRequest, AdditiveSSSetupRequest), in arrival order.
    """
    from fedbiomed.common.message import ErrorMessage, TrainReply, TrainRequest
    from fedbiomed.researcher.requests import _requests

    state: dict[str, Any] = {
        "round": None,
        "seconds": {},
        "received": {},
        "secagg_arguments": {},
        "setup": [],
    }
    original = _requests.Request.on_reply

    def on_reply(self: Any, reply: Any) -> None:
        try:
            _note(self, reply)
        except Exception as exc:  # the record must never break the researcher's own handling
            print(f"stock.py: could not record a reply: {exc}", file=sys.stderr)
        original(self, reply)

    def _note(request: Any, reply: Any) -> None:
        if state["round"] is None:
            return
        sent_message = getattr(request, "_message", None)
        round_ = str(state["round"])
        node = getattr(reply, "node_id", None) or request.node.id
        error = (
            {"class": "ErrorMessage", "errnum": plain(reply.errnum), "extra_msg": reply.extra_msg}
            if isinstance(reply, ErrorMessage)
            else None
        )
        if isinstance(sent_message, TrainRequest):
            if not sent_message.training:
                return  # the validation-only request carries no update
            state["secagg_arguments"].setdefault(round_, {})[node] = plain(sent_message.secagg_arguments)
            if error is not None:
                state["received"].setdefault(round_, {})[node] = error
                return
            if isinstance(reply, TrainReply):
                shape = {"class": "TrainReply", "success": reply.success, "msg": reply.msg}
                shape.update(reply_shape(reply.params, reply.encryption_factor, reply.encrypted))
                state["received"].setdefault(round_, {})[node] = shape
                sent = getattr(request, "_send_time", None)
                if reply.params is not None and sent:
                    by_node = state["seconds"].setdefault(round_, {})
                    by_node[node] = time.time() - sent
        elif type(sent_message).__name__ in SECAGG_SETUP_REQUESTS:
            item = error or {
                "class": type(reply).__name__,
                "success": getattr(reply, "success", None),
                "msg": getattr(reply, "msg", None),
            }
            state["setup"].append(
                {"round": state["round"], "request": type(sent_message).__name__, "node": node, **item}
            )

    _requests.Request.on_reply = on_reply
    return state


def _request_replies(requests: Any, message: Any, nodes: list[str]) -> dict[str, Any]:
    """Send one request through the researcher's Requests API; what each node answered."""
    from fedbiomed.researcher.requests import DiscardOnTimeout

    t0 = time.monotonic()
    with requests.send(message, nodes, policies=[DiscardOnTimeout(5)]) as federated:
        replies = {node: plain(reply.get_dict()) for node, reply in federated.replies().items()}
        errors = {node: plain(error.get_dict()) for node, error in federated.errors().items()}
        statuses = {request.node.id: plain(request.status) for request in getattr(federated, "_requests", [])}
    return {"replies": replies, "errors": errors, "status": statuses, "seconds": time.monotonic() - t0}


def management_requests(args: argparse.Namespace) -> dict[str, Any]:
    """Ping, Search, List, training-plan status and approval through the stock researcher API."""
    started = time.monotonic()
    root = args.dir.resolve()
    out: dict[str, Any] = {"errors": []}
    out_path = args.out.resolve()
    with captured_logs() as logs:
        try:
            use_researcher(root)
            import torch
            from fedbiomed.common.message import ListRequest, PingRequest, SearchRequest
            from fedbiomed.researcher.federated_workflows import Experiment

            requests = researcher_requests(root)
            nodes = wait_for_nodes(requests, args.nodes, time.monotonic() + args.connect_timeout)
            out["connected_nodes"] = nodes
            researcher_id = read_config(root)["default"]["id"]
            out["researcher_id"] = researcher_id
            tags = args.tags.split(",")

            t0 = time.monotonic()
            out["ping_nodes"] = {"online": sorted(requests.ping_nodes()), "seconds": time.monotonic() - t0}
            out["ping"] = _request_replies(requests, PingRequest(researcher_id=researcher_id), nodes)
            t0 = time.monotonic()
            out["search_api"] = {"found": plain(requests.search(tags)), "seconds": time.monotonic() - t0}
            out["search"] = _request_replies(
                requests, SearchRequest(researcher_id=researcher_id, tags=tags), nodes
            )
            out["search_unknown_tag"] = _request_replies(
                requests, SearchRequest(researcher_id=researcher_id, tags=["no-such-tag"]), nodes
            )
            t0 = time.monotonic()
            out["list_api"] = {"found": plain(requests.list()), "seconds": time.monotonic() - t0}
            out["list"] = _request_replies(requests, ListRequest(researcher_id=researcher_id), nodes)

            plan = load_plan(args.plan.resolve(), args.class_name)
            model_args, training_args = experiment_arguments(args)
            torch.manual_seed(args.seed)
            exp = Experiment(
                tags=tags,
                training_plan_class=plan,
                model_args=model_args,
                training_args=training_args,
                round_limit=1,
            )
            out["experiment_nodes"] = sorted(exp.training_data().node_ids()) if exp.training_data() else []
            t0 = time.monotonic()
            status = exp.check_training_plan_status()
            out["plan_status"] = {
                "replies": {node: plain(reply.get_dict()) for node, reply in status.items()},
                "seconds": time.monotonic() - t0,
            }
            t0 = time.monotonic()
            approval = exp.training_plan_approve(description="fedpipe interop harness")
            out["approval"] = {"replies": plain(approval), "seconds": time.monotonic() - t0}
            t0 = time.monotonic()
            # Once the request is pending on the node, a status check reports that.
            status = exp.check_training_plan_status()
            out["plan_status_after_approval"] = {
                "replies": {node: plain(reply.get_dict()) for node, reply in status.items()},
                "seconds": time.monotonic() - t0,
            }
        except SystemExit as exc:
            out["errors"].append(f"the researcher stopped (exit {exc.code})")
        except HarnessError as exc:
            out["errors"].append(str(exc))
        except Exception as exc:
            out["errors"].append(f"{type(exc).__name__}: {exc}")
        out["errors"].extend(researcher_errors(logs))
    out["seconds"] = time.monotonic() - started
    out_path.write_text(json.dumps(out))
    answered = {
        kind: sorted(out[kind]["replies"])
        for kind in ("ping", "search", "list", "plan_status", "approval")
        if kind in out
    }
    complete = (
        bool(answered) and all(len(ids) == args.nodes for ids in answered.values()) and len(answered) == 5
    )
    if not complete or out["errors"]:
        raise HarnessError(f"requests incomplete: {'; '.join(out['errors'][:3]) or answered}")
    return {"answered": answered, "seconds": round(out["seconds"], 3), "out": str(out_path)}


def shards(args: argparse.Namespace) -> dict[str, Any]:
    """Seeded CSV shards with the source's header."""
    paths = write_shards(args.csv, args.out, args.n, args.seed)
    return {
        "shards": [str(path) for path in paths],
        "rows": [sum(1 for _ in path.open()) - 1 for path in paths],
    }


# ----------------------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    """The harness's argument parser."""
    top = argparse.ArgumentParser(
        prog="stock.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("create-researcher")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.set_defaults(func=create_researcher)

    p = sub.add_parser("create-node")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--researcher-host", default="127.0.0.1")
    p.add_argument("--researcher-port", type=int, required=True)
    p.add_argument("--csv", type=Path, required=True)
    p.add_argument("--tags", default=TAGS_DEFAULT, help="comma-separated")
    p.add_argument("--name", default=None, help="node name (default: the directory's name)")
    p.add_argument("--dataset-name", default=None)
    p.set_defaults(func=create_node)

    p = sub.add_parser("start-node")
    p.add_argument("--dir", type=Path, required=True)
    p.set_defaults(func=start_node)

    def plan_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", type=Path, required=True, help="the researcher component")
        p.add_argument("--plan", type=Path, required=True)
        p.add_argument("--class", dest="class_name", default="BreastCancerPlan")
        p.add_argument("--nodes", type=int, required=True)
        p.add_argument("--tags", default=TAGS_DEFAULT, help="comma-separated")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--csv", type=Path, default=SHIPPED_CSV, help="data for the standardisation stats")
        p.add_argument("--hidden", type=int, default=None)
        p.add_argument("--param-count", choices=("small", "big"), default="small")
        p.add_argument("--lr", type=float, default=0.01)
        p.add_argument("--log-interval", type=int, default=5)
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--timeout", type=float, default=600.0)
        p.add_argument(
            "--connect-timeout", type=float, default=60.0, help="wait for the nodes at most this long"
        )

    p = sub.add_parser("experiment")
    plan_args(p)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-params", action="store_true", help="write only a digest of the final parameters")
    p.add_argument(
        "--secagg", choices=SECAGG_CHOICES, default="none", help="secure aggregation scheme (default: none)"
    )
    p.add_argument(
        "--plain-replay",
        action="store_true",
        help="after the experiment, replay each round plainly from the model and node states it began with",
    )
    p.set_defaults(func=experiment)

    p = sub.add_parser("requests")
    plan_args(p)
    p.set_defaults(func=management_requests)

    p = sub.add_parser("shards")
    p.add_argument("--csv", type=Path, default=SHIPPED_CSV)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=shards)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one command; its JSON line on stdout, or an error line and a non-zero status."""
    args = parser().parse_args(argv)
    if args.command == "start-node":
        try:
            start_node(args)
        except (HarnessError, OSError) as exc:
            print(f"stock.py start-node: {exc}", file=sys.stderr)
            return 1
        return 0
    global output
    output = Output()
    try:
        payload = args.func(args)
    except Exception as exc:  # every failure is one line, whatever raised it
        text = str(exc) if isinstance(exc, HarnessError) else f"{type(exc).__name__}: {exc}"
        message = f"stock.py {args.command}: {' '.join(text.split())}"
        output.emit({"error": message})
        print(message, file=sys.stderr)
        return 1
    output.emit(payload)
    return 0


output: Output


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Fed-BioMed leaves non-daemon threads behind (the researcher's server loop, log handlers):
    # leave at once rather than wait on them.
    os._exit(code)
