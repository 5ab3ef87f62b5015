"""`fedpipe run` end to end: a hand-started server and two hand-started nodes, driven from a TOML config."""

import csv
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fedpipe.cli import main as fedpipe
from fedpipe.researcher import load_model, load_safetensors
from fedpipe.researcher.demo import demo_plan_source, reference_statistics
from fedpipe.training import load_breast_cancer, non_iid_shards
from tests.e2e.support import wait_for_health

pytestmark = pytest.mark.e2e

NODES = ("node-1", "node-2")
NODE = (sys.executable, "-m", "fedpipe", "node")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_command() -> list[str]:
    """``python -m fedpipe run`` once the command is registered, else the module that implements it."""
    from fedpipe.cli import build_parser

    parser = build_parser()
    choices = next(a.choices for a in parser._actions if getattr(a, "choices", None))  # the sub-commands
    if "run" in choices:
        return [sys.executable, "-m", "fedpipe", "run"]
    return [sys.executable, "-m", "fedpipe.researcher.run_cli"]


def _toml_list(values: list[float]) -> str:
    return "[" + ", ".join(repr(v) for v in values) + "]"


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`fedpipe serve` and two `fedpipe node` processes, each node's owner set up by hand."""
    server_root, port = tmp_path / "server", _free_port()
    url = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = tmp_path / "logs"
    logs.mkdir()
    with open(logs / "server.log", "ab") as log:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "fedpipe", "serve", "--root", str(server_root), "--port", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
    try:
        plan = tmp_path / "plan.py"
        plan.write_text(demo_plan_source(), encoding="utf-8")
        data = load_breast_cancer()
        shards = non_iid_shards(data.labels, len(NODES), seed=0)
        header = ",".join([*data.feature_names, "label"])
        for node_id, rows in zip(NODES, shards, strict=True):
            # what each node's owner does: a token from the operator, the dataset, the plan approved
            root, shard = tmp_path / node_id, tmp_path / f"{node_id}.csv"
            table = np.column_stack([data.features[rows], data.labels[rows]])
            np.savetxt(shard, table, delimiter=",", header=header, comments="", fmt="%.6g")
            token = tmp_path / f"{node_id}.token"
            assert (
                fedpipe(
                    ["tokens", "issue", "--root", str(server_root), "--node", node_id, "--out", str(token)]
                )
                == 0
            )
            owner = ["--root", str(root), "--node-id", node_id]
            add = ["datasets", "add", *owner, "--id", "breast-cancer", "--path", str(shard)]
            assert fedpipe(add) == 0
            assert fedpipe(["plans", "approve", *owner, "--file", str(plan)]) == 0
            with open(logs / f"{node_id}.log", "ab") as log:
                procs.append(
                    subprocess.Popen(
                        [*NODE, "--server", url, *owner, "--token-file", str(token), "--poll-wait", "1"],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                )
        token = tmp_path / "researcher.token"
        assert (
            fedpipe(
                ["tokens", "issue", "--root", str(server_root), "--researcher", "alice", "--out", str(token)]
            )
            == 0
        )
        wait_for_health(url, lambda: (logs / "server.log").read_text())
        yield url, tmp_path
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_fedavg_run_reaches_90_percent_and_saves_its_outputs(federation: tuple[str, Path]) -> None:
    """Three FedAvg rounds on two hand-started nodes reach >= 90% accuracy; the plot, the metrics and
    the model (codec and safetensors, equal tensors) are written, and the saved model is the trained one."""
    url, work = federation
    mean, std = reference_statistics()
    config = work / "exp.toml"
    config.write_text(
        f"""
rounds = 3
nodes = ["node-1", "node-2"]
dataset = "breast-cancer"
plan_class = "BreastCancerMlp"
job_id = "run-cli-e2e"

[strategy]
name = "fedavg"

[training_args]
epochs = 2
random_seed = 0
optimizer_args = {{ lr = 0.01 }}
loader_args = {{ batch_size = 16 }}

[model_args]
hidden = 16
feature_mean = {_toml_list(mean)}
feature_std = {_toml_list(std)}
""",
        encoding="utf-8",
    )
    out = work / "out"
    command = [*_run_command(), "--server", url, "--token-file", str(work / "researcher.token")]
    command += ["--config", str(config), "--plan", str(work / "plan.py"), "--output", str(out)]
    done = subprocess.run([*command, "--wait-nodes", "90"], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    for number in (1, 2, 3):
        for node in NODES:
            assert any(
                line.startswith(f"round {number}/3 ") and f"{node} training… done" in line
                for line in done.stderr.splitlines()
            ), done.stderr
        assert f"round {number}/3 (" in done.stdout
    assert "final global accuracy: " in done.stdout

    with open(out / "metrics.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["round"], r["phase"], r["node"]) for r in rows] == [
        (str(n), phase, node)
        for n, phase in [(1, "train"), (2, "train"), (3, "train"), (3, "final")]
        for node in (*NODES, "aggregate")
    ]
    final = next(r for r in rows if r["phase"] == "final" and r["node"] == "aggregate")
    assert float(final["metric_global_model"]) >= 0.90
    assert f"{100 * float(final['metric_global_model']):.1f}%" in done.stdout
    assert all(r["status"] == "ok" for r in rows if r["node"] != "aggregate")

    assert (out / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    from_codec = load_model(out / "model.mpk")
    from_safetensors, _ = load_safetensors(out / "model.safetensors")
    assert list(from_codec) == list(from_safetensors) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for name, tensor in from_codec.items():
        assert tensor.dtype == from_safetensors[name].dtype
        assert torch.equal(tensor, from_safetensors[name])

    # the saved model is the trained one: it classifies the whole data set as well as the nodes saw
    from fedpipe.researcher.demo_plan import build_model

    model = build_model(16)
    model.load_state_dict(from_safetensors)
    features = torch.tensor(load_breast_cancer().features, dtype=torch.float32)
    scaled = (torch.log1p(features) - torch.tensor(mean)) / torch.tensor(std)
    with torch.no_grad():
        predicted = (model(scaled.float()).squeeze(-1) > 0).numpy()
    assert (predicted == load_breast_cancer().labels.astype(bool)).mean() >= 0.90
