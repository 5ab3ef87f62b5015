"""Researcher resilience over the real server and a real node process: failing and silent nodes."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedpipe.adapters.http_exchange import HttpFileExchange
from fedpipe.bootstrap import open_owner
from fedpipe.plan import DatasetRecord
from fedpipe.ports import Approval
from fedpipe.researcher.board import BoardClient
from fedpipe.researcher.demo import DEMO_PLAN_CLASS, demo_plan_source, initial_params, reference_statistics
from fedpipe.researcher.experiment import Experiment, ExperimentStopped
from fedpipe.researcher.strategies import FedAvg
from fedpipe.server.auth import bearer
from fedpipe.server.testing import running_server
from fedpipe.training import load_breast_cancer
from tests.e2e.support import issue, node_token_file, spawn_node, wait_for_nodes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, str]]:
    """A server and two real node processes; node-2 registered its data under another dataset id."""
    work = tmp_path_factory.mktemp("resilience")
    data = load_breast_cancer()
    roots = []
    for node_id, dataset_id in (("node-1", "bc"), ("node-2", "other")):
        root = work / node_id
        csv = root / "data.csv"
        csv.parent.mkdir(parents=True)
        table = np.column_stack([data.features, data.labels])
        np.savetxt(csv, table, delimiter=",", header="x," * 30 + "label", comments="")
        with open_owner(root, node_id=node_id) as owner:
            owner.datasets.add(DatasetRecord(dataset_id=dataset_id, name=dataset_id, path=str(csv)))
            owner.approvals.register(demo_plan_source(), name="demo", status=Approval.APPROVED)
        roots.append(root)
    with running_server(work / "server") as url:
        researcher = issue(work / "server", "researcher", "resilience")
        procs = [spawn_node(url, root, node_token_file(work / "server", root, root.name)) for root in roots]
        try:
            wait_for_nodes(url, researcher, ["node-1", "node-2"])
            yield url, work, researcher
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=10)


def experiment(url: str, work: Path, token: str, node_ids: list[str], **options: object) -> Experiment:
    exchange = HttpFileExchange(f"{url}/upload", headers=bearer(token))
    plan = work / "plan.py"
    plan.write_text(demo_plan_source())
    mean, std = reference_statistics()
    return Experiment(
        board=BoardClient(url, token=token),
        exchange=exchange,
        node_ids=node_ids,
        plan_source_url=exchange.upload(plan).unwrap(),
        plan_class=DEMO_PLAN_CLASS,
        dataset_id="bc",
        training_args={"epochs": 1, "test_ratio": 0.2, "test_on_global_updates": True, "random_seed": 0},
        model_args={"feature_mean": mean, "feature_std": std},
        initial_params=initial_params(0),
        strategy=FedAvg(),
        workdir=work / "researcher",
        **options,  # type: ignore[arg-type]
    )


def test_silent_node_hits_the_deadline_and_the_others_go_on(federation: tuple[str, Path, str]) -> None:
    """A node that never answers is reported after the round deadline; the round aggregates the others."""
    url, work, token = federation
    result = experiment(url, work, token, ["node-1", "ghost"], round_deadline_s=15.0).run(1)
    first = {r.node_id: r for r in result.rounds[0].results}
    assert first["node-1"].success
    assert not first["ghost"].success
    assert "deadline" in first["ghost"].msg
    assert result.rounds[0].seconds < 60


def test_failed_node_is_reported_and_the_others_go_on(federation: tuple[str, Path, str]) -> None:
    """A node that fails a round replies with its error; configured to go on, the round uses the others."""
    url, work, token = federation
    result = experiment(url, work, token, ["node-1", "node-2"], stop_on_failure=False).run(1)
    first = {r.node_id: r for r in result.rounds[0].results}
    assert first["node-1"].success
    assert not first["node-2"].success
    assert first["node-2"].msg == "The requested dataset is not available on this node."
    assert result.final is not None


def test_stop_on_failure_stops_cleanly(federation: tuple[str, Path, str]) -> None:
    """Configured to stop, the researcher stops at the first failed round, naming the node and its error."""
    url, work, token = federation
    with pytest.raises(ExperimentStopped, match="node-2: The requested dataset is not available"):
        experiment(url, work, token, ["node-1", "node-2"], stop_on_failure=True).run(2)
