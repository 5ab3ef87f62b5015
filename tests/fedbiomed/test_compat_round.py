"""The sent Fed-BioMed plan driven by fedpipe's own round steps over fakes, with the loader as its PlanLoader."""

from collections.abc import Sequence
from typing import Any

import torch
from attrs import evolve

from fedpipe.codec import loads
from fedpipe.compose import NamedStep, replace
from fedpipe.errors import ErrorCode
from fedpipe.fedbiomed.compat import FedbiomedPlanLoader, split_data_fedbiomed
from fedpipe.plan import DatasetRecord
from fedpipe.ports import Ports
from fedpipe.request import TrainRequest
from fedpipe.runner import default_round, execute_round
from fedpipe.settings import NodeSettings
from fedpipe.testing import FakeNode
from tests.fedbiomed.plans.support import FBM_ARGS, SENT, STOCK_RUNS, model_args, shard, tensors

SOURCE = SENT.read_text(encoding="utf-8")
# fedpipe's TrainingArgs do not carry test_batch_size (0 here, the whole test subset in one batch, is the default)
ARGS = {k: v for k, v in FBM_ARGS.items() if k != "test_batch_size"}


def fedbiomed_round(ports: Ports, request: TrainRequest) -> Sequence[NamedStep]:
    """The standard (or validation-only) round with 6.4.1's split."""
    return replace(default_round(ports, request), "split_data", split_data_fedbiomed)


def _node(tmp_path: Any) -> tuple[FakeNode, Ports, DatasetRecord]:
    node = FakeNode(settings=NodeSettings(node_id="node-a", root=tmp_path, secure_aggregation=False))
    record = DatasetRecord(dataset_id="bc", name="breast cancer", path=str(shard(tmp_path)))
    return node, evolve(node.ports, plans=FedbiomedPlanLoader()), record


def _run(
    node: FakeNode,
    ports: Ports,
    record: DatasetRecord,
    params: Any,
    rounds: Any = fedbiomed_round,
    **fields: Any,
):
    request = node.request(
        class_name="BreastCancerPlan",
        source=SOURCE,
        params=params,
        dataset=record,
        training_args=dict(ARGS),
        model_args=model_args(),
        **fields,
    )
    run = execute_round(request, ports, node.settings, rounds)
    payload = loads(node.exchange.uploads[run.reply.params_url]).unwrap() if run.reply.params_url else {}
    return run, payload


def test_the_sent_plan_trains_through_the_round_as_on_a_stock_node(tmp_path):
    node, ports, record = _node(tmp_path)
    stock = STOCK_RUNS["defaults"]
    params, state_id = tensors(stock["initial"]), None
    for index, expected in enumerate(stock["rounds"][:2]):
        run, payload = _run(node, ports, record, params, state_id=state_id, round=index)
        reply = run.reply
        assert reply.success, reply.msg
        assert reply.sample_size == expected["sample_size"] == 228
        ctx = run.result.unwrap()
        assert list(ctx.split.test_indices) == expected["testing_index"]
        params = payload["model_weights"]
        for name, value in tensors(expected["params"]).items():
            torch.testing.assert_close(params[name], value, rtol=1e-4, atol=1e-5)
        assert payload["optimizer_args"] == {"lr": 0.01}
        assert not payload.get("aux_vars")
        state_id = reply.state_id
    before, after = payload["metadata"]["validation_before"], payload["metadata"]["validation_after"]
    assert after["accuracy"] > 0.9 and after["loss"] < before["loss"]
    events = node.monitor.events
    losses = [e.metric["Loss"] for e in events if e.train]
    assert losses[-1] < losses[0]
    tests = [e for e in events if e.test]
    assert [e.test_on_global_updates for e in tests] == [True, False, True, False]
    assert {e.total_samples for e in tests} == {56}


def test_the_standard_split_step_also_drives_the_plan_and_keeps_its_test_subset(tmp_path):
    node, ports, record = _node(tmp_path)
    first, payload = _run(
        node, ports, record, tensors(STOCK_RUNS["defaults"]["initial"]), rounds=default_round
    )
    assert first.reply.success, first.reply.msg
    assert payload["metadata"]["validation_after"]["accuracy"] > 0.85
    second, _ = _run(
        node,
        ports,
        record,
        payload["model_weights"],
        rounds=default_round,
        state_id=first.reply.state_id,
        round=1,
    )
    assert second.reply.success, second.reply.msg
    one, two = first.result.unwrap(), second.result.unwrap()
    assert set(two.split.test_indices) == set(one.split.test_indices)
    # the plan trains on the order it saved, although the standard step hands the kept split sorted
    assert list(two.plan.train_loader.dataset.indices) == list(one.split.train_indices)


def test_a_validation_only_request_reports_metrics_and_uploads_nothing(tmp_path):
    node, ports, record = _node(tmp_path)
    first, payload = _run(node, ports, record, tensors(STOCK_RUNS["defaults"]["initial"]))
    run, _ = _run(
        node, ports, record, payload["model_weights"], state_id=first.reply.state_id, round=1, training=False
    )
    assert run.reply.success, run.reply.msg
    assert run.reply.params_url == ""
    assert list(run.result.unwrap().split.test_indices) == list(first.result.unwrap().split.test_indices)
    last = node.monitor.events[-1]
    assert last.test and last.test_on_global_updates and last.metric["accuracy"] > 0.85


def test_an_unsupported_plan_is_answered_with_what_is_unsupported(tmp_path):
    node, ports, record = _node(tmp_path)
    source = SOURCE.replace(
        "from fedbiomed.common.dataset import TabularDataset",
        "from fedbiomed.common.dataset import TabularDataset\nfrom fedbiomed.common.optimizers import Optimizer",
        1,
    )
    request = node.request(
        class_name="BreastCancerPlan", source=source, dataset=record, training_args=dict(ARGS)
    )
    reply = execute_round(request, ports, node.settings, fedbiomed_round).reply
    assert not reply.success
    assert reply.error_code is ErrorCode.PLAN_LOAD_FAILED
    assert reply.msg == (
        "This node does not support `fedbiomed.common.optimizers.Optimizer` (declearn optimizers) in training plans."
    )
    assert node.states.states == {}
