"""Port contracts run against both the SQLite adapters and their in-memory fakes, so the fakes cannot drift."""

import itertools
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from returns.result import Failure, Success

from fedpipe.adapters.sqlite import (
    Database,
    SqliteApprovalRegistry,
    SqliteDatasetRegistry,
    SqliteSecaggKeys,
    SqliteStateStore,
)
from fedpipe.errors import ErrorCode, is_public_safe
from fedpipe.plan import DatasetRecord
from fedpipe.ports import (
    Approval,
    ApprovalRegistry,
    Biprime,
    DatasetRegistry,
    NodeState,
    SecaggKeys,
    ServerKeyShare,
    SplitRecord,
    StateStore,
)
from fedpipe.request import freeze_mapping
from fedpipe.testing import (
    InMemoryApprovalRegistry,
    InMemoryDatasetRegistry,
    InMemorySecaggKeys,
    InMemoryStateStore,
)

KINDS = ["sqlite", "fake"]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "node.sqlite")
    yield database
    database.close()


# --- harnesses: the port plus the owner-side arrangement each implementation offers ----------------


class DatasetHarness(Protocol):
    port: DatasetRegistry

    def add(self, record: DatasetRecord) -> None: ...


class ApprovalHarness(Protocol):
    port: ApprovalRegistry

    def set(self, source: str, status: Approval) -> None: ...


class KeyHarness(Protocol):
    port: SecaggKeys

    def add_key(self, share: ServerKeyShare) -> None: ...

    def add_biprime(self, biprime: Biprime) -> None: ...


class _SqliteDatasets:
    def __init__(self, db: Database) -> None:
        self.port = self.store = SqliteDatasetRegistry(db)

    def add(self, record: DatasetRecord) -> None:
        self.store.add(record)


class _FakeDatasets:
    def __init__(self) -> None:
        self.port = self.store = InMemoryDatasetRegistry()

    def add(self, record: DatasetRecord) -> None:
        self.store.add(record)


class _SqliteApprovals:
    def __init__(self, db: Database) -> None:
        self.port = self.store = SqliteApprovalRegistry(db)
        self._names = itertools.count()

    def set(self, source: str, status: Approval) -> None:
        self.store.register(source, name=f"plan-{next(self._names)}", status=status)


class _FakeApprovals:
    def __init__(self) -> None:
        self.port = self.store = InMemoryApprovalRegistry()

    def set(self, source: str, status: Approval) -> None:
        self.store.set_status(source, status)


class _SqliteKeys:
    def __init__(self, db: Database) -> None:
        self.port = self.store = SqliteSecaggKeys(db)

    def add_key(self, share: ServerKeyShare) -> None:
        self.store.add_server_key(share)

    def add_biprime(self, biprime: Biprime) -> None:
        self.store.add_biprime(biprime)


class _FakeKeys:
    def __init__(self) -> None:
        self.port = self.store = InMemorySecaggKeys()

    def add_key(self, share: ServerKeyShare) -> None:
        self.store.server_keys[share.secagg_id] = share

    def add_biprime(self, biprime: Biprime) -> None:
        self.store.biprimes[biprime.secagg_id] = biprime


@pytest.fixture(params=KINDS)
def datasets(request: pytest.FixtureRequest, db: Database) -> DatasetHarness:
    return _SqliteDatasets(db) if request.param == "sqlite" else _FakeDatasets()


@pytest.fixture(params=KINDS)
def approvals(request: pytest.FixtureRequest, db: Database) -> ApprovalHarness:
    return _SqliteApprovals(db) if request.param == "sqlite" else _FakeApprovals()


@pytest.fixture(params=KINDS)
def keys(request: pytest.FixtureRequest, db: Database) -> KeyHarness:
    return _SqliteKeys(db) if request.param == "sqlite" else _FakeKeys()


@pytest.fixture(params=KINDS)
def make_states(request: pytest.FixtureRequest) -> Iterator[Callable[[], StateStore]]:
    """A factory of empty state stores (hypothesis examples each take a fresh one)."""
    opened: list[Database] = []
    with tempfile.TemporaryDirectory() as root:

        def make() -> StateStore:
            if request.param == "fake":
                return InMemoryStateStore()
            database = Database(Path(root) / f"node-{len(opened)}.sqlite")
            opened.append(database)
            return SqliteStateStore(database, keep_per_job=100)

        yield make
        for database in opened:
            database.close()


# --- DatasetRegistry ----------------------------------------------------------------------------------


def test_unknown_dataset_is_none(datasets: DatasetHarness) -> None:
    assert datasets.port.get("nope") == Success(None)


def test_registered_dataset_reads_back_equal(datasets: DatasetHarness) -> None:
    record = DatasetRecord(
        dataset_id="ds-1",
        name="mnist",
        path="/data/mnist",
        data_type="images",
        shape=(60000, 1, 28, 28),
        description="handwritten digits",
        tags=("#mnist", "#images"),
        dataset_parameters=freeze_mapping({"normalize": True, "mean": [0.1307], "nested": {"k": None}}),
        data_loading_plan=freeze_mapping({"dlp_id": "dlp-1", "loading_blocks": {"a": "b"}}),
    )
    other = DatasetRecord(dataset_id="ds-2", name="csv", path="/data/x.csv", shape=(10, 3))
    datasets.add(record)
    datasets.add(other)
    assert datasets.port.get("ds-1") == Success(record)
    assert datasets.port.get("ds-2") == Success(other)
    assert datasets.port.get("ds-3") == Success(None)


# --- ApprovalRegistry ------------------------------------------------------------------------------

PLAN = '''
import math


class MyPlan:
    """A plan."""

    def training_routine(self, *, report, gpu):
        return int(math.sqrt(16))
'''

PLAN_REFORMATTED = '''import math
class MyPlan :  # comments and layout do not matter
    """A plan."""
    def training_routine(self,*,report,gpu,):


        return int( math.sqrt( 16 ) )
'''

PLAN_CHANGED_CODE = PLAN.replace("16", "25")
PLAN_CHANGED_DOC = PLAN.replace("A plan.", "A plan!")


def test_unknown_plan_is_not_registered(approvals: ApprovalHarness) -> None:
    assert approvals.port.status(PLAN) == Success(Approval.NOT_REGISTERED)


@pytest.mark.parametrize("status", [Approval.APPROVED, Approval.REJECTED, Approval.PENDING])
def test_registered_plan_reports_its_status(approvals: ApprovalHarness, status: Approval) -> None:
    approvals.set(PLAN, status)
    assert approvals.port.status(PLAN) == Success(status)


def test_status_ignores_comments_and_layout(approvals: ApprovalHarness) -> None:
    approvals.set(PLAN, Approval.APPROVED)
    assert approvals.port.status(PLAN_REFORMATTED) == Success(Approval.APPROVED)


@pytest.mark.parametrize("changed", [PLAN_CHANGED_CODE, PLAN_CHANGED_DOC], ids=["code", "docstring"])
def test_changed_plan_is_not_registered(approvals: ApprovalHarness, changed: str) -> None:
    approvals.set(PLAN, Approval.APPROVED)
    assert approvals.port.status(changed) == Success(Approval.NOT_REGISTERED)


def test_plan_with_syntax_error_fails_with_its_own_text(approvals: ApprovalHarness) -> None:
    approvals.set(PLAN, Approval.APPROVED)
    result = approvals.port.status("class Broken:\n    def f(self)\n        return 1\n")
    assert isinstance(result, Failure)
    error = result.failure()
    assert (error.code, error.step, error.retryable) == (ErrorCode.PLAN_NOT_APPROVED, "", False)
    assert "syntax error at line 2" in error.public
    assert is_public_safe(error.public)


# --- StateStore -------------------------------------------------------------------------------------

ids = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=20)
splits = st.builds(
    SplitRecord,
    dataset_id=ids,
    n_samples=st.integers(0, 10**6),
    test_ratio=st.floats(0, 1),
    test_indices=st.lists(st.integers(0, 10**6), max_size=50).map(tuple),
)
states = st.builds(
    NodeState,
    state_id=ids,
    job_id=ids,
    round=st.integers(0, 10**6),
    previous_state_id=st.none() | ids,
    plan_state=st.binary(max_size=2048),
    split=st.none() | splits,
)


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=states)
def test_saved_state_loads_equal(make_states: Callable[[], StateStore], state: NodeState) -> None:
    store = make_states()
    assert store.save(state) == Success(None)
    assert store.load(state.job_id, state.state_id) == Success(state)
    assert store.load(state.job_id + "-other", state.state_id) == Success(None)


def test_absent_state_is_none(make_states: Callable[[], StateStore]) -> None:
    assert make_states().load("job", "node_state_x") == Success(None)


def test_saving_the_same_id_again_replaces_the_state(make_states: Callable[[], StateStore]) -> None:
    store = make_states()
    first = NodeState(state_id="s", job_id="j", round=1, plan_state=b"first")
    second = NodeState(state_id="s", job_id="j", round=1, plan_state=b"second", previous_state_id="p")
    assert store.save(first) == Success(None)
    assert store.save(second) == Success(None)
    assert store.load("j", "s") == Success(second)


def test_state_ids_are_per_job(make_states: Callable[[], StateStore]) -> None:
    store = make_states()
    a = NodeState(state_id="s", job_id="job-a", round=1, plan_state=b"a")
    b = NodeState(state_id="s", job_id="job-b", round=7, plan_state=b"b")
    store.save(a)
    store.save(b)
    assert store.load("job-a", "s") == Success(a)
    assert store.load("job-b", "s") == Success(b)


def test_chained_states_each_load(make_states: Callable[[], StateStore]) -> None:
    store = make_states()
    previous: str | None = None
    saved = []
    for r in range(3):
        state = NodeState(
            state_id=f"s{r}", job_id="j", round=r, previous_state_id=previous, plan_state=bytes([r])
        )
        store.save(state)
        saved.append(state)
        previous = state.state_id
    for state in saved:
        assert store.load("j", state.state_id) == Success(state)


# --- SecaggKeys -------------------------------------------------------------------------------------

BIG = (1 << 2047) + 12345  # key material exceeds SQLite's 64-bit integers


def _share(secagg_id: str = "sk-1", job_id: str = "job-1") -> ServerKeyShare:
    return ServerKeyShare(secagg_id=secagg_id, job_id=job_id, parties=("researcher", "n1", "n2"), key=BIG)


def test_absent_key_material_is_none(keys: KeyHarness) -> None:
    assert keys.port.server_key("sk-1", "job-1") == Success(None)
    assert keys.port.biprime("bp-1") == Success(None)


def test_key_share_reads_back_for_its_job(keys: KeyHarness) -> None:
    keys.add_key(_share())
    assert keys.port.server_key("sk-1", "job-1") == Success(_share())


def test_key_share_of_another_job_is_refused(keys: KeyHarness) -> None:
    keys.add_key(_share(job_id="job-1"))
    result = keys.port.server_key("sk-1", "job-2")
    assert isinstance(result, Failure)
    assert (result.failure().code, result.failure().step) == (ErrorCode.SECAGG_CONFIG, "")


def test_biprime_reads_back(keys: KeyHarness) -> None:
    biprime = Biprime(secagg_id="bp-1", biprime=BIG * 3 + 1, max_keysize=2048)
    keys.add_biprime(biprime)
    assert keys.port.biprime("bp-1") == Success(biprime)


def test_tau_is_claimed_once_per_key_and_round(keys: KeyHarness) -> None:
    assert keys.port.claim_tau("sk-1", 3) == Success(None)
    again = keys.port.claim_tau("sk-1", 3)
    assert isinstance(again, Failure)
    error = again.failure()
    assert (error.code, error.step, error.retryable) == (ErrorCode.SECAGG_CONFIG, "", False)
    assert keys.port.claim_tau("sk-1", 4) == Success(None)
    assert keys.port.claim_tau("sk-2", 3) == Success(None)
