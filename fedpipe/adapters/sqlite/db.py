"""The node's SQLite database: one file, WAL, foreign keys, a versioned schema and one guarded connection.

All four stores of a node share one ``Database``. It holds a single connection, opened in
autocommit mode so that every write runs in an explicit ``BEGIN IMMEDIATE`` transaction, and
serialises access with a lock, so adapters may be called from several threads. Nodes are
single-process, but the file is safe to open from several processes too (WAL + busy timeout),
except a scratch one (``durable=False``), which one connection holds at a time.

Errors: port methods translate ``sqlite3``, ``OSError`` and JSON errors into ``RoundError``;
owner operations (adding datasets, approving plans, storing keys) raise ``NodeAdminError`` with
a sentence meant for the node owner, because they are called by the owner's tools and CLI, not
by a round that must always reply.
"""

import contextlib
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from fedpipe.errors import ErrorCode, RoundError

__all__ = ["SCHEMA_VERSION", "Database", "NodeAdminError", "now_iso", "store_error"]

SCHEMA_VERSION: Final = 3

STORE_ERRORS: Final = (sqlite3.Error, OSError, ValueError)
"""What the stores translate at the edge: SQLite and file errors, and ``ValueError`` for stored data
that does not decode (``json.JSONDecodeError``, ``UnicodeDecodeError``, an unknown enum value)."""

_MIGRATIONS: Final[dict[int, str]] = {
    1: """
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
    """,
    # 2: the results of the Fed-BioMed secure-aggregation set-ups, kept across restarts: the LOM
    # pairwise secrets of a context, and this node's private key for the overlay channel to each peer.
    2: """
    CREATE TABLE secagg_dh_contexts (
        secagg_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        parties TEXT NOT NULL,
        secrets TEXT NOT NULL,
        date_added TEXT NOT NULL
    );
    CREATE TABLE overlay_channels (
        peer_id TEXT PRIMARY KEY,
        key_pem TEXT NOT NULL,
        date_added TEXT NOT NULL
    );
    """,
    # 3: the LOM key agreement of fedpipe's own federations: the identity keys of peer nodes that
    # this node's owner pinned (public PEM), against which each peer's signed offer is checked; and
    # the ephemeral key and signed offer of an agreement not yet complete, so that a retried round
    # (or a restarted node) offers the same key again instead of one its peers have not seen.
    3: """
    CREATE TABLE pinned_peers (
        node_id TEXT PRIMARY KEY,
        public_pem TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        date_added TEXT NOT NULL
    );
    CREATE TABLE lom_pending_offers (
        secagg_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        parties TEXT NOT NULL,
        ephemeral_key TEXT NOT NULL,
        offer TEXT NOT NULL,
        date_added TEXT NOT NULL
    );
    """,
}


class NodeAdminError(Exception):
    """An owner operation was refused (duplicate, unknown id, unreadable database ...); says why."""


def now_iso() -> str:
    """The current UTC time as an ISO-8601 string (for date columns)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def store_error(code: ErrorCode, detail: str, public: str = "", *, retryable: bool = False) -> RoundError:
    """A port failure; ``step`` is left empty so the NamedStep that called the port fills it in."""
    return RoundError(code=code, step="", detail=detail, public=public, retryable=retryable)


def _make_private(path: Path) -> None:
    """Create ``path`` readable by its owner only, or take group and other access off an existing one.

    The file holds secret key material. SQLite gives its journals (``-wal``, ``-shm``, ``-journal``)
    the mode of the database file, so a private database keeps its journals private too: a file
    already private needs no further look. An empty file is a valid, empty SQLite database. A file
    owned by another user is left as it is: the owner chose its mode.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)
        return
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        info = path.stat()
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o077:
            return
    siblings = (path.name + "-wal", path.name + "-shm", path.name + "-journal")
    for file in (path, *(path.with_name(name) for name in siblings)):
        with contextlib.suppress(FileNotFoundError):
            info = file.stat()
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and info.st_mode & 0o077:
                file.chmod(info.st_mode & 0o700)


class Database:
    """One node database file, one connection, one lock; ``transaction()`` for every access."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0, durable: bool = True) -> None:
        """Open (creating if needed) the database at ``path`` and bring its schema up to date.

        The file is created with mode 0600, and an existing one of this user loses group and other
        access, because it holds secure-aggregation keys. ``durable`` (the default) syncs every
        commit to the disk, in WAL mode so that a node's agent and its owner's tools share the
        file; ``durable=False`` leaves the syncs to the operating system and holds the file
        exclusively while open (a second opener waits ``busy_timeout_s``, then fails), with a
        persistent rollback journal: a crash of the process still loses nothing, a power cut
        may lose the last commits. Only for node roots that are scratch and opened by one task
        at a time (a simulation's virtual nodes), where syncs and WAL files would cost most of a
        round.

        Raises ``NodeAdminError`` when the file cannot be opened, is not a database, or was
        written by a newer schema version.
        """
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _make_private(self.path)
            conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except STORE_ERRORS as err:
            raise NodeAdminError(f"cannot open the node database {self.path}: {err}") from err
        self._conn: sqlite3.Connection | None = conn
        try:
            if not durable:
                # one connection at a time (a virtual node's task): the lock is held from the first
                # access to the close, and the rollback journal stays in place between
                # transactions; a killed process still leaves a hot journal that the next open
                # rolls back. WAL's index and log files, made and removed at each open and close,
                # cost more than the rest of a small round's database work.
                conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            wanted = "wal" if durable else "persist"
            mode = conn.execute(f"PRAGMA journal_mode = {wanted.upper()}").fetchone()[0]
            if str(mode).lower() != wanted:
                raise NodeAdminError(f"the node database {self.path} cannot use {wanted.upper()} (mode {mode})")
            conn.execute("PRAGMA foreign_keys = ON")
            # FULL: a claimed secagg round or a saved state must survive a power cut, not only a crash.
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'OFF'}")
            # Large state blobs pass through the journal; truncate it after checkpoints (WAL) or
            # transactions (a scratch file's persistent journal, kept small: one per virtual node).
            limit = 64 * 1024 * 1024 if durable else 1024 * 1024
            conn.execute(f"PRAGMA journal_size_limit = {limit}")
            self._migrate(conn)
        except BaseException as err:
            conn.close()
            self._conn = None
            if isinstance(err, sqlite3.Error):
                raise NodeAdminError(f"the node database {self.path} cannot be used: {err}") from err
            raise

    def _migrate(self, conn: sqlite3.Connection) -> None:
        # an up-to-date file (every open but the first) needs no write lock: one read says so
        if int(conn.execute("PRAGMA user_version").fetchone()[0]) == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise NodeAdminError(
                    f"the node database {self.path} has schema version {version}, newer than this "
                    f"fedpipe's {SCHEMA_VERSION}: upgrade fedpipe"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise

    @property
    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        with self.transaction(write=False) as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    @contextlib.contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """Hold the lock and run the block in one transaction: committed on exit, rolled back on error.

        Write transactions start with ``BEGIN IMMEDIATE`` so that they take the write lock up
        front (no upgrade deadlock between processes).
        """
        with self._lock:
            conn = self._conn
            if conn is None:
                raise sqlite3.ProgrammingError("the node database is closed")
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite may already have rolled back (disk full ...)
                    conn.rollback()
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._conn is None
