"""SQLite stores of a node: datasets, plan approvals, node state and secagg keys in one database file.

>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as d:
...     db = Database(pathlib.Path(d) / "node.sqlite")
...     SqliteDatasetRegistry(db).get("nope").unwrap() is None
...     db.close()
True
"""

from fedpipe.adapters.sqlite.approvals import PlanRecord, SqliteApprovalRegistry
from fedpipe.adapters.sqlite.datasets import SqliteDatasetRegistry
from fedpipe.adapters.sqlite.db import SCHEMA_VERSION, Database, NodeAdminError
from fedpipe.adapters.sqlite.secagg import SqliteSecaggKeys
from fedpipe.adapters.sqlite.states import STATE_FORMAT_MAJOR, SqliteStateStore, StateSummary

__all__ = [
    "SCHEMA_VERSION",
    "STATE_FORMAT_MAJOR",
    "Database",
    "NodeAdminError",
    "PlanRecord",
    "SqliteApprovalRegistry",
    "SqliteDatasetRegistry",
    "SqliteSecaggKeys",
    "SqliteStateStore",
    "StateSummary",
]
