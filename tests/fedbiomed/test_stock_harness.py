"""The stock harness drives an all-stock Fed-BioMed 6.4.1 federation: researcher and two nodes."""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from attrs import frozen

from tests.fedbiomed.shards import SHIPPED_CSV, write_shards
from tests.fedbiomed.stock_federation import (
    PLANS,
    StockNode,
    StockResearcher,
    create_federation,
    run_harness,
    running_nodes,
)

pytestmark = pytest.mark.fedbiomed

PLAN = PLANS / "breast_cancer_plan.py"


@frozen(kw_only=True)
class Federation:
    """A running stock federation: its researcher, its nodes and where it lives."""

    root: Path
    python: Path
    researcher: StockResearcher
    nodes: list[StockNode]
    timings: dict[str, float]


@pytest.fixture(scope="module")
def stock_federation(fbm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """Two stock nodes (seeded halves of the shipped CSV) polling a created stock researcher.

    Shared by this module's tests (starting stock components is slow); the node processes are
    stopped when the module ends, whatever the outcome.
    """
    tmp_path = tmp_path_factory.mktemp("stock")
    shards = write_shards(SHIPPED_CSV, tmp_path / "shards", n=2, seed=0)
    started = time.monotonic()
    researcher, nodes = create_federation(fbm_python, tmp_path, shards)
    timings = {"create_components": time.monotonic() - started}
    with running_nodes(fbm_python, nodes, cwd=tmp_path):
        yield Federation(
            root=tmp_path, python=fbm_python, researcher=researcher, nodes=nodes, timings=timings
        )


def _rows(path: Path) -> int:
    return sum(1 for _ in path.open()) - 1


def test_stock_experiment_completes_with_accuracy(stock_federation: Federation) -> None:
    """An unmodified Experiment (FedAverage, 3 rounds, validation before/after) over stock nodes.

    It completes; the researcher's monitor received each node's validation before and after every
    round and the final validation; the training replies weigh each node by its training split;
    the final parameters have the plan's shapes; the global accuracy is at least 90%.
    """
    fed = stock_federation
    out = fed.root / "results.json"
    started = time.monotonic()
    summary = run_harness(
        fed.python,
        [
            "experiment",
            "--dir",
            str(fed.researcher.dir),
            "--plan",
            str(PLAN),
            "--class",
            "BreastCancerPlan",
            "--nodes",
            "2",
            "--rounds",
            "3",
            "--seed",
            "0",
            "--timeout",
            "400",
            "--out",
            str(out),
        ],
        cwd=fed.root,
        timeout=460,
    )
    results: dict[str, Any] = json.loads(out.read_text())
    fed.timings["experiment_process"] = time.monotonic() - started
    breakdown = {**fed.timings, **{f"researcher_{k}": v for k, v in summary["timings"].items()}}
    (fed.root / "timings.json").write_text(json.dumps({**breakdown, "round_walls": summary["round_walls"]}))
    print("stock federation timings:", json.dumps(breakdown), "round walls:", summary["round_walls"])

    node_ids = {node.node_id for node in fed.nodes}
    assert results["completed"] is True
    assert results["errors"] == []
    assert set(results["federation_nodes"]) == node_ids

    validation = results["validation"]
    for round_ in ("0", "1", "2"):
        assert set(validation[round_]) == node_ids
        for node_id in node_ids:
            assert {"before", "after"} <= set(validation[round_][node_id])
    assert set(validation["final"]) == node_ids

    final = results["final_global"]["nodes"]
    replies = results["training_replies"]
    assert sorted(replies) == ["0", "1", "2"]
    for node in fed.nodes:
        # Each node trains on what its test split leaves: the aggregation weight.
        for round_ in ("0", "1", "2"):
            reply = replies[round_][node.node_id]
            assert reply["success"] is True
            assert reply["sample_size"] + final[node.node_id]["samples"] == _rows(node.csv)
            assert reply["timing"]["rtime_training"] > 0

    shapes = {name: _shape(value) for name, value in results["final_params"].items()}
    assert shapes == {"fc1.weight": [16, 30], "fc1.bias": [16], "fc2.weight": [1, 16], "fc2.bias": [1]}
    assert results["final_global_accuracy"] >= 0.90


def _shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def test_stock_management_requests_are_answered(stock_federation: Federation) -> None:
    """Ping, Search, List, plan status and approval from the stock researcher API reach every node.

    Search finds exactly the dataset each node registered (and nothing for an unknown tag); a node
    without approval says so; an approval request lands as Pending with a plan id.
    """
    fed = stock_federation
    out = fed.root / "requests.json"
    run_harness(
        fed.python,
        [
            "requests",
            "--dir",
            str(fed.researcher.dir),
            "--nodes",
            "2",
            "--plan",
            str(PLAN),
            "--class",
            "BreastCancerPlan",
            "--out",
            str(out),
        ],
        cwd=fed.root,
        timeout=180,
    )
    answers = json.loads(out.read_text())
    assert answers["errors"] == []
    assert answers["researcher_id"] == fed.researcher.researcher_id
    assert sorted(answers["ping_nodes"]["online"]) == sorted(node.node_id for node in fed.nodes)
    for node in fed.nodes:
        ping = answers["ping"]["replies"][node.node_id]
        assert (ping["node_id"], ping["node_name"]) == (node.node_id, node.name)
        assert answers["ping"]["status"][node.node_id] == "SUCCESS"

        search = answers["search"]["replies"][node.node_id]
        assert [item["dataset_id"] for item in search["databases"]] == [node.dataset_id]
        assert search["databases"][0]["tags"] == ["breast-cancer"]
        assert "path" not in search["databases"][0]
        assert answers["search_unknown_tag"]["replies"][node.node_id]["databases"] == []

        listed = answers["list"]["replies"][node.node_id]
        assert listed["success"] is True
        assert [item["dataset_id"] for item in listed["databases"]] == [node.dataset_id]

        status = answers["plan_status"]["replies"][node.node_id]
        assert status["success"] is True
        assert status["approval_obligation"] is False

        approval = answers["approval"]["replies"][node.node_id]
        assert approval["success"] is True
        assert approval["training_plan_id"].startswith("training_plan_")
        assert answers["plan_status_after_approval"]["replies"][node.node_id]["status"] == "Pending"
