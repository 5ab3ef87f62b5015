"""The Fed-BioMed node's dispatcher over a real node root: answers, refusals, rounds, hostile input.

The link to the researcher is a recording fake (the transport has its own tests against a real
gRPC server); the stores are the node's real SQLite ones, the plan the sent Fed-BioMed plan, the
dataset a CSV shard on disk.
"""

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from returns.result import Success

from fedpipe.bootstrap import Node, OfflineExchange
from fedpipe.codec import dumps, loads
from fedpipe.fedbiomed.messages import REPLIES, decode_message, encode_message
from fedpipe.fedbiomed.node import FedbiomedNode, parse_address
from fedpipe.fedbiomed.wire import LogFeedback, ScalarFeedback
from fedpipe.plan import DatasetRecord
from fedpipe.ports import Approval
from fedpipe.settings import NodeSettings
from tests.fedbiomed.plans.support import FBM_ARGS, shard

PLANS = Path(__file__).resolve().parent / "plans"
SENT = (PLANS / "breast_cancer_plan.sent.py").read_text()
RESEARCHER = "RESEARCHER_0f7c6a1e-0000-4000-8000-000000000001"
NODE_ID = "NODE_test-1"
MAX_BYTES = 64 * 1024**2


class RecordingLink:
    """A Link that keeps what the node sends (thread-safe)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.feedback_items: list[ScalarFeedback | LogFeedback] = []
        self._lock = threading.Lock()

    def send(self, message: bytes) -> bool:
        with self._lock:
            self.sent.append(message)
        return True

    def feedback(self, item: ScalarFeedback | LogFeedback) -> bool:
        with self._lock:
            self.feedback_items.append(item)
        return True

    def replies(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for data in self.sent:
            message = decode_message(data, max_bytes=MAX_BYTES)
            assert isinstance(message, Success), message
            out.append((message.unwrap().kind, dict(message.unwrap().fields)))
        return out


def _serve(tmp_path: Path, *, approved: bool) -> Iterator[tuple[FedbiomedNode, RecordingLink]]:
    """A node with one tagged CSV dataset; ``approved``: the owner approved the sent plan."""
    settings = NodeSettings(node_id=NODE_ID, root=tmp_path / "node")
    node = Node.open(settings, exchange=OfflineExchange())
    csv = shard(tmp_path)
    node.datasets.add(
        DatasetRecord(
            dataset_id="bc-1",
            name="bc-1",
            path=str(csv),
            data_type="csv",
            shape=(284, 31),
            tags=("breast-cancer",),
        )
    )
    if approved:
        node.approvals.register(SENT, status=Approval.APPROVED)
    link = RecordingLink()
    server = FedbiomedNode(node, link, researcher_id=RESEARCHER, node_name="fp1", max_message_bytes=MAX_BYTES)
    yield server, link
    node.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FedbiomedNode, RecordingLink]]:
    yield from _serve(tmp_path, approved=True)


@pytest.fixture
def served_unapproved(tmp_path: Path) -> Iterator[tuple[FedbiomedNode, RecordingLink]]:
    yield from _serve(tmp_path, approved=False)


def _request(kind: str, **fields: Any) -> bytes:
    base = {"protocol_version": "7", "request_id": "request_1", "researcher_id": RESEARCHER}
    return encode_message(kind, {**base, **fields})


def _model_args() -> dict[str, Any]:
    return {"in_features": 30, "hidden": 16, "feature_mean": [0.0] * 30, "feature_std": [1.0] * 30}


def _params(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {
        "fc1.weight": torch.randn(16, 30) * 0.1,
        "fc1.bias": torch.zeros(16),
        "fc2.weight": torch.randn(1, 16) * 0.1,
        "fc2.bias": torch.zeros(1),
    }


TRAINING_ARGS = {**FBM_ARGS, "epochs": 1}  # 6.4.1's training args, as its researcher fills them


def _train_request(**changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "experiment_id": "exper_1",
        "state_id": None,
        "training_args": TRAINING_ARGS,
        "dataset_id": "bc-1",
        "training": True,
        "model_args": _model_args(),
        "params": _params(),
        "training_plan": SENT,
        "training_plan_class": "BreastCancerPlan",
        "round": 0,
        "aggregator_args": {},
        "secagg_arguments": {},
        "optim_aux_var": None,
    }
    fields.update(changes)
    return _request("TrainRequest", **fields)


def _train(server: FedbiomedNode, data: bytes) -> None:
    decoded = decode_message(data, max_bytes=MAX_BYTES).unwrap()
    server.train(decoded)


def test_ping_search_and_list_are_answered(served: Any) -> None:
    server, link = served
    server.handle(_request("PingRequest"))
    server.handle(_request("SearchRequest", tags=["breast-cancer"]))
    server.handle(_request("SearchRequest", tags=["other"]))
    server.handle(_request("ListRequest"))
    (k1, ping), (k2, found), (k3, none), (k4, listed) = link.replies()
    assert (k1, k2, k3, k4) == ("PingReply", "SearchReply", "SearchReply", "ListReply")
    assert ping["request_id"] == "request_1" and ping["node_id"] == NODE_ID and ping["node_name"] == "fp1"
    assert [d["dataset_id"] for d in found["databases"]] == ["bc-1"] and found["count"] == 1
    assert all("path" not in d for d in found["databases"])
    assert none["databases"] == [] and none["count"] == 0
    assert listed["count"] == 1 and listed["success"] is True


def test_approval_request_lands_pending_with_its_source(served_unapproved: Any) -> None:
    server, link = served_unapproved
    server.handle(_request("TrainingPlanStatusRequest", experiment_id="e", training_plan=SENT))
    server.handle(_request("ApprovalRequest", description="please", training_plan=SENT))
    server.handle(_request("TrainingPlanStatusRequest", experiment_id="e", training_plan=SENT))
    (_, before), (_, approval), (_, after) = link.replies()
    assert (before["approval_obligation"], before["status"]) == (True, "Not Registered")
    assert approval["success"] is True and approval["training_plan_id"]
    assert after["status"] == "Pending" and after["training_plan_id"] == approval["training_plan_id"]
    record = server.node.approvals.get(approval["training_plan_id"])
    assert record is not None and record.status is Approval.PENDING and record.researcher_id == RESEARCHER
    assert server.node.approvals.source_of(record.plan_id) == SENT


def test_unknown_and_malformed_requests_get_an_error_reply(served: Any) -> None:
    server, link = served
    envelope = {"__type_message__": {"module": "fedbiomed.common.message", "class": "FARequest"}}
    server.handle(dumps({**envelope, "request_id": "request_2", "researcher_id": RESEARCHER, "x": 1}))
    bad_types = {
        "__type_message__": {"module": "fedbiomed.common.message", "class": "SearchRequest"},
        "protocol_version": "7",
        "request_id": "request_3",
        "researcher_id": RESEARCHER,
        "tags": "breast-cancer",  # a str where a list is declared
    }
    server.handle(dumps(bad_types))
    replies = link.replies()
    assert [k for k, _ in replies] == ["ErrorMessage", "ErrorMessage"]
    assert [r["request_id"] for _, r in replies] == ["request_2", "request_3"]
    assert all(r["node_id"] == NODE_ID and r["extra_msg"] for _, r in replies)


def test_undecodable_bytes_and_other_researchers_get_no_reply(served: Any) -> None:
    server, link = served
    server.handle(b"\xc1\xff not msgpack")
    server.handle(dumps([1, 2, 3]))
    other = encode_message(
        "PingRequest", {"protocol_version": "7", "request_id": "r", "researcher_id": "RESEARCHER_other"}
    )
    server.handle(other)
    assert link.sent == []


def test_training_round_replies_with_the_update_and_keeps_state(served: Any) -> None:
    server, link = served
    _train(server, _train_request())
    ((kind, reply),) = link.replies()
    assert kind == "TrainReply"
    assert reply["success"] is True, reply["msg"]
    assert reply["request_id"] == "request_1" and reply["experiment_id"] == "exper_1"
    assert reply["dataset_id"] == "bc-1" and reply["encrypted"] is False
    params = reply["params"]
    assert {k: tuple(v.shape) for k, v in params.items()} == {k: tuple(v.shape) for k, v in _params().items()}
    assert all(v.dtype == torch.float32 for v in params.values())
    assert 220 <= reply["sample_size"] <= 230  # 284 rows less the 20% test subset
    assert set(reply["timing"]) >= {"rtime_training", "ptime_training"}
    assert isinstance(reply["state_id"], str)
    assert [saved.state_id for saved in server.node.states.list("exper_1")] == [reply["state_id"]]
    # the metrics went out as Scalar feedback: training losses and validation before and after
    scalars = [f for f in link.feedback_items if isinstance(f, ScalarFeedback)]
    assert any(s.train for s in scalars)
    assert any(s.test and s.test_on_global_updates for s in scalars)
    assert any(s.test and s.test_on_local_updates for s in scalars)
    # the next round restores this one's state by its id
    _train(server, _train_request(state_id=reply["state_id"], round=1, params=params, request_id="request_9"))
    (_, second) = link.replies()[1]
    assert second["success"] is True, second["msg"]
    assert second["sample_size"] == reply["sample_size"]


def test_validation_only_request_replies_without_params(served: Any) -> None:
    server, link = served
    _train(server, _train_request(training=False, round=3))
    ((kind, reply),) = link.replies()
    assert kind == "TrainReply" and reply["success"] is True
    assert reply["params"] is None and reply["state_id"] is None and reply["sample_size"] is None
    assert any(isinstance(f, ScalarFeedback) and f.test for f in link.feedback_items)


@pytest.mark.parametrize(
    "plan",
    [
        "this is not python",
        "import no_such_module_anywhere\n",
        "from fedbiomed.common.optimizers import Optimizer\n",
        SENT.replace("class BreastCancerPlan", "class SomethingElse"),
    ],
)
def test_a_plan_that_does_not_load_fails_the_round_and_saves_nothing(served: Any, plan: str) -> None:
    server, link = served
    if _parses(plan):  # the registry keeps parsable sources only; approval must not be the refusal
        server.node.approvals.register(plan, status=Approval.APPROVED)
    _train(server, _train_request(training_plan=plan))
    ((kind, reply),) = link.replies()
    text = reply["msg"] if kind == "TrainReply" else reply["extra_msg"]
    assert (kind == "ErrorMessage") or reply["success"] is False
    assert text and "Traceback" not in text and "/" not in text
    assert server.node.states.list("exper_1") == ()
    assert list(server.settings.tmp_dir.glob("round_*")) == []


def _parses(source: str) -> bool:
    try:
        compile(source, "<plan>", "exec")
    except SyntaxError:
        return False
    return True


def test_an_unapproved_plan_is_refused(served_unapproved: Any) -> None:
    server, link = served_unapproved
    # approval is on by default and the plan is not registered
    _train(server, _train_request())
    ((_, reply),) = link.replies()
    assert reply["success"] is False
    assert "approv" in reply["msg"].lower()
    # the researcher's console hears of it too: Log feedback, JSON with a "message" (as 6.4.1 reads it)
    (logged,) = [f for f in link.feedback_items if isinstance(f, LogFeedback)]
    assert logged.level == "ERROR" and logged.node_id == NODE_ID
    assert json.loads(logged.msg)["message"] == f"Round 0 failed: {reply['msg']}"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(
        ["PingRequest", "SearchRequest", "ListRequest", "TrainRequest", "Nope", "ApprovalRequest"]
    ),
    fields=st.dictionaries(
        st.sampled_from(
            ["request_id", "researcher_id", "protocol_version", "tags", "training_plan", "description", "x"]
        ),
        _json,
        max_size=5,
    ),
)
def test_hostile_messages_never_crash_and_every_reply_is_a_valid_reply(
    served: Any, kind: str, fields: dict[str, Any]
) -> None:
    server, link = served
    link.sent.clear()
    message = {"__type_message__": {"module": "fedbiomed.common.message", "class": kind}, **fields}
    server.handle(dumps(message))
    for data in link.sent:
        decoded = loads(data).unwrap()
        assert decoded["__type_message__"]["class"] in REPLIES | {"ErrorMessage"}


def test_parse_address_refuses_urls_and_bad_ports() -> None:
    assert parse_address("localhost:50051") == ("localhost", 50051)
    for bad in ("127.0.0.1", "http://127.0.0.1:50051", "127.0.0.1:0", "127.0.0.1:99999", ":50051"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


# --- review fixes: every request answered, the worker survives, bounded queues, stop ------------


def test_an_approval_request_whose_source_does_not_parse_is_answered(served: Any) -> None:
    server, link = served
    server.handle(_request("ApprovalRequest", description="d", training_plan="def f(:"))
    ((kind, reply),) = link.replies()
    assert kind == "ApprovalReply" and reply["success"] is False and reply["request_id"] == "request_1"
    assert "does not parse" in reply["message"]
    assert [r.status for r in server.node.approvals.list()] == [Approval.APPROVED]  # only the fixture's plan


def test_a_store_failure_in_a_management_request_still_gets_an_error_reply(served: Any) -> None:
    server, link = served
    server.node.close()  # every store access now fails
    server.handle(_request("ListRequest"))
    server.handle(_request("SearchRequest", tags=["breast-cancer"]))
    replies = link.replies()
    assert [k for k, _ in replies] == ["ErrorMessage", "ErrorMessage"]
    assert all(r["request_id"] == "request_1" and "/" not in r["extra_msg"] for _, r in replies)


def test_an_unreadable_request_of_another_researcher_is_not_answered(served: Any) -> None:
    server, link = served
    bad = {
        "__type_message__": {"module": "fedbiomed.common.message", "class": "SearchRequest"},
        "protocol_version": "7",
        "request_id": "request_4",
        "researcher_id": "RESEARCHER_other",
        "tags": "breast-cancer",  # does not decode, but its ids are recovered
    }
    server.handle(dumps(bad))
    assert link.sent == []


def _wait_for_replies(link: RecordingLink, count: int) -> list[tuple[str, dict[str, Any]]]:
    done = threading.Event()

    def poll() -> None:
        while len(link.sent) < count and not done.wait(0.05):
            pass
        done.set()

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    watcher.join(120)
    done.set()
    return link.replies()


def test_a_plan_that_raises_system_exit_does_not_kill_the_round_worker(served: Any) -> None:
    server, link = served
    exiting = SENT.replace(
        "def training_step(self, data, target):\n",
        "def training_step(self, data, target):\n        raise SystemExit(3)\n",
    )
    assert exiting != SENT
    server.node.approvals.register(exiting, status=Approval.APPROVED)
    server.start()
    try:
        server.handle(_train_request(training_plan=exiting, request_id="request_exit"))
        server.handle(_train_request(request_id="request_next"))
        replies = _wait_for_replies(link, 2)
    finally:
        server.stop(timeout=60)
    # exit() in plan code fails that round like any plan exception, and the next one runs
    assert [(k, r["request_id"]) for k, r in replies] == [
        ("TrainReply", "request_exit"),
        ("TrainReply", "request_next"),
    ]
    assert replies[0][1]["success"] is False and replies[0][1]["msg"]
    assert replies[1][1]["success"] is True, replies[1][1]["msg"]


def test_train_requests_beyond_the_queue_bound_are_refused(served: Any) -> None:
    from fedpipe.fedbiomed.node import MAX_QUEUED_ROUNDS

    server, link = served
    # the worker is not started: every accepted request stays queued
    for i in range(MAX_QUEUED_ROUNDS + 2):
        server.handle(_train_request(request_id=f"request_{i}"))
    replies = link.replies()
    assert [r["request_id"] for _, r in replies] == [
        f"request_{i}" for i in range(MAX_QUEUED_ROUNDS, MAX_QUEUED_ROUNDS + 2)
    ]
    assert all(k == "ErrorMessage" and "busy" in r["extra_msg"] for k, r in replies)


def test_the_inbox_is_bounded_in_bytes_and_answers_what_does_not_fit(served: Any) -> None:
    server, _ = served
    link = RecordingLink()
    small = FedbiomedNode(
        server.node, link, researcher_id=RESEARCHER, node_name="fp1", max_message_bytes=4096
    )
    padded = [
        _request("ApprovalRequest", request_id=f"request_{i}", description="x" * 3000, training_plan="x = 1")
        for i in range(8)
    ]
    for data in padded:  # not started: nothing leaves the inbox
        small.receive(data)
    fitting = (4 * 4096) // len(padded[0])
    replies = link.replies()
    assert [r["request_id"] for _, r in replies] == [f"request_{i}" for i in range(fitting, 8)]
    assert all(k == "ErrorMessage" and "overloaded" in r["extra_msg"] for k, r in replies)


class BlockingFeedbackLink(RecordingLink):
    """A RecordingLink whose first feedback call waits until released (the round is then in hand)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_round = threading.Event()
        self.release = threading.Event()

    def feedback(self, item: ScalarFeedback | LogFeedback) -> bool:
        self.in_round.set()
        self.release.wait(120)
        return super().feedback(item)


def test_stop_finishes_the_round_in_hand_and_refuses_the_waiting_ones(served: Any) -> None:
    server, _ = served
    link = BlockingFeedbackLink()
    node = FedbiomedNode(
        server.node, link, researcher_id=RESEARCHER, node_name="fp1", max_message_bytes=MAX_BYTES
    )
    node.start()
    node.handle(_train_request(request_id="request_0"))
    assert link.in_round.wait(120)
    node.handle(_train_request(request_id="request_1"))
    node.handle(_train_request(request_id="request_2"))
    stopping = threading.Thread(target=node.stop)
    stopping.start()
    link.release.set()
    stopping.join(120)
    assert not stopping.is_alive()
    replies = link.replies()
    assert [(k, r["request_id"]) for k, r in replies] == [
        ("TrainReply", "request_0"),
        ("ErrorMessage", "request_1"),
        ("ErrorMessage", "request_2"),
    ]
    assert replies[0][1]["success"] is True
    assert all("stopping" in r["extra_msg"] for _, r in replies[1:])


@pytest.mark.parametrize("option", ["fingerprint", "certificate_file"])
def test_a_bad_pin_option_is_refused_before_waiting_for_the_researcher(tmp_path: Path, option: str) -> None:
    import socket

    from fedpipe.fedbiomed.node import run_fedbiomed_node

    with socket.socket() as sock:  # a port where no researcher listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    given: dict[str, Any] = (
        {"fingerprint": "SHA256:nope"}
        if option == "fingerprint"
        else {"certificate_file": tmp_path / "missing.pem"}
    )
    stop = threading.Event()
    safety = threading.Timer(60, stop.set)  # without the check the node would wait for the researcher
    safety.start()
    try:
        code = run_fedbiomed_node(tmp_path / "node", address=f"127.0.0.1:{port}", stop=stop, **given)
    finally:
        safety.cancel()
    assert code == 2
