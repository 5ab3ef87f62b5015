"""The researcher's connection to a real server: URL and token checked at once, nodes picked by name."""

import socket
from pathlib import Path

import httpx
import pytest
import torch

from fedpipe.researcher.console import ProgressPrinter, RoundTable
from fedpipe.researcher.demo import demo_plan_source, initial_params
from fedpipe.researcher.experiment import NodeMetrics, NodeResult, ProgressEvent, RoundRecord
from fedpipe.researcher.federation import (
    ResearcherError,
    check_server_url,
    connect,
    initial_params_from_plan,
    select_nodes,
)
from fedpipe.server.auth import TokenStore


@pytest.mark.parametrize(
    "url",
    [
        "127.0.0.1:8844",
        "ftp://h:1",
        "http://",
        "http://h:99999",
        "http://h:0",
        "http://h/path",
        "http://u:p@h:1",
        "http://h:1?q",
    ],
)
def test_a_malformed_server_url_is_refused_before_any_connection(url: str) -> None:
    """Only http(s)://host[:port] is a server URL."""
    with pytest.raises(ResearcherError, match="must be http") as caught:
        check_server_url(url)
    assert caught.value.exit_code == 2


def test_connect_checks_the_token(server: str, token_store: TokenStore) -> None:
    """A researcher token connects; a wrong token (401) and a node's token (403) are one-line refusals."""
    with connect(server, token_store.issue("researcher", "alice").token) as federation:
        assert federation.nodes() == {}
    for token, status in (
        ("fp1.0000000000000000." + "A" * 43, "401"),
        (token_store.issue("node", "n1").token, "403"),
    ):
        with pytest.raises(ResearcherError, match=status) as caught:
            connect(server, token)
        assert caught.value.exit_code == 2 and "\n" not in str(caught.value)


def test_connect_to_nothing_says_so() -> None:
    """No server at the address: one line, exit code 2."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ResearcherError, match="cannot reach the server") as caught:
        connect(f"http://127.0.0.1:{port}", "fp1.0000000000000000." + "A" * 43)
    assert caught.value.exit_code == 2


def test_select_nodes_by_name_or_all(server: str, token_store: TokenStore) -> None:
    """A node is known once it polled; "all" takes every known node; an unknown name is refused."""
    federation = connect(server, token_store.issue("researcher", "alice").token)
    try:
        with pytest.raises(ResearcherError, match="no node has connected"):
            select_nodes(federation, None, wait=0)
        for node in ("node-2", "node-1"):
            token = token_store.issue("node", node).token
            polled = httpx.get(
                f"{server}/tasks/{node}/next",
                params={"wait": 0},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert polled.status_code == 204
        assert select_nodes(federation, None, wait=0) == ("node-1", "node-2")
        assert select_nodes(federation, ["node-2"], wait=0) == ("node-2",)
        with pytest.raises(ResearcherError) as caught:
            select_nodes(federation, ["node-1", "node-9"], wait=0)
        assert str(caught.value) == (
            "unknown node node-9: the server knows node-1, node-2 (a node is known once it has connected)"
        )
    finally:
        federation.close()


def test_initial_params_come_from_the_plan(tmp_path: Path) -> None:
    """The plan file builds the initial model here, seeded: the demo's own initial model."""
    plan = tmp_path / "plan.py"
    plan.write_text(demo_plan_source())
    params = initial_params_from_plan(plan, "BreastCancerMlp", {"hidden": 16}, seed=3)
    expected = initial_params(3)
    assert list(params) == list(expected)
    assert all(torch.equal(params[k], expected[k]) for k in expected)


@pytest.mark.parametrize(
    ("source", "class_name", "why"),
    [
        ("def broken(:\n", "P", "syntax error"),
        ("x = 1\n", "P", "not found"),
        (None, "Nope", "not found"),
        (None, "BreastCancerMlp", "could not build its model"),
    ],
)
def test_a_plan_that_cannot_build_its_model_is_one_line(
    tmp_path: Path, source: str | None, class_name: str, why: str
) -> None:
    """Syntax errors, a missing class, a model that fails to build: ResearcherError, exit code 2."""
    plan = tmp_path / "plan.py"
    plan.write_text(source if source is not None else demo_plan_source())
    model_args = {"hidden": "many"}  # the demo plan cannot build a layer of "many" units
    with pytest.raises(ResearcherError, match=why) as caught:
        initial_params_from_plan(plan, class_name, model_args)
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)


def test_progress_lines_count_the_nodes_of_the_round() -> None:
    """One line per finished node, numbered from round 1, the bar out of the nodes the round went to."""
    lines: list[str] = []
    printer = ProgressPrinter(5, lines.append)
    for node in ("a", "b"):
        printer(ProgressEvent(number=2, training=True, node_id=node, status="sent"))
    printer(ProgressEvent(number=2, training=True, node_id="b", status="done", seconds=3.14))
    printer(
        ProgressEvent(number=2, training=True, node_id="a", status="failed", seconds=4.0, message="No data.")
    )
    assert lines == [
        "round 2/5 [##########----------] 1/2 b training… done (3.1 s)",
        "round 2/5 [####################] 2/2 a training… failed: No data. (4.0 s)",
    ]


def test_round_table_shows_nodes_and_the_aggregate() -> None:
    """The table names the metric and shows each node, a failure, and the weighted aggregate."""
    record = RoundRecord(
        round=0,
        results=(
            NodeResult(node_id="a", success=True, sample_size=10),
            NodeResult(node_id="b", success=False, msg="boom"),
        ),
        metrics={"a": NodeMetrics(train_loss=0.5, before=0.75, after=0.875, test_samples=4)},
        seconds=2.0,
    )
    text = RoundTable(3, {"test_metric": "accuracy"})(record)
    lines = text.splitlines()
    assert lines[0] == "round 1/3 (2.0 s)"
    assert "accuracy (global)" in lines[1]
    assert lines[2].split() == ["a", "10", "0.5000", "75.0%", "87.5%"]
    assert lines[3].split() == ["b", "FAILED:", "boom"]
    assert lines[4].split() == ["aggregate", "10", "0.5000", "75.0%", "87.5%"]


def test_build_strategy_follows_the_config() -> None:
    """FedAvg and FedProx aggregate alike; SCAFFOLD gets the server lr; LOM wraps and fills the requests."""
    from fedpipe.researcher.config import parse_config
    from fedpipe.researcher.federation import build_strategy
    from fedpipe.researcher.secure import SecureStrategy
    from fedpipe.researcher.strategies import FedAvg, ScaffoldStrategy

    base = {"rounds": 1, "dataset": "d", "plan_class": "P"}
    initial = {"w": torch.zeros(3)}
    for name in ("fedavg", "fedprox"):
        strategy, fields = build_strategy(
            parse_config({**base, "strategy": name}), initial, ["a", "b"], "job"
        )
        assert isinstance(strategy, FedAvg) and fields is None
    scaffold = parse_config({**base, "strategy": {"name": "scaffold", "server_lr": 0.5}})
    strategy, _ = build_strategy(scaffold, initial, ["a", "b"], "job")
    assert isinstance(strategy, ScaffoldStrategy) and strategy.server_lr == 0.5 and strategy.n_nodes == 2
    assert torch.equal(strategy.control["w"], torch.zeros(3))
    secure = parse_config({**base, "secure_aggregation": True})
    strategy, fields = build_strategy(secure, initial, ["a", "b"], "job")
    assert isinstance(strategy, SecureStrategy) and fields is not None
    request = fields(0)
    assert request["secagg_scheme"] == "lom" and request["secagg_parties"] == ["a", "b"]
    assert request["secagg_dh_id"] == "lom-job"
