"""The node owner's workflow: the root's id set by the first command, datasets checked, refused plans queued.

The issue's order: ``datasets add --root R`` first (no id given), then the other commands; each
accepts ``--node-id``, and a wrong one is a one-line error that says which id to pass.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedpipe.approval import plan_digest
from fedpipe.bootstrap import Node, open_owner, save_settings
from fedpipe.cli import main
from fedpipe.errors import ErrorCode, is_public_safe
from fedpipe.plan import DatasetRecord
from fedpipe.ports import Approval
from fedpipe.researcher.demo import demo_plan_source
from fedpipe.settings import NodeSettings
from fedpipe.testing import InMemoryFileExchange
from tests.adapters.test_bootstrap_node import TINY_PLAN, _request


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data.csv"
    path.write_text("a,b,label\n1,2,0\n3,4,1\n5,6,0\n")
    return path


def _out(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    seen = capsys.readouterr()
    return seen.out, seen.err


def test_the_first_command_names_the_root_and_the_others_follow_it(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, plan = tmp_path / "R", tmp_path / "plan.py"
    plan.write_text(demo_plan_source())
    assert main(["datasets", "add", "--root", str(root), "--id", "d1", "--path", str(data)]) == 0
    out, _ = _out(capsys)
    node_id = json.loads((root / "settings.json").read_text())["node_id"]
    assert f"created node root {root} for node {node_id!r}" in out
    assert "3 rows x 3 columns" in out

    assert main(["plans", "approve", "--root", str(root), "--node-id", "node-1", "--file", str(plan)]) == 2
    _, err = _out(capsys)
    assert err == (
        f"error: {root} belongs to node {node_id!r}, not 'node-1': pass --node-id {node_id} or use another --root\n"
    )
    for argv in (
        ["plans", "approve", "--file", str(plan)],
        ["plans", "list"],
        ["datasets", "list"],
        ["identity"],
        ["peers", "list"],
    ):
        assert main([*argv, "--root", str(root), "--node-id", node_id]) == 0, argv
    out, err = _out(capsys)
    assert err == "" and "created node root" not in out
    assert plan_digest(demo_plan_source()).unwrap().text(short=True) in out  # plans list: the short digest

    # `fedpipe node` with the wrong id: the traceback, now one line before any connection
    token = tmp_path / "token"
    token.write_text("a-token\n")
    node = subprocess.run(
        [
            *(sys.executable, "-m", "fedpipe", "node", "--server", "http://127.0.0.1:9", "--root", str(root)),
            *("--node-id", "node-1", "--token-file", str(token)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=os.environ | {"HOME": str(tmp_path)},
    )
    assert (node.returncode, node.stderr.count("\n"), "Traceback" in node.stderr) == (2, 1, False)
    assert f"pass --node-id {node_id}" in node.stderr


def test_a_new_root_takes_the_given_id_from_any_creating_command(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.py"
    plan.write_text(demo_plan_source())
    for i, argv in enumerate(
        (
            ["datasets", "add", "--id", "d", "--path", str(data)],
            ["plans", "approve", "--file", str(plan)],
            ["plans", "register", str(plan)],
            ["identity"],
        )
    ):
        root = tmp_path / f"root-{i}"
        assert main([*argv, "--root", str(root), "--node-id", f"node-{i}"]) == 0, argv
        assert json.loads((root / "settings.json").read_text())["node_id"] == f"node-{i}"
    capsys.readouterr()


def test_datasets_add_checks_the_file_and_remove_unregisters(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "R"
    base = ["--root", str(root), "--node-id", "node-1"]
    assert (
        main(["datasets", "add", *base, "--id", "d1", "--path", str(data), "--parameters", '{"k": 1}']) == 0
    )
    assert "3 rows x 3 columns" in _out(capsys)[0]
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,c\n1,2,3\n4,5\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    for path, says in (
        (ragged, "cannot be read as CSV"),
        (folder, "cannot be read as CSV"),
        (tmp_path / "no.csv", "no file"),
    ):
        assert main(["datasets", "add", *base, "--id", "d2", "--path", str(path), "--data-type", "csv"]) == 2
        err = _out(capsys)[1]
        assert err.count("\n") == 1 and says in err, err
    with open_owner(root) as owner:
        (record,) = owner.datasets.list()
    assert (record.dataset_id, record.shape, dict(record.dataset_parameters)) == ("d1", (3, 3), {"k": 1})

    assert main(["datasets", "remove", "d1", *base]) == 0
    assert main(["datasets", "list", *base]) == 0
    assert "no datasets" in _out(capsys)[0]
    assert main(["datasets", "remove", "--id", "d1", *base]) == 2
    assert "no dataset with id 'd1'" in _out(capsys)[1]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="file modes do not bind root")
def test_datasets_add_refuses_an_unreadable_file(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data.chmod(0)
    assert main(["datasets", "add", "--root", str(tmp_path / "R"), "--id", "d", "--path", str(data)]) == 2
    assert "not readable" in _out(capsys)[1]
    assert not (tmp_path / "R").exists()


def test_a_refused_plan_is_queued_with_its_source_then_shown_and_approved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown plan is refused and recorded as Pending in the node's SQLite registry, once; the
    owner finds it by the digest the reply names, reads its source, approves it, and the round runs."""
    settings = NodeSettings(node_id="node-1", root=tmp_path / "node")
    save_settings(settings)
    exchange = InMemoryFileExchange()
    digest = plan_digest(TINY_PLAN).unwrap()
    with Node.open(settings, exchange=exchange) as node:
        node.datasets.add(DatasetRecord(dataset_id="ds-1", name="tiny", path="/data/tiny", shape=(20, 2)))
        first, again = node.run_round(_request(exchange)), node.run_round(_request(exchange))
        for refused in (first, again):
            assert refused.error is not None and refused.error.code is ErrorCode.PLAN_NOT_APPROVED
            assert f"Requested training plan {digest.text(short=True)} is not approved" in refused.msg
            assert "awaits the node owner's review" in refused.msg and is_public_safe(refused.msg)
        assert first.error is not None and again.error is not None
        assert f"{digest.text()} is Not Registered: recorded as pending" in first.error.detail  # the node log
        assert f"{digest.text()} is Pending" in again.error.detail
        (pending,) = node.approvals.list(Approval.PENDING)  # the second refusal added no record
        assert (pending.researcher_id, pending.hash) == ("researcher-1", digest.hexdigest)
        assert node.approvals.source_of(pending.plan_id) == TINY_PLAN

    root = ["--root", str(settings.root), "--node-id", "node-1"]
    assert main(["plans", "list", "--pending", *root]) == 0
    listed = _out(capsys)[0]
    assert pending.plan_id in listed and digest.text(short=True) in listed and digest.text() not in listed
    assert main(["plans", "show", digest.text(short=True), *root]) == 0  # found by the reply's digest
    shown = _out(capsys)[0]
    assert digest.text() in shown and "researcher-1" in shown and shown.endswith(TINY_PLAN)
    assert main(["plans", "approve", pending.plan_id, *root]) == 0
    assert "Approved" in _out(capsys)[0]

    with Node.open(settings, exchange=exchange) as node:
        reply = node.run_round(_request(exchange))
        assert reply.success, reply.msg


def test_a_refused_plan_can_be_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = NodeSettings(node_id="node-1", root=tmp_path / "node")
    save_settings(settings)
    exchange = InMemoryFileExchange()
    with Node.open(settings, exchange=exchange) as node:
        node.datasets.add(DatasetRecord(dataset_id="ds-1", name="tiny", path="/data/tiny", shape=(20, 2)))
        assert not node.run_round(_request(exchange)).success
        (pending,) = node.approvals.list(Approval.PENDING)
    assert main(["plans", "reject", "--id", pending.plan_id, "--root", str(settings.root)]) == 0
    with open_owner(settings.root) as owner:
        assert owner.approvals.list(Approval.PENDING) == ()
        assert [p.plan_id for p in owner.approvals.list(Approval.REJECTED)] == [pending.plan_id]
    capsys.readouterr()
