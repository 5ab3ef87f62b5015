"""SCAFFOLD vs FedAvg on 3 non-IID nodes through the standard round, with the researcher step in the test."""

from pathlib import Path
from typing import Any

import pytest
import torch

from fedpipe.researcher.aggregation import fedavg, scaffold_update
from fedpipe.testing import FakeNode
from fedpipe.training import non_iid_shards
from tests.training.support import (
    DATA,
    SHARDS,
    ScaffoldShardPlan,
    ShardPlan,
    accuracy,
    initial_params,
    make_node,
    record,
    train,
)

N_NODES = 3
ROUNDS = 6
ARGS: dict[str, Any] = {
    "num_updates": 15,
    "loader_args": {"batch_size": 16},
    "optimizer_args": {"lr": 0.05},
    "random_seed": 11,
}


def _shards() -> list[str]:
    ids = []
    for k, rows in enumerate(non_iid_shards(DATA.labels, N_NODES, seed=5, skew=0.9)):
        SHARDS[f"shard-{k}"] = rows
        ids.append(f"shard-{k}")
    return ids


def _federation(
    root: Path, scaffold: bool, restart_at: int | None = None
) -> tuple[dict[str, torch.Tensor], list[Any]]:
    """Run ROUNDS rounds on 3 nodes; return the final global params and, per round, node 0's aux vars."""
    ids = _shards()
    nodes = [make_node(root / f"{'s' if scaffold else 'f'}{k}", node_id=f"node-{k}") for k in range(N_NODES)]
    params = initial_params(seed=3)
    control = {k: torch.zeros_like(v) for k, v in params.items()}
    states: list[str | None] = [None] * N_NODES
    node0_aux = []
    plan = ScaffoldShardPlan if scaffold else ShardPlan
    for r in range(ROUNDS):
        if restart_at is not None and r == restart_at:
            # node 0 restarts: new process, new fakes; only its durable state store is kept
            old = nodes[0]
            nodes[0] = FakeNode(settings=old.settings, states=old.states)
        updates, deltas = [], []
        for k, node in enumerate(nodes):
            extra: dict[str, Any] = {}
            if scaffold:
                extra = {
                    "aux": {"scaffold": {"global_state": control}},
                    "aggregator_args": {"aggregator_name": "scaffold"},
                }
            reply, payload = train(
                node,
                params,
                ARGS,
                plan=plan,
                dataset=record(ids[k], standardize=False),
                state_id=states[k],
                round=r,
                **extra,
            )
            assert reply.success, reply.msg
            states[k] = reply.state_id
            updates.append((payload["model_weights"], payload["sample_size"]))
            if scaffold:
                deltas.append(payload["optim_aux_var"]["scaffold"]["delta"])
                if k == 0:
                    node0_aux.append(payload["optim_aux_var"]["scaffold"])
        if scaffold:
            params, control = scaffold_update(params, updates, control, deltas, n_nodes=N_NODES)
        else:
            params = fedavg(updates)
    return params, node0_aux


@pytest.mark.slow
def test_scaffold_is_not_worse_than_fedavg_and_keeps_control_variates_across_restart(tmp_path):
    fedavg_params, _ = _federation(tmp_path, scaffold=False)
    scaffold_params, aux = _federation(tmp_path, scaffold=True, restart_at=3)
    acc_fedavg, acc_scaffold = accuracy(fedavg_params), accuracy(scaffold_params)
    assert acc_scaffold >= acc_fedavg - 0.01, (acc_scaffold, acc_fedavg)
    assert acc_scaffold > 0.9
    # round r reports c_i(new) and delta = c_i(new) - c_i(old): c_i(old) of round r is round r-1's c_i
    for r in range(1, ROUNDS):
        for name, state in aux[r]["state"].items():
            previous = state - aux[r]["delta"][name]
            assert torch.allclose(previous, aux[r - 1]["state"][name], atol=1e-6), (r, name)
    assert any(float(v.abs().sum()) > 0 for v in aux[2]["state"].values())


def test_scaffold_aux_vars_need_the_scaffold_optimizer(tmp_path):
    _shards()
    node = make_node(tmp_path)
    params = initial_params()
    reply, _ = train(
        node,
        params,
        ARGS,
        plan=ShardPlan,
        dataset=record("shard-0", standardize=False),
        aux={"scaffold": {"global_state": {k: torch.zeros_like(v) for k, v in params.items()}}},
    )
    assert not reply.success
    assert reply.error.code == "aux_var_failed"
    assert "optimizer is SGD" in reply.error.detail
