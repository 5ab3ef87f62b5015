"""The owner caps the researcher: loader workers, batch size, epochs and updates are refused past the caps.

Issue 11 point 7. A value over a cap is refused (``bad_training_args``, naming the argument and
the cap), never clamped; ``loader_args`` may set only an allow-list of keys; and a real torch
round under the default cap starts no process at all.
"""

import multiprocessing
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedpipe import ErrorCode, execute_round
from fedpipe.errors import is_public_safe
from fedpipe.plan import REQUEST_LOADER_ARGS
from fedpipe.settings import NodeSettings
from fedpipe.testing import FakeNode
from fedpipe.training import DataManager, TabularDataset
from fedpipe.training.errors import DataError
from tests.training.support import PLAN_SOURCE, MlpPlan, initial_params, record

_ROOT = Path(tempfile.mkdtemp(prefix="fedpipe-caps-"))

# (argument as named in messages, where it goes in training_args, the cap's settings field)
CAPPED = {
    "loader_args.num_workers": "max_loader_workers",
    "loader_args.batch_size": "max_batch_size",
    "epochs": "max_epochs",
    "num_updates": "max_updates",
}

not_ints = st.one_of(
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.lists(st.integers(0, 3), max_size=2),
)
ints = st.one_of(st.integers(-3, 40), st.integers(0, 2**62))


def node_with(**caps: Any) -> FakeNode:
    return FakeNode(settings=NodeSettings(node_id="caps-node", root=_ROOT, **caps))


def training_args(name: str, value: Any) -> dict[str, Any]:
    if name.startswith("loader_args."):
        return {"epochs": 1, "loader_args": {name.removeprefix("loader_args."): value}}
    return {name: value}


def malformed(name: str, value: Any) -> bool:
    whole = isinstance(value, int) and not isinstance(value, bool)
    if name == "loader_args.num_workers":
        return not (whole and value >= 0)
    if name == "loader_args.batch_size":
        return not (whole and value >= 1)
    return not (value is None or (whole and 0 <= value < 2**63))  # the schema's rule for epochs, num_updates


def over(value: Any, cap: int | None) -> bool:
    return cap is not None and isinstance(value, int) and value > cap


@given(
    st.sampled_from(sorted(CAPPED)),
    st.one_of(ints, not_ints),
    st.one_of(st.none(), st.integers(0, 30)),
)
def test_a_value_is_refused_iff_over_its_cap_or_malformed(name: str, value: Any, cap: int | None) -> None:
    """Each capped argument: accepted within the cap, refused past it or malformed, with a message naming both."""
    field = CAPPED[name]
    if field == "max_loader_workers":
        cap = 0 if cap is None else cap  # this cap always exists (0 by default)
    elif cap == 0:
        cap = 1  # the other caps are positive or absent
    node = node_with(**{field: cap})
    reply = execute_round(
        node.request(training_args=training_args(name, value)), node.ports, node.settings
    ).reply
    if not name.startswith("loader_args.") and isinstance(value, float) and value.is_integer():
        value = int(value)  # the schema takes integral floats for epochs and num_updates
    bad = malformed(name, value)
    if not (bad or over(value, cap)):
        assert reply.success, reply.error
        return
    assert reply.error is not None
    assert (reply.error.code, reply.error.step) == (ErrorCode.BAD_TRAINING_ARGS, "parse_training_args")
    assert f"`{name}`" in reply.msg and is_public_safe(reply.msg)
    if not bad:
        assert reply.msg.endswith(f"this node allows at most {cap}.")
    assert node.plans.instances == []  # refused before any plan code was loaded


@given(
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(1, 64),
    st.one_of(st.none(), st.integers(1, 64)),
    st.integers(1, 5),
    st.one_of(st.none(), st.integers(1, 5)),
)
def test_a_request_within_every_cap_runs_and_one_past_any_is_refused(
    workers: int, max_workers: int, batch: int, max_batch: int | None, epochs: int, max_epochs: int | None
) -> None:
    """All caps at once: the round runs iff every value is within its cap."""
    node = node_with(max_loader_workers=max_workers, max_batch_size=max_batch, max_epochs=max_epochs)
    args = {"epochs": epochs, "loader_args": {"num_workers": workers, "batch_size": batch}}
    reply = execute_round(node.request(training_args=args), node.ports, node.settings).reply
    within = workers <= max_workers and not over(batch, max_batch) and not over(epochs, max_epochs)
    assert reply.success is within
    if not within:
        assert reply.error is not None and reply.error.code is ErrorCode.BAD_TRAINING_ARGS


def test_the_documented_message() -> None:
    """The message a researcher reads for too many workers under the default cap."""
    node = node_with()
    reply = execute_round(
        node.request(training_args={"epochs": 1, "loader_args": {"num_workers": 4}}),
        node.ports,
        node.settings,
    ).reply
    assert reply.msg == (
        "Invalid training arguments: training argument `loader_args.num_workers` asks for 4 "
        "data-loader worker processes; this node allows at most 0."
    )


DANGEROUS_LOADER_ARGS = {
    "multiprocessing_context": "fork",
    "worker_init_fn": "os.system",
    "persistent_workers": True,
    "prefetch_factor": 64,
    "pin_memory": True,
    "pin_memory_device": "cuda:0",
    "generator": 1,
    "sampler": [0, 1, 2],
    "batch_sampler": [[0, 1]],
    "collate_fn": "builtins.exec",
    "timeout": 3600,
    "in_order": False,
}


@pytest.mark.parametrize("key", sorted(DANGEROUS_LOADER_ARGS))
def test_loader_args_outside_the_allow_list_are_refused(key: str) -> None:
    """Keys that start processes or threads, name code or tune resources never come from a request."""
    node = node_with(max_loader_workers=4)
    args = {"epochs": 1, "loader_args": {"batch_size": 4, key: DANGEROUS_LOADER_ARGS[key]}}
    reply = execute_round(node.request(training_args=args), node.ports, node.settings).reply
    assert reply.error is not None and reply.error.code is ErrorCode.BAD_TRAINING_ARGS
    assert f"`loader_args.{key}`" in reply.msg
    assert "allowed: batch_size, drop_last, num_workers, shuffle" in reply.msg


@pytest.mark.parametrize("key", ["shuffle", "drop_last"])
@pytest.mark.parametrize("value", [1, "yes", None])
def test_loader_flags_must_be_booleans(key: str, value: Any) -> None:
    node = node_with()
    args = {"epochs": 1, "loader_args": {key: value}}
    reply = execute_round(node.request(training_args=args), node.ports, node.settings).reply
    assert reply.error is not None and reply.error.code is ErrorCode.BAD_TRAINING_ARGS
    assert f"`loader_args.{key}` must be a boolean" in reply.msg


# --- the training layer --------------------------------------------------------------------------


def _manager(**plan_kwargs: Any) -> DataManager:
    return DataManager(TabularDataset(torch.zeros(8, 2).numpy(), torch.zeros(8).numpy()), **plan_kwargs)


@pytest.mark.parametrize(
    "researcher_args",
    [{"worker_init_fn": "os.system"}, {"num_workers": True}, {"num_workers": -1}, {"batch_size": 2.0}],
    ids=["unknown-key", "bool-workers", "negative-workers", "float-batch"],
)
def test_the_training_layer_passes_only_allowed_request_args(researcher_args: dict[str, Any]) -> None:
    """Driven outside the standard round, DataManager still refuses what a request may not set."""
    with pytest.raises(DataError, match="loader argument"):
        _manager().loaders([0, 1, 2], [3], researcher_args)


def test_plan_loader_kwargs_are_trusted_and_win() -> None:
    """The plan's own kwargs (approved code) win over the request's, workers included."""
    train, test = _manager(num_workers=0, batch_size=2).loaders([0, 1, 2, 3], [4, 5], {"num_workers": 3})
    assert train is not None and test is not None
    assert (train.num_workers, test.num_workers, train.batch_size) == (0, 0, 2)
    assert {"batch_size", "drop_last", "num_workers", "shuffle"} == REQUEST_LOADER_ARGS


# --- a real torch round starts no process -------------------------------------------------------


def child_pids() -> set[int]:
    """Pids of this process's live children, from /proc (no psutil), plus multiprocessing's own view."""
    me, found = os.getpid(), {p.pid for p in multiprocessing.active_children()}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me and fields[0] != "Z":
            found.add(int(entry))
    return found


class WatchedPlan(MlpPlan):
    """The MLP plan recording this process's children while it trains (when workers would be alive)."""

    def __init__(self) -> None:
        super().__init__()
        self.children_seen: list[set[int]] = []

    def training_step(self, data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.children_seen.append(child_pids())
        return super().training_step(data, target)


def torch_round(tmp_path: Path, loader_args: dict[str, Any], **caps: Any) -> tuple[Any, FakeNode]:
    node = FakeNode(
        settings=NodeSettings(node_id="caps-torch", root=tmp_path, secure_aggregation=False, **caps)
    )
    request = node.request(
        plan=WatchedPlan,
        class_name="WatchedPlan",
        source=PLAN_SOURCE,
        params=initial_params(),
        dataset=record(),
        training_args={
            "epochs": 1,
            "loader_args": loader_args,
            "test_ratio": 0.2,
            "test_on_local_updates": True,
        },
    )
    return execute_round(request, node.ports, node.settings).reply, node


linux_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


@linux_proc
def test_a_torch_round_under_the_default_cap_starts_no_process(tmp_path: Path) -> None:
    """Default cap: the DataLoaders get num_workers 0 and no child process exists during or after the round."""
    before = child_pids()
    reply, node = torch_round(tmp_path, {"batch_size": 64, "shuffle": True})
    assert reply.success, reply.error
    plan = node.plans.instances[-1]
    assert isinstance(plan, WatchedPlan)
    assert plan.train_loader is not None and plan.test_loader is not None
    assert (plan.train_loader.num_workers, plan.test_loader.num_workers) == (0, 0)
    assert plan.children_seen and all(seen <= before for seen in plan.children_seen)
    assert child_pids() <= before


@linux_proc
def test_a_torch_round_asking_for_workers_is_refused_before_any_process(tmp_path: Path) -> None:
    before = child_pids()
    reply, node = torch_round(tmp_path, {"batch_size": 64, "num_workers": 2})
    assert reply.error is not None and reply.error.code is ErrorCode.BAD_TRAINING_ARGS
    assert "at most 0" in reply.msg
    assert node.plans.instances == [] and child_pids() <= before


@linux_proc
@pytest.mark.slow
def test_workers_the_owner_allows_are_seen_and_gone_after_the_round(tmp_path: Path) -> None:
    """Control for the two tests above: with a cap of 1 the worker is visible while training, then gone."""
    before = child_pids()
    reply, node = torch_round(tmp_path, {"batch_size": 128, "num_workers": 1}, max_loader_workers=1)
    assert reply.success, reply.error
    plan = node.plans.instances[-1]
    assert isinstance(plan, WatchedPlan) and plan.train_loader is not None
    assert plan.train_loader.num_workers == 1
    assert any(seen - before for seen in plan.children_seen)
    assert child_pids() <= before
