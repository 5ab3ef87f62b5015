"""The composition root: wires NodeSettings to the real adapters and runs rounds (the only module that does).

>>> import tempfile
>>> from fedpipe.testing import InMemoryFileExchange
>>> with tempfile.TemporaryDirectory() as root:
...     with Node.open(NodeSettings(node_id="n1", root=root), exchange=InMemoryFileExchange()) as node:
...         node.datasets.list()
()
"""

import shutil
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from returns.result import Failure, Result

from fedpipe.adapters.plan_loader import ModulePlanLoader
from fedpipe.adapters.sqlite import (
    Database,
    NodeAdminError,
    SqliteApprovalRegistry,
    SqliteDatasetRegistry,
    SqliteSecaggKeys,
    SqliteStateStore,
)
from fedpipe.approval import DEFAULT_ALGORITHM, HashAlgorithm
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import (
    Biprime,
    Clock,
    FileExchange,
    MetricEvent,
    Monitor,
    Ports,
    SecaggCrypter,
    ServerKeyShare,
)
from fedpipe.reply import TrainReply
from fedpipe.request import TrainRequest
from fedpipe.runner import RoundRun, execute_round
from fedpipe.settings import NodeSettings

__all__ = ["Node", "NodeAdminError", "NullMonitor", "SystemClock", "UnconfiguredCrypter"]


class SystemClock:
    """The process's clocks (``time.perf_counter`` and ``time.process_time``)."""

    def perf_counter(self) -> float:
        """Wall-clock seconds from an arbitrary origin."""
        return time.perf_counter()

    def process_time(self) -> float:
        """CPU seconds of this process."""
        return time.process_time()


class NullMonitor:
    """A monitor that drops every event (no researcher to forward scalars to)."""

    def report(self, event: MetricEvent) -> None:
        """Drop ``event``."""


class UnconfiguredCrypter:
    """Stands in until a secure-aggregation crypter is configured: every encryption fails clearly."""

    def encrypt(
        self,
        values: list[float],
        *,
        key: ServerKeyShare,
        biprime: Biprime,
        round_number: int,
        weight: int,
        clipping_range: float | None,
    ) -> Result[list[int], RoundError]:
        """Always ENCRYPTION_FAILED."""
        return Failure(
            RoundError(
                code=ErrorCode.ENCRYPTION_FAILED,
                step="",
                detail="secure aggregation crypter not configured",
                public="Secure aggregation crypter not configured on this node.",
            )
        )


class Node:
    """A node: its settings, its stores (owner APIs) and ``run_round`` over the real adapters.

    ``datasets``, ``approvals``, ``states`` and ``secagg_keys`` are the SQLite stores; their
    owner operations raise ``NodeAdminError``. ``ports`` is the bundle the rounds run on. Open
    with ``Node.open(settings, exchange=...)`` and close (or use as a context manager) when done.
    """

    def __init__(
        self,
        settings: NodeSettings,
        db: Database,
        *,
        exchange: FileExchange,
        monitor: Monitor,
        crypter: SecaggCrypter,
        clock: Clock,
        algorithm: HashAlgorithm,
    ) -> None:
        """Wire the stores over ``db`` and the given adapters (use ``Node.open``)."""
        self.settings = settings
        self._db = db
        self.datasets = SqliteDatasetRegistry(db)
        self.approvals = SqliteApprovalRegistry(db, algorithm=algorithm)
        self.states = SqliteStateStore(db, keep_per_job=settings.keep_states_per_job)
        self.secagg_keys = SqliteSecaggKeys(db)
        self.ports = Ports(
            exchange=exchange,
            approvals=self.approvals,
            datasets=self.datasets,
            states=self.states,
            plans=ModulePlanLoader(),
            monitor=monitor,
            clock=clock,
            secagg_keys=self.secagg_keys,
            crypter=crypter,
            new_id=lambda: uuid.uuid4().hex,
        )

    @classmethod
    def open(
        cls,
        settings: NodeSettings,
        *,
        exchange: FileExchange,
        monitor: Monitor | None = None,
        crypter: SecaggCrypter | None = None,
        clock: Clock | None = None,
        algorithm: HashAlgorithm = DEFAULT_ALGORITHM,
    ) -> "Node":
        """Open (creating if needed) the node's root directory and database and wire the adapters.

        ``monitor`` defaults to dropping scalars, ``crypter`` to one that refuses to encrypt,
        ``clock`` to the system clock; ``algorithm`` hashes newly registered plans. Raises
        ``NodeAdminError`` when the root or the database cannot be used.
        """
        try:
            settings.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise NodeAdminError(f"cannot create the node root {settings.root}: {err}") from err
        db = Database(settings.db_path)
        return cls(
            settings,
            db,
            exchange=exchange,
            monitor=monitor or NullMonitor(),
            crypter=crypter or UnconfiguredCrypter(),
            clock=clock or SystemClock(),
            algorithm=algorithm,
        )

    def execute_round(self, request: Mapping[str, Any] | TrainRequest) -> RoundRun:
        """Run the standard (or, for ``training: false``, validation) round; reply, result and timings."""
        if self._db.closed:
            raise NodeAdminError("the node is closed")
        return execute_round(request, self.ports, self.settings)

    def run_round(self, request: Mapping[str, Any] | TrainRequest) -> TrainReply:
        """Run one round for ``request`` and return its reply (never raises for a bad request)."""
        return self.execute_round(request).reply

    def clean_workspaces(self) -> int:
        """Remove round workspaces a killed node left in ``settings.tmp_dir``; return how many.

        Rounds remove their own workspace whatever happens; only a process killed mid-round
        leaves one. Call it when no round is running on this node root (at start-up).
        """
        removed = 0
        for workdir in sorted(self.settings.tmp_dir.glob("round_*")):
            if workdir.is_dir():
                shutil.rmtree(workdir, ignore_errors=True)
                removed += not workdir.exists()
        return removed

    def close(self) -> None:
        """Close the database (idempotent)."""
        self._db.close()

    def __enter__(self) -> "Node":
        """Use as a context manager: closes on exit."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the node."""
        self.close()
