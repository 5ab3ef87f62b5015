"""Node.open wires the real stores and plan loader: rounds run end to end and chain their state."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from attrs import evolve

from fedpipe.adapters.sqlite import NodeAdminError
from fedpipe.bootstrap import Node, NullMonitor, SystemClock, UnconfiguredCrypter
from fedpipe.codec import loads
from fedpipe.errors import ErrorCode, is_public_safe
from fedpipe.plan import DatasetRecord
from fedpipe.ports import Approval, Biprime, ServerKeyShare
from fedpipe.secagg import JoyeLibertCrypter
from fedpipe.settings import NodeSettings
from fedpipe.testing import InMemoryFileExchange, RecordingMonitor

# A real plan source: plain Python, no torch, every TrainingPlan method.
TINY_PLAN = '''
"""A tiny plan: one weight vector pulled towards a target, one step per training sample."""


class TinyPlan:
    def __init__(self):
        self.weights = [0.0, 0.0]
        self.steps_done = 0
        self.n_samples = 0
        self.train_indices = ()
        self.test_indices = ()
        self.lr = 0.1

    def post_init(self, *, model_args, training_args, aggregator_args):
        self.lr = float(model_args.get("lr", 0.1))

    def load_state(self, state):
        self.steps_done = int(state["steps_done"])
        return []

    def set_model_params(self, params):
        self.weights = [float(v) for v in params["w"]]

    def set_aux_vars(self, aux_vars):
        pass

    def load_data(self, dataset):
        self.n_samples = int(dataset.shape[0])
        return self.n_samples

    def set_split(self, split):
        self.train_indices = split.train_indices
        self.test_indices = split.test_indices

    def _loss(self):
        return sum((w - 1.0) ** 2 for w in self.weights)

    def testing_routine(self, *, metric, metric_args, report, before_train):
        return {"MSE": self._loss()}

    def training_routine(self, *, report, gpu):
        for _ in self.train_indices:
            self.weights = [w + self.lr * (1.0 - w) for w in self.weights]
        self.steps_done += 1
        return len(self.train_indices)

    def collect_aux_vars(self):
        return {}

    def after_training_params(self, *, flatten):
        return list(self.weights) if flatten else {"w": list(self.weights)}

    def save_state(self):
        return {"steps_done": self.steps_done, "test_indices": list(self.test_indices)}

    def optimizer_args(self):
        return {"lr": self.lr}
'''

JOB = "job-1"


@pytest.fixture
def exchange() -> InMemoryFileExchange:
    return InMemoryFileExchange()


@pytest.fixture
def settings(tmp_path: Path) -> NodeSettings:
    return NodeSettings(node_id="node-1", root=tmp_path / "node", keep_states_per_job=2)


@pytest.fixture
def node(settings: NodeSettings, exchange: InMemoryFileExchange) -> Iterator[Node]:
    with Node.open(settings, exchange=exchange, monitor=RecordingMonitor()) as opened:
        opened.datasets.add(DatasetRecord(dataset_id="ds-1", name="tiny", path="/data/tiny", shape=(20, 2)))
        yield opened


def _request(exchange: InMemoryFileExchange, source: str = TINY_PLAN, **fields: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "researcher_id": "researcher-1",
        "job_id": JOB,
        "state_id": None,
        "params_url": exchange.publish_object(
            f"params-{len(exchange.files)}", {"model_weights": {"w": [0.0, 0.5]}}
        ),
        "training_args": {"epochs": 1, "test_ratio": 0.25, "loader_args": {"batch_size": 4}},
        "dataset_id": "ds-1",
        "training": True,
        "model_args": {"lr": 0.05},
        "training_plan_url": exchange.publish(f"plan-{len(exchange.files)}.py", source.encode()),
        "training_plan_class": "TinyPlan",
        "secagg_servkey_id": None,
        "secagg_biprime_id": None,
        "secagg_random": None,
        "secagg_clipping_range": None,
        "round": 0,
        "aggregator_args": {},
        "aux_var_urls": None,
        "command": "train",
    }
    request.update(fields)
    return request


def test_two_rounds_run_end_to_end_and_chain_their_state(
    node: Node, exchange: InMemoryFileExchange, settings: NodeSettings
) -> None:
    node.approvals.register(TINY_PLAN, name="tiny")

    first = node.run_round(_request(exchange))
    assert first.success, first.msg
    assert first.state_id is not None
    assert first.sample_size == 15  # 20 samples, test_ratio 0.25
    update = loads(exchange.uploads[first.params_url]).unwrap()
    assert update["model_weights"]["w"][0] > 0.0  # trained

    second = node.run_round(_request(exchange, state_id=first.state_id, round=1))
    assert second.success, second.msg
    assert second.state_id not in (None, first.state_id)

    assert second.state_id is not None
    saved = node.states.load(JOB, second.state_id).unwrap()
    assert saved is not None
    assert saved.previous_state_id == first.state_id
    state = loads(saved.plan_state).unwrap()
    assert state["steps_done"] == 2  # round 1 restored round 0's count, then trained once more
    earlier = node.states.load(JOB, first.state_id).unwrap()
    assert earlier is not None
    assert saved.split == earlier.split  # the test subset is stable across rounds
    assert node.states.chain(JOB, second.state_id) == (second.state_id, first.state_id)
    assert list(settings.tmp_dir.iterdir()) == []  # round workspaces removed


def test_states_are_pruned_to_the_setting(node: Node, exchange: InMemoryFileExchange) -> None:
    node.approvals.register(TINY_PLAN, name="tiny")
    state_id = None
    for r in range(4):
        reply = node.run_round(_request(exchange, state_id=state_id, round=r))
        assert reply.success, reply.msg
        state_id = reply.state_id
    assert len(node.states.list(JOB)) == 2


@pytest.mark.parametrize(
    ("status", "public"),
    [(None, "Not Registered"), (Approval.REJECTED, "Rejected"), (Approval.PENDING, "Pending")],
)
def test_unapproved_plans_are_refused(
    node: Node, exchange: InMemoryFileExchange, status: Approval | None, public: str
) -> None:
    if status is not None:
        node.approvals.register(TINY_PLAN, name="tiny", status=status)
    reply = node.run_round(_request(exchange))
    assert not reply.success
    assert reply.error_code is ErrorCode.PLAN_NOT_APPROVED
    assert public in reply.msg
    assert node.states.list() == ()


def test_a_plan_with_a_syntax_error_is_reported_as_such(node: Node, exchange: InMemoryFileExchange) -> None:
    reply = node.run_round(
        _request(exchange, source=TINY_PLAN.replace("def post_init(self,", "def post_init(self"))
    )
    assert not reply.success
    assert reply.error is not None
    assert (reply.error.code, reply.error.step) == (ErrorCode.PLAN_NOT_APPROVED, "check_approval")
    assert "syntax error at line" in reply.msg
    assert is_public_safe(reply.msg)


def test_without_approval_a_broken_plan_fails_at_load(tmp_path: Path, exchange: InMemoryFileExchange) -> None:
    settings = NodeSettings(node_id="n", root=tmp_path / "open", training_plan_approval=False)
    with Node.open(settings, exchange=exchange) as node:
        node.datasets.add(DatasetRecord(dataset_id="ds-1", shape=(20, 2)))
        reply = node.run_round(_request(exchange, source=TINY_PLAN.replace("class TinyPlan", "class Other")))
    assert reply.error is not None
    assert (reply.error.code, reply.error.step) == (ErrorCode.PLAN_LOAD_FAILED, "load_plan")
    assert "`TinyPlan` is not found" in reply.msg


def test_unknown_dataset_and_previous_state(node: Node, exchange: InMemoryFileExchange) -> None:
    node.approvals.register(TINY_PLAN, name="tiny")
    missing = node.run_round(_request(exchange, dataset_id="ds-nope"))
    assert missing.error_code is ErrorCode.DATASET_NOT_FOUND
    fresh = node.run_round(_request(exchange, state_id="node_state_unknown", round=3))
    assert fresh.success, fresh.msg  # an unknown previous state is noted, the round starts fresh


def test_secure_round_without_a_crypter_fails_clearly_and_uses_the_key(
    node: Node, exchange: InMemoryFileExchange
) -> None:
    node.ports = evolve(node.ports, crypter=UnconfiguredCrypter())
    node.approvals.register(TINY_PLAN, name="tiny")
    node.secagg_keys.add_server_key(
        ServerKeyShare(secagg_id="sk", job_id=JOB, parties=("r", "node-1", "node-2"), key=7)
    )
    node.secagg_keys.add_biprime(Biprime(secagg_id="bp", biprime=(1 << 1023) + 1))
    request = _request(exchange, secagg_servkey_id="sk", secagg_biprime_id="bp", secagg_random=0.5)
    reply = node.run_round(request)
    assert reply.error_code is ErrorCode.ENCRYPTION_FAILED
    assert "not configured" in reply.msg
    assert node.secagg_keys.claimed_rounds("sk") == (0,)  # tau claimed before encrypting, durably


def test_node_defaults_and_reopening(settings: NodeSettings, exchange: InMemoryFileExchange) -> None:
    with Node.open(settings, exchange=exchange) as node:
        assert isinstance(node.ports.monitor, NullMonitor)
        assert isinstance(node.ports.crypter, JoyeLibertCrypter)
        assert isinstance(node.ports.clock, SystemClock)
        assert node.ports.new_id() != node.ports.new_id()
        node.approvals.register(TINY_PLAN, name="tiny")
    assert settings.db_path.exists()
    with Node.open(settings, exchange=exchange) as again:
        assert [r.name for r in again.approvals.list()] == ["tiny"]
    with pytest.raises(NodeAdminError, match="closed"):
        again.run_round(_request(exchange))


def test_unusable_root_is_an_admin_error(tmp_path: Path, exchange: InMemoryFileExchange) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(NodeAdminError, match="node root"):
        Node.open(NodeSettings(node_id="n", root=blocker / "node"), exchange=exchange)


def test_workspaces_left_by_a_killed_node_are_cleaned(node: Node, settings: NodeSettings) -> None:
    leftover = settings.tmp_dir / "round_abc"
    (leftover / "sub").mkdir(parents=True)
    (leftover / "training_plan.py").write_text("x = 1")
    (settings.tmp_dir / "unrelated.txt").write_text("kept")
    assert node.clean_workspaces() == 1
    assert [p.name for p in settings.tmp_dir.iterdir()] == ["unrelated.txt"]
    assert node.clean_workspaces() == 0


def test_an_owner_sets_where_round_workspaces_go_in_the_settings_file(tmp_path: Path) -> None:
    from fedpipe.bootstrap import load_or_create_settings, save_settings

    fast = tmp_path / "fast"
    settings = load_or_create_settings(tmp_path / "root", node_id="n1")
    assert settings.workspace_dir is None and settings.tmp_dir == tmp_path / "root" / "tmp"
    save_settings(evolve(settings, workspace_dir=fast))
    again = load_or_create_settings(tmp_path / "root")
    assert again.workspace_dir == fast and again.tmp_dir == fast
    exchange = InMemoryFileExchange()
    with Node.open(again, exchange=exchange) as node:
        node.datasets.add(DatasetRecord(dataset_id="ds-1", name="tiny", path="/data/tiny", shape=(20, 2)))
        node.approvals.register(TINY_PLAN, name="tiny")
        assert node.run_round(_request(exchange)).success
    assert fast.is_dir() and list(fast.iterdir()) == []  # made there, removed after the round
    assert not (tmp_path / "root" / "tmp").exists()
