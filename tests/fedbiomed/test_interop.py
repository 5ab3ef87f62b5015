"""A stock Fed-BioMed 6.4.1 researcher drives fedpipe nodes like its own (issue 12's acceptance).

One stock researcher component, two stock nodes and two fedpipe nodes on the same seeded CSV
shards of the shipped breast-cancer data. Each test runs an unmodified ``Experiment`` (or the
researcher's request API) through the stock harness with only the nodes it names running:
fedpipe nodes, stock nodes, and a mixed federation. The fedpipe nodes are set up by their
owner's commands (``fedpipe datasets add --tags``, ``fedpipe plans approve``) and started with
``fedpipe node --fedbiomed HOST:PORT --researcher-certificate CERT``.
"""

import json
import time
from pathlib import Path
from typing import Any

import pytest
from attrs import frozen

from tests.fedbiomed.fedpipe_nodes import FedpipeNode, log_tail, running_fedpipe_nodes, set_up_node
from tests.fedbiomed.shards import SHIPPED_CSV, write_shards
from tests.fedbiomed.stock_federation import (
    PLANS,
    StockNode,
    StockResearcher,
    create_federation,
    run_harness,
    running_nodes,
)

pytestmark = [pytest.mark.fedbiomed, pytest.mark.e2e]

PLAN = PLANS / "breast_cancer_plan.py"
SENT_PLAN = PLANS / "breast_cancer_plan.sent.py"

# Final parameters of the same experiment over stock and over fedpipe nodes agree within this
# (absolute, per value): both run the same plan, seed, shards, split and batch order in float32.
PARAMS_TOLERANCE = 1e-4


@frozen(kw_only=True)
class Federation:
    """The components of the module: the researcher, stock nodes, fedpipe nodes, results so far."""

    root: Path
    python: Path
    researcher: StockResearcher
    stock: list[StockNode]
    fedpipe: list[FedpipeNode]
    results: dict[str, Any]


@pytest.fixture(scope="module")
def federation(fbm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """Create the researcher and the stock nodes (slow: in parallel) and set up two fedpipe nodes."""
    root = tmp_path_factory.mktemp("interop")
    shards = write_shards(SHIPPED_CSV, root / "shards", n=2, seed=0)
    researcher, stock = create_federation(fbm_python, root, shards)
    fedpipe = [
        set_up_node(
            root / f"fedpipe{i}", node_id=f"fedpipe-node-{i}", name=f"fedpipe{i}", csv=shard, plan=SENT_PLAN
        )
        for i, shard in enumerate(shards, 1)
    ]
    return Federation(
        root=root, python=fbm_python, researcher=researcher, stock=stock, fedpipe=fedpipe, results={}
    )


def _experiment(fed: Federation, name: str, nodes: int, logs: Path) -> dict[str, Any]:
    out = fed.root / f"{name}.json"
    started = time.monotonic()
    try:
        run_harness(
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
                str(nodes),
                "--rounds",
                "3",
                "--seed",
                "0",
                "--timeout",
                "300",
                "--out",
                str(out),
            ],
            cwd=fed.root,
            timeout=360,
        )
    except Exception as err:
        raise AssertionError(f"{name} experiment failed: {err}\n{log_tail(logs)}") from err
    results: dict[str, Any] = json.loads(out.read_text())
    results["seconds"] = time.monotonic() - started
    fed.results[name] = results
    return results


def _check_completed(results: dict[str, Any], node_ids: set[str], logs: Path) -> None:
    assert results["completed"] is True, log_tail(logs)
    assert results["errors"] == [], log_tail(logs)
    assert set(results["federation_nodes"]) == node_ids
    for round_ in ("0", "1", "2"):
        for node_id in node_ids:
            assert {"before", "after"} <= set(results["validation"][round_][node_id])
            assert results["training_replies"][round_][node_id]["success"] is True
    assert set(results["validation"]["final"]) == node_ids


def test_stock_researcher_trains_fedpipe_nodes(federation: Federation) -> None:
    """An unmodified Experiment over two fedpipe nodes completes, with metrics, at >= 90% accuracy."""
    fed = federation
    logs = fed.root / "logs-fedpipe"
    with running_fedpipe_nodes(fed.fedpipe, fed.researcher, logs=logs):
        results = _experiment(fed, "fedpipe", 2, logs)
    _check_completed(results, {n.node_id for n in fed.fedpipe}, logs)
    assert results["final_global_accuracy"] >= 0.90


def test_stock_nodes_agree_with_fedpipe_nodes(federation: Federation) -> None:
    """The same experiment over two stock nodes ends with the same parameters, within tolerance."""
    fed = federation
    if "fedpipe" not in fed.results:
        pytest.skip("needs the fedpipe-node experiment of this module")
    logs = fed.root / "logs-stock"
    with running_nodes(fed.python, fed.stock, cwd=fed.root):
        stock = _experiment(fed, "stock", 2, logs)
    _check_completed(stock, {n.node_id for n in fed.stock}, logs)
    ours = fed.results["fedpipe"]["final_params"]
    theirs = stock["final_params"]
    assert sorted(ours) == sorted(theirs)
    worst = max(_max_abs_diff(ours[name], theirs[name]) for name in ours)
    print(f"largest parameter difference stock vs fedpipe: {worst:.3g}")
    assert worst <= PARAMS_TOLERANCE


def test_mixed_federation_completes(federation: Federation) -> None:
    """One stock node and one fedpipe node train together."""
    fed = federation
    logs = fed.root / "logs-mixed"
    with (
        running_nodes(fed.python, fed.stock[:1], cwd=fed.root),
        running_fedpipe_nodes(fed.fedpipe[1:], fed.researcher, logs=logs),
    ):
        results = _experiment(fed, "mixed", 2, logs)
    _check_completed(results, {fed.stock[0].node_id, fed.fedpipe[1].node_id}, logs)
    assert results["final_global_accuracy"] >= 0.90


def _max_abs_diff(a: Any, b: Any) -> float:
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        return max((_max_abs_diff(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    return abs(float(a) - float(b))


def _requests(fed: Federation, name: str, plan: Path, class_name: str, logs: Path) -> dict[str, Any]:
    out = fed.root / f"{name}.json"
    try:
        run_harness(
            fed.python,
            [
                "requests",
                "--dir",
                str(fed.researcher.dir),
                "--nodes",
                "2",
                "--plan",
                str(plan),
                "--class",
                class_name,
                "--out",
                str(out),
            ],
            cwd=fed.root,
            timeout=240,
        )
    except Exception as err:
        raise AssertionError(f"{name} requests failed: {err}\n{log_tail(logs)}") from err
    results: dict[str, Any] = json.loads(out.read_text())
    return results


def test_management_requests_answered_like_stock(federation: Federation) -> None:
    """Ping, Search, List, plan status and approval from the stock researcher's API.

    fedpipe nodes answer every kind with the fields the stock nodes use; Search finds exactly
    the registered dataset by its tag and nothing for another tag; with approval on (fedpipe's
    default), a plan not yet registered reads "Not Registered", and the approval request lands
    in the owner's registry as Pending with its source kept, which ``fedpipe plans`` shows.
    """
    fed = federation
    plan, class_name = PLANS / "sgd_plan.py", "SgdPlan"
    logs = fed.root / "logs-requests"
    with running_nodes(fed.python, fed.stock, cwd=fed.root):
        stock = _requests(fed, "requests-stock", plan, class_name, logs)
    with running_fedpipe_nodes(fed.fedpipe, fed.researcher, logs=logs):
        ours = _requests(fed, "requests-fedpipe", plan, class_name, logs)
    assert ours["errors"] == [] and stock["errors"] == []
    fedpipe_ids = sorted(n.node_id for n in fed.fedpipe)
    assert sorted(ours["connected_nodes"]) == fedpipe_ids
    assert sorted(ours["ping_nodes"]["online"]) == fedpipe_ids
    assert sorted(ours["experiment_nodes"]) == fedpipe_ids
    stock_node = fed.stock[0].node_id
    for kind in ("ping", "search", "search_unknown_tag", "list"):
        for node in fed.fedpipe:
            reply = ours[kind]["replies"][node.node_id]
            assert set(reply) == set(stock[kind]["replies"][stock_node]), kind
    for node in fed.fedpipe:
        found = ours["search"]["replies"][node.node_id]["databases"]
        assert [d["dataset_id"] for d in found] == [f"{node.name}-data"]
        assert found[0]["tags"] == ["breast-cancer"] and "path" not in found[0]
        assert ours["search_unknown_tag"]["replies"][node.node_id]["databases"] == []
        assert ours["list"]["replies"][node.node_id]["count"] == 1
        before = ours["plan_status"]["replies"][node.node_id]
        assert (before["approval_obligation"], before["status"]) == (True, "Not Registered")
        after = ours["plan_status_after_approval"]["replies"][node.node_id]
        assert after["status"] == "Pending"

    from tests.fedbiomed.fedpipe_nodes import owner

    sent = (PLANS / "sgd_plan.sent.py").read_text()
    for node in fed.fedpipe:
        listed = owner("plans", "list", "--root", str(node.root), "--status", "Pending").stdout
        assert fed.researcher.researcher_id in listed
        plan_id = listed.split()[0]
        shown = owner("plans", "show", "--root", str(node.root), "--id", plan_id).stdout
        assert sent.strip() in shown
