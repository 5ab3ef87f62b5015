"""The server's SQLite file ``<root>/board.sqlite``: credentials and the task board, in WAL mode.

One schema for both, so that a token store opened by another process (``fedpipe tokens issue``)
and the running server share the file safely: WAL lets readers run beside the one writer, and
``busy_timeout`` makes a writer wait for the other instead of failing. ``synchronous=FULL`` makes
every committed statement durable, so a server killed with SIGKILL (or a power cut) loses nothing
it has answered for.
"""

import sqlite3
from pathlib import Path

__all__ = ["BOARD_FILE", "connect"]

BOARD_FILE = "board.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    subject TEXT NOT NULL,
    secret_sha256 BLOB NOT NULL,
    created REAL NOT NULL,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL UNIQUE,
    node_id TEXT NOT NULL,
    researcher TEXT NOT NULL,
    job_id TEXT,
    request TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    lease_id TEXT,
    lease_expires REAL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    reply TEXT,
    replied_at REAL,
    nbytes INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks (node_id, state, priority, seq);
CREATE INDEX IF NOT EXISTS tasks_lease ON tasks (state, lease_expires);
CREATE INDEX IF NOT EXISTS tasks_replied ON tasks (replied_at);
CREATE INDEX IF NOT EXISTS tasks_owner ON tasks (researcher, job_id);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    last_poll REAL NOT NULL
);
"""


def connect(root: Path) -> sqlite3.Connection:
    """Open (creating the directory, file and tables if needed) ``<root>/board.sqlite``.

    The connection is in autocommit mode (``isolation_level=None``): callers group statements
    with explicit ``BEGIN IMMEDIATE`` / ``COMMIT`` where they must be atomic. It may be used from
    any thread, one at a time (callers hold a lock).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(root / BOARD_FILE, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(_SCHEMA)
    return conn
