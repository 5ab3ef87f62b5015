"""SQLite stores beyond the port contracts: schema, durability, pruning, owner operations, D15 and D18 fixes."""

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from returns.result import Failure, Success

from fedpipe.adapters.sqlite import (
    SCHEMA_VERSION,
    Database,
    NodeAdminError,
    SqliteApprovalRegistry,
    SqliteDatasetRegistry,
    SqliteSecaggKeys,
    SqliteStateStore,
)
from fedpipe.approval import HashAlgorithm, plan_digest
from fedpipe.errors import ErrorCode
from fedpipe.plan import DatasetRecord
from fedpipe.ports import Approval, Biprime, NodeState, ServerKeyShare, SplitRecord


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "node" / "node.sqlite"


@pytest.fixture
def db(path: Path) -> Iterator[Database]:
    database = Database(path)
    yield database
    database.close()


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


# --- the database file ------------------------------------------------------------------------------


def test_database_uses_wal_foreign_keys_and_records_its_schema_version(db: Database, path: Path) -> None:
    assert db.schema_version == SCHEMA_VERSION
    with db.transaction(write=False) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    assert path.exists()


def test_reopening_keeps_data_and_does_not_migrate_again(path: Path) -> None:
    first = Database(path)
    SqliteDatasetRegistry(first).add(DatasetRecord(dataset_id="ds", path="/d"))
    first.close()
    second = Database(path)
    try:
        assert SqliteDatasetRegistry(second).get("ds").unwrap() == DatasetRecord(dataset_id="ds", path="/d")
        assert second.schema_version == SCHEMA_VERSION
    finally:
        second.close()


def test_a_durable_database_syncs_every_commit_and_a_scratch_one_leaves_it_to_the_system(path: Path) -> None:
    """FULL (2) by default; ``durable=False`` (a simulation's virtual nodes) is OFF (0), with the same data."""
    durable = Database(path)
    try:
        with durable.transaction(write=False) as conn:
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        SqliteDatasetRegistry(durable).add(DatasetRecord(dataset_id="ds", path="/d"))
    finally:
        durable.close()
    scratch = Database(path, durable=False)
    try:
        with scratch.transaction(write=False) as conn:
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 0
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "persist"
            assert conn.execute("PRAGMA locking_mode").fetchone()[0] == "exclusive"
        assert SqliteDatasetRegistry(scratch).get("ds").unwrap() == DatasetRecord(dataset_id="ds", path="/d")
    finally:
        scratch.close()
    again = Database(path)  # a scratch file opens as a node's again, in WAL mode
    try:
        with again.transaction(write=False) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert SqliteDatasetRegistry(again).get("ds").unwrap() == DatasetRecord(dataset_id="ds", path="/d")
    finally:
        again.close()


def test_a_scratch_database_is_held_by_one_connection_at_a_time(path: Path) -> None:
    first = Database(path, durable=False)
    try:
        SqliteDatasetRegistry(first).add(DatasetRecord(dataset_id="ds", path="/d"))
        with pytest.raises(NodeAdminError, match="locked"):
            Database(path, busy_timeout_s=0.05, durable=False)
    finally:
        first.close()
    second = Database(path, durable=False)  # closed: the next task opens it
    try:
        assert SqliteDatasetRegistry(second).get("ds").unwrap() == DatasetRecord(dataset_id="ds", path="/d")
    finally:
        second.close()


_KILLED_MID_COMMIT = """
import os, sys
from pathlib import Path
from fedpipe.adapters.sqlite import Database
db = Database(Path(sys.argv[1]), durable=False)
with db.transaction() as conn:
    conn.execute("UPDATE datasets SET path = '/changed' WHERE dataset_id = 'ds'")
    # more than the page cache holds: SQLite writes pages into the file before any commit,
    # and the process dies holding its journal
    conn.execute("CREATE TABLE filler (x)")
    conn.execute("INSERT INTO filler SELECT randomblob(4000) FROM (WITH RECURSIVE c(i) AS "
                 "(SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000) SELECT i FROM c)")
    os._exit(9)
"""


def test_a_scratch_database_of_a_killed_process_rolls_back_what_it_did_not_commit(path: Path) -> None:
    import subprocess
    import sys

    scratch = Database(path, durable=False)
    SqliteDatasetRegistry(scratch).add(DatasetRecord(dataset_id="ds", path="/d"))
    scratch.close()
    done = subprocess.run([sys.executable, "-c", _KILLED_MID_COMMIT, str(path)], check=False, timeout=120)
    assert done.returncode == 9
    assert path.stat().st_size > 4_000_000  # the uncommitted pages reached the file
    assert path.with_name(path.name + "-journal").stat().st_size > 0  # with a hot journal beside it
    reopened = Database(path, durable=False)
    try:
        registry = SqliteDatasetRegistry(reopened)
        assert registry.get("ds").unwrap() == DatasetRecord(dataset_id="ds", path="/d")
        with reopened.transaction(write=False) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'filler'").fetchone()[0] == 0
    finally:
        reopened.close()


def test_database_of_a_newer_schema_is_refused(path: Path) -> None:
    Database(path).close()
    with _raw(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(NodeAdminError, match="newer"):
        Database(path)


def test_a_file_that_is_not_a_database_is_refused(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(NodeAdminError, match="cannot be used"):
        Database(path)


def test_closed_database_makes_ports_fail_not_raise(db: Database) -> None:
    db.close()
    db.close()  # idempotent
    failures = [
        SqliteDatasetRegistry(db).get("x"),
        SqliteApprovalRegistry(db).status("x = 1"),
        SqliteStateStore(db).load("j", "s"),
        SqliteStateStore(db).save(NodeState(state_id="s", job_id="j", round=0)),
        SqliteSecaggKeys(db).server_key("k", "j"),
        SqliteSecaggKeys(db).biprime("k"),
        SqliteSecaggKeys(db).claim_tau("k", 0),
    ]
    codes = [f.failure().code for f in failures if isinstance(f, Failure)]
    assert codes == [
        ErrorCode.DATASET_NOT_FOUND,
        ErrorCode.PLAN_NOT_APPROVED,
        ErrorCode.STATE_LOAD_FAILED,
        ErrorCode.STATE_SAVE_FAILED,
        ErrorCode.SECAGG_CONFIG,
        ErrorCode.SECAGG_CONFIG,
        ErrorCode.SECAGG_CONFIG,
    ]
    assert all(f.failure().step == "" and f.failure().retryable for f in failures if isinstance(f, Failure))


def test_a_failed_transaction_leaves_nothing_behind(db: Database) -> None:
    def insert_then_fail() -> None:
        with db.transaction() as conn:
            conn.execute("INSERT INTO secagg_tau_claims VALUES ('k', 1, 'now')")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        insert_then_fail()
    assert SqliteSecaggKeys(db).claimed_rounds("k") == ()


# --- datasets ---------------------------------------------------------------------------------------


def test_duplicate_dataset_id_or_name_is_refused(db: Database) -> None:
    registry = SqliteDatasetRegistry(db)
    registry.add(DatasetRecord(dataset_id="ds-1", name="mnist"))
    with pytest.raises(NodeAdminError, match="id 'ds-1'"):
        registry.add(DatasetRecord(dataset_id="ds-1", name="other"))
    with pytest.raises(NodeAdminError, match="name 'mnist'"):
        registry.add(DatasetRecord(dataset_id="ds-2", name="mnist"))
    registry.add(DatasetRecord(dataset_id="ds-3"))  # empty names do not clash
    registry.add(DatasetRecord(dataset_id="ds-4"))
    assert [r.dataset_id for r in registry.list()] == ["ds-1", "ds-3", "ds-4"]


def test_dataset_remove_and_bad_fields(db: Database) -> None:
    registry = SqliteDatasetRegistry(db)
    registry.add(DatasetRecord(dataset_id="ds-1"))
    registry.remove("ds-1")
    assert registry.get("ds-1") == Success(None)
    with pytest.raises(NodeAdminError, match="no dataset"):
        registry.remove("ds-1")
    with pytest.raises(NodeAdminError, match="non-empty id"):
        registry.add(DatasetRecord(dataset_id=""))
    with pytest.raises(NodeAdminError, match="shape"):
        registry.add(DatasetRecord(dataset_id="x", shape=(-1,)))
    with pytest.raises(NodeAdminError, match="JSON"):
        registry.add(DatasetRecord(dataset_id="x", dataset_parameters={"f": object()}))


def test_corrupt_dataset_row_is_a_failure_not_an_exception(db: Database) -> None:
    registry = SqliteDatasetRegistry(db)
    registry.add(DatasetRecord(dataset_id="ds-1"))
    with db.transaction() as conn:
        conn.execute("UPDATE datasets SET dataset_parameters = '{not json'")
    result = registry.get("ds-1")
    assert isinstance(result, Failure)
    assert result.failure().code is ErrorCode.DATASET_NOT_FOUND


# --- approvals (D15) ------------------------------------------------------------------------------

PLAN = "class P:\n    def f(self):\n        return 1\n"
OTHER = "class Q:\n    pass\n"


def test_registration_records_hash_algorithm_and_canonical_form(db: Database) -> None:
    registry = SqliteApprovalRegistry(db, algorithm=HashAlgorithm.BLAKE2B)
    record = registry.register(PLAN, name="p", description="d", researcher_id="r1")
    expected = plan_digest(PLAN, HashAlgorithm.BLAKE2B).unwrap()
    assert (record.hash, record.algorithm, record.canonical_form) == (
        expected.hexdigest,
        HashAlgorithm.BLAKE2B,
        expected.canonical_form,
    )
    assert len(record.hash) == 128  # blake2b, not blake2s (the reference's bug)
    assert (record.status, record.researcher_id, record.description) == (Approval.APPROVED, "r1", "d")
    assert registry.source_of("p") == PLAN


def test_uniqueness_is_checked_for_real(db: Database) -> None:
    registry = SqliteApprovalRegistry(db)
    registry.register(PLAN, name="p", plan_id="id-1")
    with pytest.raises(NodeAdminError, match="already registered as 'p'"):
        registry.register(PLAN + "\n# only a comment differs\n", name="p2")
    with pytest.raises(NodeAdminError, match="already exists"):
        registry.register(OTHER, name="p")
    with pytest.raises(NodeAdminError, match="already exists"):
        registry.register(OTHER, name="q", plan_id="id-1")
    # the same plan under another algorithm is still the same plan
    with pytest.raises(NodeAdminError, match="already registered"):
        SqliteApprovalRegistry(db, algorithm=HashAlgorithm.SHA3_512).register(PLAN, name="p3")


def test_lookup_honours_the_algorithm(db: Database) -> None:
    registry = SqliteApprovalRegistry(db, algorithm=HashAlgorithm.SHA512)
    registry.register(PLAN, name="p")
    # a record whose hash was made with SHA256 but is labelled SHA512 must not match
    with db.transaction() as conn:
        conn.execute("UPDATE training_plans SET hash = ?", (plan_digest(PLAN).unwrap().hexdigest,))
    assert registry.status(PLAN) == Success(Approval.NOT_REGISTERED)
    assert registry.rehash() == 1
    assert registry.status(PLAN) == Success(Approval.APPROVED)


def test_records_under_several_algorithms_are_all_found(db: Database) -> None:
    SqliteApprovalRegistry(db, algorithm=HashAlgorithm.SHA256).register(PLAN, name="p")
    SqliteApprovalRegistry(db, algorithm=HashAlgorithm.SHA3_256).register(
        OTHER, name="q", status=Approval.REJECTED
    )
    reader = SqliteApprovalRegistry(db, algorithm=HashAlgorithm.BLAKE2S)
    assert reader.status(PLAN) == Success(Approval.APPROVED)
    assert reader.status(OTHER) == Success(Approval.REJECTED)


def test_rehash_moves_every_record_to_the_new_algorithm(db: Database) -> None:
    registry = SqliteApprovalRegistry(db)
    registry.register(PLAN, name="p")
    registry.register(OTHER, name="q")
    assert registry.rehash(HashAlgorithm.SHA3_384) == 2
    assert {r.algorithm for r in registry.list()} == {HashAlgorithm.SHA3_384}
    assert registry.status(PLAN) == Success(Approval.APPROVED)
    assert registry.rehash(HashAlgorithm.SHA3_384) == 0


def test_status_changes_by_id_or_name_and_listing(db: Database) -> None:
    registry = SqliteApprovalRegistry(db)
    p = registry.register(PLAN, name="p", status=Approval.PENDING)
    registry.register(OTHER, name="q")
    assert registry.reject(p.plan_id, notes="uses the network").status is Approval.REJECTED
    assert registry.status(PLAN) == Success(Approval.REJECTED)
    assert registry.set_pending("p").notes == "uses the network"
    assert registry.approve("p").status is Approval.APPROVED
    assert registry.approve("p").status is Approval.APPROVED  # same status twice is fine
    assert [r.name for r in registry.list(Approval.APPROVED)] == ["p", "q"]
    assert registry.list(Approval.REJECTED) == ()
    registry.remove("q")
    assert registry.get("q") is None
    assert registry.status(OTHER) == Success(Approval.NOT_REGISTERED)
    for action in (registry.approve, registry.reject, registry.remove, registry.source_of):
        with pytest.raises(NodeAdminError, match="no training plan"):
            action("missing")


def test_bad_registrations_are_refused(db: Database) -> None:
    registry = SqliteApprovalRegistry(db)
    with pytest.raises(NodeAdminError, match="syntax error at line 1"):
        registry.register("def f(:\n", name="broken")
    with pytest.raises(NodeAdminError, match="not 'Not Registered'"):
        registry.register(PLAN, name="p", status=Approval.NOT_REGISTERED)
    assert registry.list() == ()


def test_status_check_constraint_guards_the_table(db: Database) -> None:
    SqliteApprovalRegistry(db).register(PLAN, name="p")
    with pytest.raises(sqlite3.IntegrityError), db.transaction() as conn:
        conn.execute("UPDATE training_plans SET status = 'Maybe'")


# --- node state (D18) ---------------------------------------------------------------------------


def _state(i: int, job: str = "job", previous: str | None = None, size: int = 16) -> NodeState:
    return NodeState(
        state_id=f"s{i}",
        job_id=job,
        round=i,
        previous_state_id=previous,
        plan_state=bytes([i % 256]) * size,
        split=SplitRecord(dataset_id="ds", n_samples=10, test_ratio=0.2, test_indices=(1, 7)),
    )


def test_old_states_are_pruned_per_job(db: Database) -> None:
    store = SqliteStateStore(db, keep_per_job=2)
    store.save(_state(0, job="other"))
    previous = None
    for i in range(5):
        assert store.save(_state(i, previous=previous)) == Success(None)
        previous = f"s{i}"
    assert [s.state_id for s in store.list("job")] == ["s3", "s4"]
    assert store.load("job", "s2") == Success(None)
    assert store.load("other", "s0") == Success(_state(0, job="other"))
    assert store.chain("job", "s4") == ("s4", "s3")
    with db.transaction(write=False) as conn:  # blobs of pruned states went with them (2 per state)
        assert conn.execute("SELECT COUNT(*) FROM node_state_blobs").fetchone()[0] == 6


def test_state_of_an_incompatible_format_version_is_not_used(db: Database) -> None:
    store = SqliteStateStore(db)
    store.save(NodeState(state_id="new", job_id="j", round=1, version="2.0"))
    store.save(NodeState(state_id="minor", job_id="j", round=1, version="1.3"))
    assert store.load("j", "new") == Success(None)
    assert store.load("j", "minor").unwrap() is not None


def test_corrupt_state_blob_is_a_load_failure(db: Database) -> None:
    store = SqliteStateStore(db)
    store.save(_state(1))
    with db.transaction() as conn:
        conn.execute("UPDATE node_state_blobs SET data = x'7b' WHERE name = 'split'")
    result = store.load("job", "s1")
    assert isinstance(result, Failure)
    assert (result.failure().code, result.failure().retryable) == (ErrorCode.STATE_LOAD_FAILED, True)


def test_state_owner_operations(db: Database) -> None:
    store = SqliteStateStore(db)
    store.save(_state(1, size=100))
    store.save(_state(2, previous="s1"))
    summaries = store.list()
    assert [(s.state_id, s.previous_state_id) for s in summaries] == [("s1", None), ("s2", "s1")]
    assert summaries[0].size_bytes > 100
    assert store.remove_job("job") == 2
    assert store.list() == ()
    with pytest.raises(ValueError, match="at least 1"):
        SqliteStateStore(db, keep_per_job=0)


@pytest.mark.parametrize("size", [0, 1, 6, 7, 50])
def test_blobs_are_chunked_and_reassembled(db: Database, size: int) -> None:
    store = SqliteStateStore(db, chunk_bytes=7)
    state = NodeState(state_id="s", job_id="j", round=0, plan_state=bytes(range(size)))
    assert store.save(state) == Success(None)
    assert store.load("j", "s") == Success(state)
    with db.transaction(write=False) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM node_state_blobs WHERE name = 'plan_state'").fetchone()[0]
    assert rows == max(1, -(-size // 7))


def test_state_survives_reopening(path: Path) -> None:
    first = Database(path)
    SqliteStateStore(first).save(_state(1))
    first.close()
    second = Database(path)
    try:
        assert SqliteStateStore(second).load("job", "s1") == Success(_state(1))
    finally:
        second.close()


# --- secagg key material --------------------------------------------------------------------------

SHARE = ServerKeyShare(secagg_id="sk", job_id="job", parties=("r", "n1", "n2"), key=-(1 << 3000))


def test_duplicate_key_material_is_refused(db: Database) -> None:
    keys = SqliteSecaggKeys(db)
    keys.add_server_key(SHARE)
    with pytest.raises(NodeAdminError, match="already stored"):
        keys.add_server_key(SHARE)
    keys.add_biprime(Biprime(secagg_id="bp", biprime=(1 << 1024) + 7), parties=None)
    with pytest.raises(NodeAdminError, match="already stored"):
        keys.add_biprime(Biprime(secagg_id="bp", biprime=5))
    with pytest.raises(NodeAdminError, match="parties"):
        keys.add_server_key(ServerKeyShare(secagg_id="x", job_id="j", parties=("r",), key=1))
    with pytest.raises(NodeAdminError, match="> 1"):
        keys.add_biprime(Biprime(secagg_id="y", biprime=1))
    assert keys.server_key("sk", "job").unwrap() == SHARE


def test_claimed_rounds_survive_a_restart_and_key_removal(path: Path) -> None:
    first = Database(path)
    keys = SqliteSecaggKeys(first)
    keys.add_server_key(SHARE)
    assert keys.claim_tau("sk", 1) == Success(None)
    keys.remove_server_key("sk")
    with pytest.raises(NodeAdminError, match="no key share"):
        keys.remove_server_key("sk")
    first.close()
    second = Database(path)
    try:
        again = SqliteSecaggKeys(second)
        assert again.server_key("sk", "job") == Success(None)
        assert isinstance(again.claim_tau("sk", 1), Failure)
        assert again.claimed_rounds("sk") == (1,)
    finally:
        second.close()


def test_concurrent_claims_of_one_round_let_exactly_one_through(path: Path) -> None:
    databases = [Database(path) for _ in range(2)]  # two connections, as two processes would have
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        barrier.wait()
        results.append(isinstance(SqliteSecaggKeys(databases[i % 2]).claim_tau("sk", 9), Success))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for database in databases:
        database.close()
    assert sorted(results) == [False] * 7 + [True]


@pytest.mark.parametrize(
    "blob",
    [
        b"\xff",
        b"[]",
        b'{"dataset_id": "ds"}',
        b'{"dataset_id": 1, "n_samples": 1, "test_ratio": 0, "test_indices": []}',
    ],
    ids=["not utf-8", "not an object", "missing fields", "wrong types"],
)
def test_malformed_split_blobs_are_load_failures(db: Database, blob: bytes) -> None:
    store = SqliteStateStore(db)
    store.save(_state(1))
    with db.transaction() as conn:
        conn.execute("UPDATE node_state_blobs SET data = ? WHERE name = 'split'", (blob,))
    result = store.load("job", "s1")
    assert isinstance(result, Failure)
    assert result.failure().code is ErrorCode.STATE_LOAD_FAILED
