"""The node database keeps what the Fed-BioMed 6.4.1 secure-aggregation set-ups agree on: schema 2, DH contexts, channel keys, JL key pairs."""

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from returns.result import Failure, Success

from fedpipe.adapters.sqlite import (
    SCHEMA_VERSION,
    Database,
    NodeAdminError,
    SqliteDatasetRegistry,
    SqliteSecaggKeys,
)
from fedpipe.adapters.sqlite.secagg import DH_SECRET_BYTES, MAX_CHANNEL_KEY_BYTES, DhContext
from fedpipe.errors import ErrorCode, RoundError, is_printable, is_public_safe
from fedpipe.ports import Biprime, ServerKeyShare

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
# One database per test, written by every example: the stores replace, so examples do not clash.
per_test_db = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


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


def _secret(i: int) -> bytes:
    return bytes([i % 256]) * DH_SECRET_BYTES


def _ctx(secagg_id: str = "secagg_1", job_id: str = "exp-1", seed: int = 1) -> DhContext:
    # This node is "NODE_a"; it agreed a secret with each other party.
    return DhContext(
        secagg_id=secagg_id,
        job_id=job_id,
        parties=("NODE_a", "NODE_b", "NODE_c"),
        pairwise={"NODE_b": _secret(seed), "NODE_c": _secret(seed + 1)},
    )


def _pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert text and "\n" not in text and "\r" not in text
    text.encode("utf-8")  # no lone surrogate made it into the sentence
    return text


def _assert_store_failure(result: object, path: Path) -> RoundError:
    assert isinstance(result, Failure)
    error = result.failure()
    assert isinstance(error, RoundError)
    assert (error.code, error.step) == (ErrorCode.SECAGG_CONFIG, "")
    assert (
        is_public_safe(error.public) and str(path) not in error.public and "node.sqlite" not in error.public
    )
    return error


# --- schema 2 ---------------------------------------------------------------------------------------

# The schema as version 1 shipped it, frozen here: an upgraded file must match a fresh one, so an
# edit to migration 1 (which must stay as it is) fails this test too.
V1_SCHEMA = """
    CREATE TABLE datasets (
        dataset_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        path TEXT NOT NULL,
        data_type TEXT NOT NULL,
        shape TEXT NOT NULL,
        description TEXT NOT NULL,
        tags TEXT NOT NULL,
        dataset_parameters TEXT NOT NULL,
        data_loading_plan TEXT,
        date_added TEXT NOT NULL
    );
    CREATE UNIQUE INDEX datasets_name ON datasets(name) WHERE name <> '';

    CREATE TABLE training_plans (
        plan_id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL,
        source TEXT NOT NULL,
        hash TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        canonical_form TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('Approved', 'Rejected', 'Pending')),
        researcher_id TEXT,
        notes TEXT,
        date_registered TEXT NOT NULL,
        date_last_action TEXT NOT NULL,
        UNIQUE (hash, algorithm, canonical_form)
    );

    CREATE TABLE node_states (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        state_id TEXT NOT NULL,
        round INTEGER NOT NULL,
        previous_state_id TEXT,
        version TEXT NOT NULL,
        saved_at TEXT NOT NULL,
        UNIQUE (job_id, state_id)
    );
    CREATE TABLE node_state_blobs (
        state_seq INTEGER NOT NULL REFERENCES node_states(seq) ON DELETE CASCADE,
        name TEXT NOT NULL,
        chunk INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (state_seq, name, chunk)
    );

    CREATE TABLE secagg_server_keys (
        secagg_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        parties TEXT NOT NULL,
        key TEXT NOT NULL,
        date_added TEXT NOT NULL
    );
    CREATE TABLE secagg_biprimes (
        secagg_id TEXT PRIMARY KEY,
        biprime TEXT NOT NULL,
        max_keysize INTEGER NOT NULL,
        parties TEXT,
        date_added TEXT NOT NULL
    );
    CREATE TABLE secagg_tau_claims (
        secagg_id TEXT NOT NULL,
        round INTEGER NOT NULL,
        claimed_at TEXT NOT NULL,
        PRIMARY KEY (secagg_id, round)
    );
"""

V1_ROWS = [
    "INSERT INTO datasets VALUES ('ds', 'mnist', '/data/mnist', 'csv', '[10, 3]', '', '[\"t\"]', '{}', NULL, 'd')",
    "INSERT INTO training_plans VALUES ('p1', 'plan', '', 'x = 1', 'h', 'SHA256', 'c', 'Approved', NULL, NULL, 'd', 'd')",
    "INSERT INTO node_states VALUES (1, 'job', 's1', 1, NULL, '1.0', 'd')",
    "INSERT INTO node_state_blobs VALUES (1, 'plan_state', 0, x'0102')",
    f"INSERT INTO secagg_server_keys VALUES ('sk', 'job', '[\"r\", \"n1\", \"n2\"]', '{-(1 << 2100)}', 'd')",
    f"INSERT INTO secagg_biprimes VALUES ('sk', '{(1 << 2047) + 9}', 2048, NULL, 'd')",
    "INSERT INTO secagg_tau_claims VALUES ('sk', 4, 'd')",
]


def _write_v1(path: Path, extra: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = _raw(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")  # as version 1 left its files
        conn.executescript(f"BEGIN; {V1_SCHEMA} {extra}; COMMIT;")
        for row in V1_ROWS:
            conn.execute(row)
        conn.execute("PRAGMA user_version = 1")
    finally:
        conn.close()


def _schema(path: Path) -> list[tuple[str, str, str]]:
    conn = _raw(path)
    try:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
    finally:
        conn.close()
    return sorted((kind, name, " ".join(sql.split())) for kind, name, sql in rows)


def _counts(path: Path) -> dict[str, int]:
    conn = _raw(path)
    try:
        tables = [
            "datasets",
            "training_plans",
            "node_states",
            "node_state_blobs",
            "secagg_server_keys",
            "secagg_biprimes",
            "secagg_tau_claims",
        ]
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}
    finally:
        conn.close()


def test_a_version_1_file_upgrades_in_place_and_keeps_its_rows(path: Path, tmp_path: Path) -> None:
    _write_v1(path)
    before = _counts(path)
    assert SCHEMA_VERSION >= 2
    database = Database(path)
    try:
        assert database.schema_version == SCHEMA_VERSION
        assert _counts(path) == before == dict.fromkeys(before, 1)
        record = SqliteDatasetRegistry(database).get("ds").unwrap()
        assert record is not None and (record.name, record.shape) == ("mnist", (10, 3))
        keys = SqliteSecaggKeys(database)
        assert keys.server_key("sk", "job") == Success(
            ServerKeyShare(secagg_id="sk", job_id="job", parties=("r", "n1", "n2"), key=-(1 << 2100))
        )
        assert keys.biprime("sk") == Success(Biprime(secagg_id="sk", biprime=(1 << 2047) + 9))
        assert isinstance(keys.claim_tau("sk", 4), Failure)  # a round used under version 1 stays used
        keys.add_dh_context(_ctx())
        keys.add_channel_key("NODE_b", _pem())
        assert keys.dh_context("secagg_1", "exp-1") == Success(_ctx())
    finally:
        database.close()
    fresh = tmp_path / "fresh.sqlite"
    Database(fresh).close()
    assert _schema(path) == _schema(fresh)
    again = Database(path)  # a second open finds the current version and migrates nothing
    try:
        assert again.schema_version == SCHEMA_VERSION
        assert SqliteSecaggKeys(again).dh_context("secagg_1", "exp-1") == Success(_ctx())
    finally:
        again.close()


def test_a_failed_upgrade_leaves_the_version_1_file_as_it_was(path: Path) -> None:
    # A table of the same name (made by hand) makes migration 2 fail half way: all of it rolls back.
    _write_v1(path, extra="CREATE TABLE overlay_channels (x)")
    with pytest.raises(NodeAdminError, match="cannot be used"):
        Database(path)
    conn = _raw(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "secagg_dh_contexts" not in names
    finally:
        conn.close()
    assert _counts(path) == dict.fromkeys(_counts(path), 1)


# --- the file stays private -----------------------------------------------------------------------


@posix_only
def test_a_new_database_and_its_journal_are_readable_by_their_owner_only(db: Database, path: Path) -> None:
    SqliteSecaggKeys(db).add_dh_context(_ctx())
    journal = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in journal if p.exists()}
    assert path.name in modes
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes


@posix_only
def test_an_existing_database_open_to_others_is_made_private(path: Path) -> None:
    _write_v1(path)
    path.chmod(0o644)
    Database(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- DH (LOM) contexts ------------------------------------------------------------------------------

ids = st.text(min_size=1, max_size=24).filter(is_printable)


@st.composite
def dh_contexts(draw: st.DrawFn) -> DhContext:
    parties = draw(st.lists(ids, min_size=2, max_size=6, unique=True))
    me = draw(st.sampled_from(parties))
    others = [p for p in parties if p != me]
    peers = draw(st.lists(st.sampled_from(others), min_size=1, unique=True))
    secrets = {p: draw(st.binary(min_size=DH_SECRET_BYTES, max_size=DH_SECRET_BYTES)) for p in peers}
    return DhContext(secagg_id=draw(ids), job_id=draw(ids), parties=tuple(parties), pairwise=secrets)


@per_test_db
@given(ctx=dh_contexts())
def test_dh_context_roundtrip(db: Database, ctx: DhContext) -> None:
    keys = SqliteSecaggKeys(db)
    keys.add_dh_context(ctx)
    back = keys.dh_context(ctx.secagg_id, ctx.job_id).unwrap()
    assert back == ctx
    assert back is not None and dict(back.pairwise) == dict(ctx.pairwise)


def test_dh_context_survives_a_restart_and_absent_is_none(path: Path) -> None:
    first = Database(path)
    SqliteSecaggKeys(first).add_dh_context(_ctx())
    first.close()
    second = Database(path)
    try:
        keys = SqliteSecaggKeys(second)
        assert keys.dh_context("secagg_1", "exp-1") == Success(_ctx())
        assert keys.dh_context("secagg_2", "exp-1") == Success(None)
    finally:
        second.close()


def test_dh_context_of_another_job_is_refused(db: Database, path: Path) -> None:
    keys = SqliteSecaggKeys(db)
    keys.add_dh_context(_ctx(job_id="exp-1"))
    error = _assert_store_failure(keys.dh_context("secagg_1", "exp-2"), path)
    assert not error.retryable
    assert "exp-1" in error.detail


def test_replacing_a_dh_context_keeps_its_claimed_rounds(db: Database) -> None:
    keys = SqliteSecaggKeys(db)
    keys.add_dh_context(_ctx(seed=1))
    assert keys.claim_tau("secagg_1", 1) == Success(None)
    keys.add_dh_context(_ctx(seed=7))  # the researcher set the same id up again
    assert keys.dh_context("secagg_1", "exp-1") == Success(_ctx(seed=7))
    assert isinstance(keys.claim_tau("secagg_1", 1), Failure)
    assert keys.claimed_rounds("secagg_1") == (1,)
    assert keys.claim_tau("secagg_1", 2) == Success(None)


def test_removing_a_dh_context_says_whether_there_was_one_and_keeps_claims(db: Database) -> None:
    keys = SqliteSecaggKeys(db)
    keys.add_dh_context(_ctx())
    keys.add_dh_context(_ctx(secagg_id="secagg_2"))
    keys.claim_tau("secagg_1", 3)
    assert keys.remove_dh_context("secagg_1") is True
    assert keys.remove_dh_context("secagg_1") is False
    assert keys.dh_context("secagg_1", "exp-1") == Success(None)
    assert keys.dh_context("secagg_2", "exp-1") == Success(_ctx(secagg_id="secagg_2"))
    assert keys.claimed_rounds("secagg_1") == (3,)


bad_chars = st.sampled_from(["\n", "\r", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\u202e", "\ud800"])
bad_ids = st.builds(lambda a, c, b: a + c + b, st.text(max_size=5), bad_chars, st.text(max_size=5)) | st.just(
    ""
)


@st.composite
def bad_dh_contexts(draw: st.DrawFn) -> DhContext:
    ctx = draw(dh_contexts())
    peer = ctx.peers[0]
    others = {p: s for p, s in ctx.pairwise.items() if p != peer}
    match draw(st.sampled_from(["short", "long", "not bytes", "stranger", "secagg", "job", "party", "all"])):
        case "short" | "long" as kind:
            size = draw(st.integers(0, 31) if kind == "short" else st.integers(33, 80))
            pairwise: dict[str, object] = {**others, peer: bytes(size)}
        case "not bytes":
            pairwise = {**others, peer: draw(st.sampled_from([bytearray(32), "ab" * 16, 7, None]))}
        case "stranger":
            stranger = draw(ids.filter(lambda p: p not in ctx.parties))
            pairwise = {**ctx.pairwise, stranger: bytes(32)}
        case "secagg":
            return DhContext(
                secagg_id=draw(bad_ids), job_id=ctx.job_id, parties=ctx.parties, pairwise=ctx.pairwise
            )
        case "job":
            return DhContext(
                secagg_id=ctx.secagg_id, job_id=draw(bad_ids), parties=ctx.parties, pairwise=ctx.pairwise
            )
        case "party":
            return DhContext(
                secagg_id=ctx.secagg_id,
                job_id=ctx.job_id,
                parties=(*ctx.parties, draw(bad_ids)),
                pairwise=ctx.pairwise,
            )
        case _:  # a secret for every party, this node's own included
            pairwise = {p: bytes(32) for p in ctx.parties}
    return DhContext(secagg_id=ctx.secagg_id, job_id=ctx.job_id, parties=ctx.parties, pairwise=pairwise)  # type: ignore[arg-type]


@per_test_db
@given(ctx=bad_dh_contexts())
def test_bad_dh_contexts_are_refused_with_one_line(db: Database, ctx: DhContext) -> None:
    keys = SqliteSecaggKeys(db)
    with pytest.raises(NodeAdminError) as caught:
        keys.add_dh_context(ctx)
    _one_line(caught.value)
    with db.transaction(write=False) as conn:
        assert conn.execute("SELECT COUNT(*) FROM secagg_dh_contexts").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("column", "garbage"),
    [
        ("secrets", "{not json"),
        ("secrets", "[]"),
        ("secrets", '{"NODE_b": "zz"}'),
        ("secrets", '{"NODE_b": "0011"}'),
        ("secrets", '{"NODE_b": 5}'),
        ("secrets", '{"stranger": "' + "00" * 32 + '"}'),
        ("secrets", "{}"),
        ("secrets", b"\xff\xfe"),
        ("secrets", "[" * 100_000),
        ("secrets", 12),
        ("parties", '"NODE_a"'),
        ("parties", '["NODE_a", 3]'),
        ("parties", '["NODE_b", "NODE_c"]'),
        ("parties", '["NODE_a", "NODE_b\\u0000", "NODE_c"]'),
    ],
)
def test_a_corrupted_dh_row_reads_as_a_failure(
    db: Database, path: Path, column: str, garbage: object
) -> None:
    SqliteSecaggKeys(db).add_dh_context(_ctx())
    conn = _raw(path)
    try:
        conn.execute(f"UPDATE secagg_dh_contexts SET {column} = ?", (garbage,))
    finally:
        conn.close()
    result = SqliteSecaggKeys(db).dh_context("secagg_1", "exp-1")
    assert not _assert_store_failure(result, path).retryable


def test_a_closed_database_makes_dh_reads_fail_not_raise(db: Database, path: Path) -> None:
    db.close()
    assert _assert_store_failure(SqliteSecaggKeys(db).dh_context("secagg_1", "exp-1"), path).retryable


# --- overlay channel keys ----------------------------------------------------------------------------


def test_channel_keys_roundtrip_replace_and_survive_a_restart(path: Path) -> None:
    pems = {"NODE_b": _pem(), "NODE_c": _pem()}
    first = Database(path)
    keys = SqliteSecaggKeys(first)
    assert keys.channel_keys() == {}
    for peer, pem in pems.items():
        keys.add_channel_key(peer, pem)
    assert keys.channel_keys() == pems
    pems["NODE_b"] = _pem()
    keys.add_channel_key("NODE_b", pems["NODE_b"])
    first.close()
    second = Database(path)
    try:
        back = SqliteSecaggKeys(second).channel_keys()
        assert back == pems
        loaded = serialization.load_pem_private_key(back["NODE_b"], password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey) and loaded.curve.name == "secp256r1"
    finally:
        second.close()


def _public_pem() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _long_pem() -> bytes:
    line = b"A" * 64 + b"\n"
    return (
        b"-----BEGIN PRIVATE KEY-----\nMII"
        + line * (MAX_CHANNEL_KEY_BYTES // 65)
        + b"-----END PRIVATE KEY-----\n"
    )


@pytest.mark.parametrize(
    ("peer", "pem", "message"),
    [
        ("NODE_b", b"not a key at all", "PEM"),
        ("NODE_b", _public_pem(), "PEM"),
        ("NODE_b", b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n", "PEM"),
        ("NODE_b", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "PKCS8"),
        ("NODE_b", _long_pem(), "at most"),
        ("NODE_b", "-----BEGIN PRIVATE KEY-----", "bytes"),
        ("NODE\nb", None, "control"),
        ("", None, "empty"),
    ],
    ids=["garbage", "public key", "bad base64", "not DER", "over-long", "str", "bad peer", "empty peer"],
)
def test_bad_channel_keys_are_refused(db: Database, peer: str, pem: bytes | None, message: str) -> None:
    keys = SqliteSecaggKeys(db)
    with pytest.raises(NodeAdminError, match=message) as caught:
        keys.add_channel_key(peer, _pem() if pem is None else pem)
    _one_line(caught.value)
    assert keys.channel_keys() == {}


@per_test_db
@given(blob=st.binary(max_size=600))
def test_random_bytes_are_not_a_channel_key(db: Database, blob: bytes) -> None:
    with pytest.raises(NodeAdminError) as caught:
        SqliteSecaggKeys(db).add_channel_key("NODE_b", blob)
    _one_line(caught.value)


def test_a_corrupted_channel_key_is_an_owner_error(db: Database, path: Path) -> None:
    keys = SqliteSecaggKeys(db)
    keys.add_channel_key("NODE_b", _pem())
    conn = _raw(path)
    try:
        conn.execute("UPDATE overlay_channels SET key_pem = 'garbage'")
    finally:
        conn.close()
    with pytest.raises(NodeAdminError, match="NODE_b") as caught:
        keys.channel_keys()
    _one_line(caught.value)


# --- Joye-Libert: key share and biprime together --------------------------------------------------

SHARE = ServerKeyShare(
    secagg_id="secagg_jl", job_id="exp-1", parties=("researcher", "NODE_a", "NODE_b"), key=1 << 2039
)
BIPRIME = Biprime(secagg_id="secagg_jl", biprime=(1 << 2047) + 9, max_keysize=2048)


def test_put_server_key_stores_share_and_biprime_and_replaces_both(db: Database) -> None:
    keys = SqliteSecaggKeys(db)
    keys.put_server_key(SHARE, BIPRIME)
    assert keys.server_key("secagg_jl", "exp-1") == Success(SHARE)
    assert keys.biprime("secagg_jl") == Success(BIPRIME)
    assert keys.claim_tau("secagg_jl", 1) == Success(None)
    share = ServerKeyShare(secagg_id="secagg_jl", job_id="exp-1", parties=SHARE.parties, key=-5)
    biprime = Biprime(secagg_id="secagg_jl", biprime=(1 << 1023) + 3, max_keysize=1024)
    keys.put_server_key(share, biprime)
    assert keys.server_key("secagg_jl", "exp-1") == Success(share)
    assert keys.biprime("secagg_jl") == Success(biprime)
    assert isinstance(keys.claim_tau("secagg_jl", 1), Failure)  # tau reuse stays refused


def test_put_server_key_is_one_transaction(db: Database, path: Path) -> None:
    keys = SqliteSecaggKeys(db)
    conn = _raw(path)
    try:  # the biprime insert fails inside SQLite, after the share insert succeeded
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON secagg_biprimes BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
    finally:
        conn.close()
    with pytest.raises(NodeAdminError, match="cannot store") as caught:
        keys.put_server_key(SHARE, BIPRIME)
    _one_line(caught.value)
    assert keys.server_key("secagg_jl", "exp-1") == Success(None)
    assert keys.biprime("secagg_jl") == Success(None)


@pytest.mark.parametrize(
    ("share", "biprime", "message"),
    [
        (SHARE, Biprime(secagg_id="other", biprime=BIPRIME.biprime), "not stored under the id"),
        (SHARE, Biprime(secagg_id="secagg_jl", biprime=1), "> 1"),
        (ServerKeyShare(secagg_id="secagg_jl", job_id="exp-1", parties=("r",), key=1), BIPRIME, "parties"),
        (
            ServerKeyShare(secagg_id="secagg\njl", job_id="exp-1", parties=SHARE.parties, key=1),
            BIPRIME,
            "control",
        ),
        (ServerKeyShare(secagg_id="secagg_jl", job_id="", parties=SHARE.parties, key=1), BIPRIME, "empty"),
    ],
)
def test_bad_server_key_pairs_are_refused(
    db: Database, share: ServerKeyShare, biprime: Biprime, message: str
) -> None:
    keys = SqliteSecaggKeys(db)
    with pytest.raises(NodeAdminError, match=message) as caught:
        keys.put_server_key(share, biprime)
    _one_line(caught.value)
    assert keys.biprime("secagg_jl") == Success(None)
