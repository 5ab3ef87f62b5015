"""The standard and validation rounds over fakes: the reference checklist §12.1-12.2 and defects §13."""

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from attrs import evolve
from returns.result import Failure, Success

from fedpipe import ErrorCode, execute_round, run_round, standard_round
from fedpipe.codec import loads
from fedpipe.compose import NamedStep, names, replace
from fedpipe.context import RoundContext
from fedpipe.errors import RoundError, is_public_safe
from fedpipe.ports import Approval, Biprime, ServerKeyShare
from fedpipe.reply import REPLY_FIELDS
from fedpipe.rounds import STANDARD_STEPS, validation_round
from fedpipe.settings import NodeSettings
from fedpipe.testing import FakeNode, ScriptedPlan


def uploaded(node: FakeNode, url: str) -> dict[str, Any]:
    result = loads(node.exchange.uploads[url])
    assert isinstance(result, Success)
    value = result.unwrap()
    assert isinstance(value, dict)
    return value


def last_plan(node: FakeNode) -> ScriptedPlan:
    plan = node.plans.instances[-1]
    assert isinstance(plan, ScriptedPlan)
    return plan


def assert_failed(node: FakeNode, request: dict[str, Any], code: ErrorCode, step: str) -> Any:
    run = execute_round(request, node.ports, node.settings)
    reply = run.reply
    assert reply.success is False
    assert reply.error is not None
    assert (reply.error.code, reply.error.step) == (code, step), reply.error
    assert reply.msg == reply.error.public
    assert reply.researcher_id == "researcher-1" and reply.job_id == "job-1" and reply.node_id == "node-1"
    return reply


# --- §12.1 ------------------------------------------------------------------------------------


def test_normal_training_round_succeeds(node: FakeNode) -> None:
    """§12.1 item 1: a normal run replies success with the uploaded URL; params decoded once."""
    request = node.request()
    reply = run_round(request, node.ports, node.settings)
    assert reply.success is True
    assert reply.params_url in node.exchange.uploads
    assert reply.to_dict()["command"] == "train"
    assert node.exchange.downloads.count(request["params_url"]) == 1
    assert last_plan(node).calls.count("set_model_params") == 1


def test_model_args_reach_post_init(node: FakeNode) -> None:
    """§12.1 item 2: a round with model_args succeeds and the plan receives them."""
    reply = run_round(node.request(model_args={"hidden": [8, 4]}), node.ports, node.settings)
    assert reply.success
    assert last_plan(node).model_args == {"hidden": [8, 4]}


def test_results_file_has_reference_layout(node: FakeNode) -> None:
    """§12.1 item 3: split, training and after_training_params run once; results file keys as the reference."""
    reply = run_round(node.request(), node.ports, node.settings)
    plan = last_plan(node)
    for call in ("set_split", "training_routine", "after_training_params"):
        assert plan.calls.count(call) == 1
    results = uploaded(node, reply.params_url)
    reference_keys = {
        "researcher_id",
        "job_id",
        "state_id",
        "model_weights",
        "node_id",
        "optimizer_args",
        "encrypted",
        "optim_aux_var",
    }
    assert reference_keys <= set(results)
    assert set(results) - reference_keys <= {"sample_size", "metadata"}
    assert results["state_id"] == reply.state_id and str(reply.state_id).startswith("node_state_")
    assert results["encrypted"] is False and results["optim_aux_var"] == {}
    assert results["model_weights"] == {"w": plan.weights}
    assert results["optimizer_args"] == {"lr": plan.lr}


def test_plan_download_failure(node: FakeNode, caplog: pytest.LogCaptureFixture) -> None:
    """§12.1 item 5: a 404 on the plan fails the round; the reply msg is the logged public error."""
    request = node.request()
    del node.exchange.files[request["training_plan_url"]]
    with caplog.at_level(logging.ERROR, logger="fedpipe.node"):
        reply = assert_failed(node, request, ErrorCode.DOWNLOAD_FAILED, "fetch_plan")
    assert any("fetch_plan" in r.getMessage() for r in caplog.records)
    assert "download" in reply.msg.lower() and "404" not in reply.msg


def test_params_download_failure_names_its_step(node: FakeNode) -> None:
    """§12.1 item 6 and D8: a params 404 is reported as the params download, not as a plan download."""
    request = node.request()
    del node.exchange.files[request["params_url"]]
    assert_failed(node, request, ErrorCode.DOWNLOAD_FAILED, "fetch_params")
    assert node.plans.instances == []


def test_port_that_raises_gives_internal_reply(node: FakeNode, caplog: pytest.LogCaptureFixture) -> None:
    """§12.1 item 7 and D5: an exception escaping a port is a bug, answered with an attributable reply."""

    class Exploding:
        def status(self, source: str) -> Any:
            raise RuntimeError("database at /var/lib/node/db is corrupt")

    ports = evolve(node.ports, approvals=Exploding())
    with caplog.at_level(logging.ERROR, logger="fedpipe.node"):
        reply = run_round(node.request(), ports, node.settings)
    assert not reply.success
    assert (
        reply.error is not None
        and reply.error.code is ErrorCode.INTERNAL
        and reply.error.step == "check_approval"
    )
    assert "/var/lib" not in reply.msg and "RuntimeError" not in reply.msg
    assert any("Traceback" in r.getMessage() for r in caplog.records)
    assert reply.job_id == "job-1" and reply.researcher_id == "researcher-1"


@pytest.mark.parametrize("where", ["new_id", "rounds"])
def test_a_bug_before_the_first_step_is_a_setup_reply_with_the_ids(node: FakeNode, where: str) -> None:
    """An exception while the round is set up (the state id, the round's steps) is answered too.

    It is attributed to ``(setup)``, not to a step that never ran, and the reply still names the
    researcher and the job (and the state id only once it was made).
    """

    def explode(*_: Any) -> Any:
        raise RuntimeError("id source at /var/lib/node/ids is gone")

    ports = evolve(node.ports, new_id=explode) if where == "new_id" else node.ports
    steps = explode if where == "rounds" else standard_round(ports)
    run = execute_round(node.request(), ports, node.settings, steps)
    reply = run.reply
    assert reply.error is not None and (reply.error.code, reply.error.step) == (ErrorCode.INTERNAL, "(setup)")
    assert (reply.researcher_id, reply.job_id, reply.node_id) == ("researcher-1", "job-1", "node-1")
    assert (reply.state_id is None) is (where == "new_id")
    assert "/var/lib" not in reply.msg and run.step_seconds == ()
    assert node.plans.instances == [] and node.states.saves == 0


@pytest.mark.parametrize("status", [Approval.REJECTED, Approval.PENDING, None])
def test_unapproved_plan_is_refused(node: FakeNode, status: Approval | None) -> None:
    """§12.1 item 8: with approval on, a plan that is not approved fails the round before any params download."""
    request = node.request(approve=False)
    if status is not None:
        node.approvals.set_status(node.exchange.files[request["training_plan_url"]].decode(), status)
    reply = assert_failed(node, request, ErrorCode.PLAN_NOT_APPROVED, "check_approval")
    assert "not approved" in reply.msg
    assert request["params_url"] not in node.exchange.downloads


def test_an_unknown_plan_is_kept_for_review_and_stays_refused(node: FakeNode) -> None:
    """A plan the owner never saw is recorded as pending with its source; the next round says so."""
    request = node.request(approve=False)
    source = node.exchange.files[request["training_plan_url"]].decode()
    first = assert_failed(node, request, ErrorCode.PLAN_NOT_APPROVED, "check_approval")
    assert "status: Not Registered" in first.msg and "awaits the node owner's review" in first.msg
    assert list(node.approvals.refused.values()) == [source]
    second = assert_failed(node, node.request(approve=False), ErrorCode.PLAN_NOT_APPROVED, "check_approval")
    assert "status: Pending" in second.msg
    assert len(node.approvals.refused) == 1


def test_approval_off_accepts_any_plan(node: FakeNode) -> None:
    """§12.1 item 8 (converse): with approval off the plan runs unchecked, and the node log says so."""
    node.settings = evolve(node.settings, training_plan_approval=False)
    run = execute_round(node.request(approve=False), node.ports, node.settings)
    assert run.reply.success
    assert isinstance(run.result, Success)
    assert any("approval is off" in n for n in run.result.unwrap().notes)


def test_plan_instantiation_failure(node: FakeNode) -> None:
    """§12.1 item 9: a class that cannot be instantiated fails the round in load_plan."""

    def broken() -> ScriptedPlan:
        raise ImportError("No module named 'secret_dependency'")

    assert_failed(node, node.request(plan=broken), ErrorCode.PLAN_LOAD_FAILED, "load_plan")


def test_set_model_params_failure(node: FakeNode) -> None:
    """§12.1 item 10: set_model_params raising fails the round in set_params."""
    reply = assert_failed(
        node,
        node.request(plan=lambda: ScriptedPlan(fail=frozenset({"set_model_params"}))),
        ErrorCode.PARAMS_LOAD_FAILED,
        "set_params",
    )
    assert "scripted failure" not in reply.msg


def test_training_failure(node: FakeNode) -> None:
    """§12.1 item 11: training_routine raising fails the round in train_model; no state saved."""
    assert_failed(
        node,
        node.request(plan=lambda: ScriptedPlan(fail=frozenset({"training_routine"}))),
        ErrorCode.TRAINING_FAILED,
        "train_model",
    )
    assert node.states.saves == 0


def test_upload_failure(node: FakeNode) -> None:
    """§12.1 item 12: an upload failure fails the round in upload_results and saves no state."""
    node.exchange.fail_next["upload"] = 1
    reply = assert_failed(node, node.request(), ErrorCode.UPLOAD_FAILED, "upload_results")
    assert reply.params_url == ""
    assert node.states.states == {} and node.states.saves == 0


def test_failed_upload_leaves_the_previous_state_as_it_was(node: FakeNode) -> None:
    """Issue 11 point 8: round 1's failed upload leaves exactly round 0's state, no orphan."""
    first = run_round(node.request(), node.ports, node.settings)
    assert first.success and first.state_id is not None
    before = dict(node.states.states)
    node.exchange.fail_next["upload"] = 1
    second = run_round(node.request(state_id=first.state_id, round=1), node.ports, node.settings)
    assert second.error is not None and second.error.code is ErrorCode.UPLOAD_FAILED
    assert node.states.states == before
    assert "save_state" not in last_plan(node).calls


def test_dataset_record_reaches_the_plan(node: FakeNode) -> None:
    """§12.1 item 14: the node's dataset record (parameters, loading plan) is what the plan loads."""
    from fedpipe.plan import DatasetRecord
    from fedpipe.request import freeze_mapping

    record = DatasetRecord(
        dataset_id="ds-dlp", path="/d", data_loading_plan=freeze_mapping({"map": {"a": "b"}})
    )
    assert run_round(node.request(dataset=record), node.ports, node.settings).success
    assert last_plan(node).dataset == record


def test_no_aggregator_args_no_download(node: FakeNode) -> None:
    """§12.1 item 15: without aggregator args nothing extra is downloaded."""
    request = node.request()
    run_round(request, node.ports, node.settings)
    assert sorted(node.exchange.downloads) == sorted([request["training_plan_url"], request["params_url"]])


def test_aggregator_args_with_urls_are_resolved(node: FakeNode) -> None:
    """§12.1 item 16 and D7: object args with a url are replaced by the file content; others are untouched."""
    url3 = node.exchange.publish_object("var3", {"x": (1, 2)})
    url4 = node.exchange.publish_object("var4", [1.5])
    args = {
        "var1": 1,
        "var2": [1, 2],
        "var3": {"url": url3},
        "var4": {"url": url4, "arg_name": "var4"},
        "var5": {"no": "url"},
    }
    assert run_round(node.request(aggregator_args=args), node.ports, node.settings).success
    assert [last_plan(node).aggregator_args] == [
        {"var1": 1, "var2": [1, 2], "var3": {"x": (1, 2)}, "var4": [1.5], "var5": {"no": "url"}}
    ]


SECAGG = {"secagg_servkey_id": "sk", "secagg_biprime_id": "bp", "secagg_random": 0.25}


def with_keys(node: FakeNode, parties: tuple[str, ...] = ("researcher-1", "node-1", "node-2")) -> None:
    node.secagg_keys.server_keys["sk"] = ServerKeyShare(
        secagg_id="sk", job_id="job-1", parties=parties, key=10
    )
    node.secagg_keys.biprimes["bp"] = Biprime(secagg_id="bp", biprime=12345)


@pytest.mark.parametrize(
    ("fields", "settings_change", "keys", "ok"),
    [
        (SECAGG, {}, True, True),
        ({}, {}, True, True),
        ({"secagg_biprime_id": "bp"}, {}, True, False),
        ({**SECAGG, "secagg_random": None}, {}, True, False),
        ({"secagg_servkey_id": "sk"}, {}, True, False),
        ({**SECAGG, "secagg_servkey_id": "unknown"}, {}, True, False),
        ({**SECAGG, "secagg_biprime_id": "unknown"}, {}, True, False),
        ({}, {"force_secure_aggregation": True}, True, False),
        (SECAGG, {"secure_aggregation": False}, True, False),
        ({**SECAGG, "secagg_clipping_range": 0}, {}, True, False),
    ],
    ids=[
        "both-ids",
        "none",
        "only-biprime",
        "no-random",
        "only-servkey",
        "no-servkey-entry",
        "no-biprime-entry",
        "forced",
        "disabled",
        "zero-clip",
    ],
)
def test_secagg_rules(
    node: FakeNode, fields: dict[str, Any], settings_change: dict[str, Any], keys: bool, ok: bool
) -> None:
    """§12.1 item 18: the secure-aggregation rules of §1.7, each refusal a secagg_config error in check_secagg."""
    if keys:
        with_keys(node)
    node.settings = evolve(node.settings, **settings_change)
    reply = run_round(node.request(**fields), node.ports, node.settings)
    if ok:
        assert reply.success, reply.error
    else:
        assert reply.error is not None
        assert (reply.error.code, reply.error.step) == (ErrorCode.SECAGG_CONFIG, "check_secagg")
        assert node.plans.instances == []


def test_secagg_key_of_another_job_is_refused(node: FakeNode) -> None:
    """§12.1 item 18 and D5: a key share of another job is a clean error reply, not an escaped exception."""
    with_keys(node)
    node.secagg_keys.server_keys["sk"] = evolve(node.secagg_keys.server_keys["sk"], job_id="other-job")
    assert_failed(node, node.request(**SECAGG), ErrorCode.SECAGG_CONFIG, "check_secagg")


def test_secure_round_encrypts_flat_update(node: FakeNode) -> None:
    """§12.1 item 19: a secure round flattens, encrypts the weights and the secagg_random factor."""
    with_keys(node)
    reply = run_round(node.request(**SECAGG, round=3), node.ports, node.settings)
    assert reply.success, reply.error
    results = uploaded(node, reply.params_url)
    assert results["encrypted"] is True
    assert all(isinstance(c, int) for c in results["model_weights"]) and len(results["model_weights"]) == 3
    assert results["encryption_factor"] == [round(0.25 * reply.sample_size * 1_000_000)]
    assert ("sk", 3) in node.secagg_keys.claimed


def test_secure_round_refuses_tau_reuse(node: FakeNode) -> None:
    """D17: encrypting twice under the same (key, round) is refused."""
    with_keys(node)
    assert run_round(node.request(**SECAGG, round=1), node.ports, node.settings).success
    assert_failed(node, node.request(**SECAGG, round=1), ErrorCode.SECAGG_CONFIG, "encrypt_update")


def test_aux_var_ingestion_failure(node: FakeNode) -> None:
    """§12.1 item 20: an optimizer that cannot ingest aux vars fails the round with the reference's message."""
    url = node.exchange.publish_object("aux", {"scaffold": {"delta": "not-a-tensor"}})
    request = node.request(plan=lambda: ScriptedPlan(fail=frozenset({"set_aux_vars"})), aux_var_urls=[url])
    reply = assert_failed(node, request, ErrorCode.AUX_VAR_FAILED, "ingest_aux_vars")
    assert "TrainingPlan Optimizer failed to ingest the provided auxiliary variables" in reply.msg


def test_aux_var_files_are_merged_in_order(node: FakeNode) -> None:
    """§12.1 items 21 and 24: two aux-var files are merged (later wins) and handed to the plan once."""
    shared = node.exchange.publish_object("shared", {"scaffold": {"global": 1}, "other": 1})
    mine = node.exchange.publish_object("mine", {"scaffold": {"delta": 2}})
    assert run_round(node.request(aux_var_urls=[shared, mine]), node.ports, node.settings).success
    plan = last_plan(node)
    assert plan.calls.count("set_aux_vars") == 1
    assert plan.aux_in == {"scaffold": {"delta": 2}, "other": 1}


def test_aux_var_download_failure(node: FakeNode) -> None:
    """§12.1 item 22: a missing aux-var file fails the round; it was requested exactly once; nothing ingested."""
    url = "http://exchange.invalid/files/missing"
    assert_failed(node, node.request(aux_var_urls=[url]), ErrorCode.DOWNLOAD_FAILED, "fetch_aux_vars")
    assert node.exchange.downloads.count(url) == 1


def test_aux_var_decode_failure(node: FakeNode) -> None:
    """§12.1 item 23: an undecodable aux-var file is a bad payload."""
    url = node.exchange.publish("garbage", b"\xc1\xc1\xc1")
    assert_failed(node, node.request(aux_var_urls=[url]), ErrorCode.BAD_PAYLOAD, "fetch_aux_vars")


def test_no_aux_vars_no_ingestion(node: FakeNode) -> None:
    """§12.1 item 25: without aux vars the plan's optimizer is not asked to ingest any."""
    assert run_round(node.request(), node.ports, node.settings).success
    assert "set_aux_vars" not in last_plan(node).calls


def test_collected_aux_vars_are_uploaded(node: FakeNode) -> None:
    """§12.1 item 29: the results carry exactly what the plan's optimizer collected."""
    reply = run_round(
        node.request(plan=lambda: ScriptedPlan(aux_out={"scaffold": {"state": [0.5]}})),
        node.ports,
        node.settings,
    )
    assert uploaded(node, reply.params_url)["optim_aux_var"] == {"scaffold": {"state": [0.5]}}


def test_aux_var_collection_failure(node: FakeNode) -> None:
    """§12.1 items 30-31: an optimizer that cannot give its aux vars fails the round in collect_aux_vars."""
    request = node.request(plan=lambda: ScriptedPlan(fail=frozenset({"collect_aux_vars"})))
    assert_failed(node, request, ErrorCode.AUX_VAR_FAILED, "collect_aux_vars")


def test_data_loading_failure(node: FakeNode) -> None:
    """§12.1 item 32: a plan whose data loading raises fails the round in split_data."""
    assert_failed(
        node,
        node.request(plan=lambda: ScriptedPlan(fail=frozenset({"load_data"}))),
        ErrorCode.DATA_FAILED,
        "split_data",
    )


def chain(node: FakeNode, **fields: Any) -> Any:
    return run_round(node.request(**fields), node.ports, node.settings)


def test_state_is_saved_and_restored(node: FakeNode) -> None:
    """§12.1 items 33, 35, 37, 38: the saved state holds the plan state; the next round restores it."""
    first = chain(node)
    saved = node.states.states[("job-1", first.state_id)]
    assert saved.job_id == "job-1" and saved.round == 0 and saved.previous_state_id is None
    assert loads(saved.plan_state).unwrap() == {"steps_done": 1}
    second = chain(node, state_id=first.state_id, round=1)
    assert second.success and second.state_id != first.state_id
    assert last_plan(node).restored == {"steps_done": 1}
    assert node.states.states[("job-1", second.state_id)].previous_state_id == first.state_id
    assert loads(node.states.states[("job-1", second.state_id)].plan_state).unwrap() == {"steps_done": 2}


def test_failing_state_restore_is_a_warning(node: FakeNode) -> None:
    """§12.1 item 34 and D18: a plan that cannot restore its state continues from fresh state, with a note."""
    first = chain(node)
    run = execute_round(
        node.request(plan=lambda: ScriptedPlan(fail=frozenset({"load_state"})), state_id=first.state_id),
        node.ports,
        node.settings,
    )
    assert run.reply.success
    assert any("fresh state" in n for n in run.result.unwrap().notes)


def test_unknown_previous_state_is_a_warning(node: FakeNode) -> None:
    """D18: an unknown state id no longer fails the round; the node log says it started fresh."""
    run = execute_round(node.request(state_id="node_state_unknown"), node.ports, node.settings)
    assert run.reply.success
    assert any("not found" in n for n in run.result.unwrap().notes)


def test_unreadable_state_store_fails_the_round(node: FakeNode) -> None:
    """§12.1 item 7 (state): a store that cannot be read fails the round, without details."""
    node.states.fail_next_load = 1
    reply = assert_failed(
        node, node.request(state_id="node_state_x"), ErrorCode.STATE_LOAD_FAILED, "load_state"
    )
    assert reply.msg == "The previous node state could not be read."


def test_state_save_failure(node: FakeNode) -> None:
    """A failed save (the last step) fails the round and leaves no state; the uploaded file is unreferenced.

    The reply is a failure, so no researcher uses the results file it uploaded: a
    content-addressed file that nothing points to (see ``fedpipe.rounds``).
    """
    node.states.fail_next_save = 1
    reply = assert_failed(node, node.request(), ErrorCode.STATE_SAVE_FAILED, "save_state")
    assert node.states.states == {} and node.states.saves == 0
    assert reply.params_url == ""
    assert len(node.exchange.uploads) == 1


def test_empty_plan_state_is_saved(node: FakeNode) -> None:
    """§12.1 item 36: a plan with nothing to keep still gets a state record (with an empty plan state)."""

    class Stateless(ScriptedPlan):
        def save_state(self) -> Mapping[str, Any]:
            return {}

    reply = chain(node, plan=Stateless)
    assert loads(node.states.states[("job-1", reply.state_id)].plan_state).unwrap() == {}


def test_invalid_training_args_never_run(node: FakeNode) -> None:
    """§12.1 item 39 and D6: invalid training args give one error reply naming the field; no plan runs."""
    reply = assert_failed(
        node,
        node.request(training_args={"epochs": "not_an_int"}),
        ErrorCode.BAD_TRAINING_ARGS,
        "parse_training_args",
    )
    assert "`epochs`" in reply.msg
    assert node.exchange.downloads == [] and node.plans.instances == []


def test_training_then_validation_then_training(node: FakeNode) -> None:
    """§12.1 item 40: round 0 saves once; a validation-only round saves nothing; round 1 loads round 0's state."""
    r0 = chain(node, training_args={"epochs": 1, "test_ratio": 0.2, "test_on_global_updates": True})
    assert r0.success and node.states.saves == 1
    loads_before = node.states.loads
    val = chain(node, training=False, training_args={"test_ratio": 0.2, "test_on_global_updates": True})
    assert val.success and val.state_id is None and val.params_url == "" and val.sample_size is None
    assert val.to_dict()["timing"] == {}
    assert node.states.saves == 1 and node.states.loads == loads_before
    r1 = chain(node, state_id=r0.state_id, round=1)
    assert r1.success and node.states.saves == 2
    assert r1.state_id != r0.state_id and str(r1.state_id).startswith("node_state_")


# --- §12.2 ------------------------------------------------------------------------------------


def test_parsed_request_drives_the_round(node: FakeNode) -> None:
    """§12.2 item 41: the request's fields reach the round (round number, ids, args)."""
    run = execute_round(node.request(round=7, model_args={"k": 1}), node.ports, node.settings)
    ctx = run.result.unwrap()
    assert ctx.request.round == 7 and ctx.request.model_args == {"k": 1}
    assert ctx.dataset is not None and ctx.dataset.dataset_id == "ds-1"


def test_unknown_dataset(node: FakeNode) -> None:
    """§12.2 item 42: a dataset the node does not have gives a dataset_not_found reply with the researcher id."""
    reply = assert_failed(node, node.request(dataset_id="nope"), ErrorCode.DATASET_NOT_FOUND, "find_dataset")
    assert reply.msg == "The requested dataset is not available on this node."


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("training_plan_url", None),
        ("training_plan_url", "not a url"),
        ("training_plan_class", None),
        ("training_plan_class", 42),
    ],
)
def test_bad_plan_fields_are_refused(node: FakeNode, field: str, value: Any) -> None:
    """§12.2 item 43: a missing or invalid plan URL or class is a bad_request naming the field."""
    request = node.request()
    if value is None:
        del request[field]
    else:
        request[field] = value
    reply = assert_failed(node, request, ErrorCode.BAD_REQUEST, "parse_request")
    assert f"`{field}`" in reply.msg


def test_full_round_with_aux_vars_echoes_request(node: FakeNode) -> None:
    """§12.2 item 44: a full round with aux vars echoes researcher/job/dataset ids, sample_size is the train size."""
    url = node.exchange.publish_object("aux", {"scaffold": {"delta": 1234.0}})
    reply = run_round(
        node.request(aux_var_urls=[url], training_args={"test_ratio": 0.2}), node.ports, node.settings
    )
    d = reply.to_dict()
    assert (d["researcher_id"], d["job_id"], d["dataset_id"], d["success"], d["msg"]) == (
        "researcher-1",
        "job-1",
        "ds-1",
        True,
        "",
    )
    assert d["sample_size"] == 8
    assert set(d) == set(REPLY_FIELDS)


# --- §13 defects ------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [1, 1.0])
def test_no_training_subset_is_a_clear_error(node: FakeNode, ratio: float) -> None:
    """D1: test_ratio 1 with training gives a clear no_training_data reply, not a crash."""
    reply = assert_failed(
        node, node.request(training_args={"test_ratio": ratio}), ErrorCode.NO_TRAINING_DATA, "split_data"
    )
    assert "test_ratio" in reply.msg


def test_validation_only_with_full_test_ratio(node: FakeNode) -> None:
    """§1.17: test_ratio 1 is fine for a validation-only round."""
    reply = chain(node, training=False, training_args={"test_ratio": 1, "test_on_global_updates": True})
    assert reply.success
    assert reply.metadata["validation_before"] is not None


def test_workspace_is_removed(node: FakeNode) -> None:
    """D9: the round workspace (plan source, params, results) is removed after success and after failure."""
    assert chain(node).success
    request = node.request(plan=lambda: ScriptedPlan(fail=frozenset({"training_routine"})))
    assert not run_round(request, node.ports, node.settings).success
    assert list(node.settings.tmp_dir.iterdir()) == []


def test_validation_notes_are_accurate(node: FakeNode) -> None:
    """D11: a split without validation and validation without a split are each noted correctly."""
    run = execute_round(node.request(training_args={"test_ratio": 0.3}), node.ports, node.settings)
    assert any("no validation requested" in n for n in run.result.unwrap().notes)
    run = execute_round(
        node.request(training_args={"test_on_local_updates": True}), node.ports, node.settings
    )
    assert any("test_ratio is 0" in n for n in run.result.unwrap().notes)


def test_failing_validation_does_not_fail_the_round(node: FakeNode) -> None:
    """§1.8 step 11: a failing validation before or after training is logged; the round succeeds."""
    args = {"test_ratio": 0.2, "test_on_global_updates": True, "test_on_local_updates": True}
    run = execute_round(
        node.request(plan=lambda: ScriptedPlan(fail=frozenset({"testing_routine"})), training_args=args),
        node.ports,
        node.settings,
    )
    assert run.reply.success
    notes = run.result.unwrap().notes
    assert any(n.startswith("validate_global") for n in notes) and any(
        n.startswith("validate_local") for n in notes
    )


def test_validation_reports_through_monitor(node: FakeNode) -> None:
    """§1.8 steps 11-12: validation metrics before and after training reach the monitor and the reply metadata."""
    args = {
        "test_ratio": 0.2,
        "test_on_global_updates": True,
        "test_on_local_updates": True,
        "test_metric": "mse",
    }
    reply = chain(node, training_args=args)
    tests = [e for e in node.monitor.events if e.test]
    assert [e.test_on_global_updates for e in tests] == [True, False]
    assert all(e.job_id == "job-1" and e.node_id == "node-1" for e in node.monitor.events)
    assert (
        reply.metadata["validation_after"]["MEAN_SQUARE_ERROR"]
        < reply.metadata["validation_before"]["MEAN_SQUARE_ERROR"]
    )


def test_plan_exception_text_never_reaches_researcher(node: FakeNode) -> None:
    """D16: a plan exception mentioning a path is logged in full, and the reply carries only the public text."""

    class Leaky(ScriptedPlan):
        def training_routine(self, **kwargs: Any) -> int:
            raise FileNotFoundError("[Errno 2] No such file: '/hospital/patients/records.csv'")

    run = execute_round(node.request(plan=Leaky), node.ports, node.settings)
    assert run.reply.error is not None and "/hospital" in run.reply.error.detail
    assert "/hospital" not in run.reply.msg and "FileNotFoundError" not in run.reply.msg
    assert is_public_safe(run.reply.msg)


def test_bad_request_reply_carries_what_it_can(node: FakeNode) -> None:
    """D5: even an unparsable request gets a reply with the ids it did carry."""
    reply = run_round({"researcher_id": "r9", "job_id": "j9", "round": -1}, node.ports, node.settings)
    assert (
        not reply.success
        and reply.researcher_id == "r9"
        and reply.job_id == "j9"
        and reply.node_id == "node-1"
    )
    assert reply.error is not None and reply.error.code is ErrorCode.BAD_REQUEST


class HostileRequest(Mapping[str, Any]):
    """A raw request whose reading raises: iterating it always, looking keys up when ``readable`` is off."""

    def __init__(self, readable: bool) -> None:
        self.readable = readable
        self.values = {"researcher_id": "r7", "job_id": "j7"}

    def __getitem__(self, key: str) -> Any:
        if not self.readable:
            raise RuntimeError("hostile lookup")
        return self.values[key]

    def __iter__(self) -> Any:
        raise RuntimeError("hostile iteration")

    def __len__(self) -> int:
        raise RuntimeError("hostile len")


@pytest.mark.parametrize("readable", [True, False], ids=["ids-readable", "nothing-readable"])
def test_a_bug_in_parsing_is_an_internal_reply(
    node: FakeNode, readable: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11 point 1: parsing runs inside the last-resort boundary: an exception there is a reply, not a crash."""
    with caplog.at_level(logging.ERROR, logger="fedpipe.node"):
        run = execute_round(HostileRequest(readable), node.ports, node.settings)
    reply = run.reply
    assert reply.error is not None and not reply.success
    if reply.error.code is ErrorCode.INTERNAL:  # (a parser that refuses such objects itself is fine too)
        assert reply.error.step == "parse_request"
        assert any("hostile" in r.getMessage() for r in caplog.records)
    else:
        assert reply.error.code is ErrorCode.BAD_REQUEST
    assert "hostile" not in reply.msg and is_public_safe(reply.msg)
    assert (reply.researcher_id, reply.job_id) == (("r7", "j7") if readable else ("", ""))
    assert reply.node_id == "node-1" and set(reply.to_dict()) == set(REPLY_FIELDS)
    assert node.states.saves == 0 and node.plans.instances == []


def test_standard_round_has_reference_order(node: FakeNode) -> None:
    """§1.8: the standard round lists every step of the reference round in order, but uploads before saving."""
    assert names(standard_round(node.ports)) == STANDARD_STEPS
    assert STANDARD_STEPS[-2:] == ("upload_results", "save_state")
    assert "train_model" not in names(validation_round(node.ports))


def test_custom_variant_clips_update_before_upload(node: FakeNode) -> None:
    """Composition: a variant that clips the update and skips global validation takes a few lines."""
    from fedpipe.compose import insert_before, without

    def clip_update(ctx: RoundContext) -> Success[RoundContext] | Failure[RoundError]:
        assert ctx.update is not None
        clipped = {k: [max(-0.01, min(0.01, v)) for v in vs] for k, vs in ctx.update.model_weights.items()}
        return Success(evolve(ctx, update=evolve(ctx.update, model_weights=clipped)))

    variant = without(
        insert_before(standard_round(node.ports), "upload_results", NamedStep("clip_update", clip_update)),
        "validate_global",
    )
    reply = run_round(node.request(), node.ports, node.settings, variant)
    assert reply.success
    assert all(abs(v) <= 0.01 for v in uploaded(node, reply.params_url)["model_weights"]["w"])


def test_replacing_a_step_by_name(node: FakeNode) -> None:
    """Composition: replace keeps the name, so errors of the new step are attributed to it."""

    def refuse(ctx: RoundContext) -> Failure[RoundError]:
        return Failure(
            RoundError(code=ErrorCode.TRAINING_FAILED, step="", detail="policy", public="Training is paused.")
        )

    reply = run_round(
        node.request(), node.ports, node.settings, replace(standard_round(node.ports), "train_model", refuse)
    )
    assert (
        reply.error is not None and reply.error.step == "train_model" and reply.msg == "Training is paused."
    )


def test_settings_root_is_not_in_replies(tmp_path: Path) -> None:
    """D16: the node's root path never shows in a reply, whatever fails."""
    secret = tmp_path / "very-secret-root"
    node = FakeNode(settings=NodeSettings(node_id="n", root=secret))
    request = node.request()
    del node.exchange.files[request["params_url"]]
    reply = run_round(request, node.ports, node.settings)
    assert "very-secret-root" not in str(reply.to_dict())
