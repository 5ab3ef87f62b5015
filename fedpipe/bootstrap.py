"""The composition root: wires NodeSettings to the real adapters and runs rounds (the only module that does).

>>> import tempfile
>>> from fedpipe.testing import InMemoryFileExchange
>>> with tempfile.TemporaryDirectory() as root:
...     with Node.open(NodeSettings(node_id="n1", root=root), exchange=InMemoryFileExchange()) as node:
...         node.datasets.list()
()
"""

import json
import logging
import os
import shutil
import signal
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from attrs import evolve
from returns.result import Failure, Result

from fedpipe.adapters.clock import SystemClock
from fedpipe.adapters.identity_key import FileIdentityKey
from fedpipe.adapters.plan_loader import ModulePlanLoader
from fedpipe.adapters.sqlite import (
    Database,
    NodeAdminError,
    SqliteApprovalRegistry,
    SqliteDatasetRegistry,
    SqliteSecaggKeys,
    SqliteStateStore,
)
from fedpipe.adapters.sqlite.peers import SqliteLomKeys, SqlitePinnedPeers
from fedpipe.approval import DEFAULT_ALGORITHM, HashAlgorithm
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import (
    Biprime,
    Clock,
    FileExchange,
    LomPorts,
    MetricEvent,
    Monitor,
    Ports,
    SecaggCrypter,
    SecaggRelay,
    ServerKeyShare,
)
from fedpipe.reply import TrainReply, header_of, to_reply
from fedpipe.request import TrainRequest
from fedpipe.runner import RoundRun, execute_round
from fedpipe.settings import GpuPolicy, NodeSettings

if TYPE_CHECKING:
    from fedpipe.adapters.task_client import HttpTaskClient, ReplyOutcome, Task

__all__ = [
    "Node",
    "NodeAdminError",
    "NullMonitor",
    "OfflineExchange",
    "SystemClock",
    "UnconfiguredCrypter",
    "load_or_create_settings",
    "open_owner",
    "run_node_agent",
    "save_settings",
]


class NullMonitor:
    """A monitor that drops every event (no researcher to forward scalars to)."""

    def report(self, event: MetricEvent) -> None:
        """Drop ``event``."""


class UnconfiguredCrypter:
    """Stands in until a secure-aggregation crypter is configured: every encryption fails clearly."""

    def start_masks(
        self, *, key: ServerKeyShare, biprime: Biprime, round_number: int, n_values: int | None
    ) -> None:
        """Nothing to precompute."""

    def encrypt(
        self,
        values: Sequence[float],
        *,
        key: ServerKeyShare,
        biprime: Biprime,
        round_number: int,
        weight: int,
        clipping_range: float | None,
        first_index: int = 0,
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

    ``datasets``, ``approvals``, ``states``, ``secagg_keys`` and ``peers`` (the peer identity keys
    the owner pinned) are the SQLite stores; their owner operations raise ``NodeAdminError``.
    ``identity`` is the node's identity key (``<root>/identity.pem``, made on first use). ``ports`` is the bundle the rounds run on. Open
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
        relay: SecaggRelay | None = None,
        agreement_seconds: float = 60.0,
    ) -> None:
        """Wire the stores over ``db`` and the given adapters (use ``Node.open``)."""
        self.settings = settings
        self._db = db
        self.datasets = SqliteDatasetRegistry(db)
        self.approvals = SqliteApprovalRegistry(db, algorithm=algorithm)
        self.states = SqliteStateStore(db, keep_per_job=settings.keep_states_per_job)
        self.secagg_keys = SqliteSecaggKeys(db)
        # the owner's pinned peer keys and this node's identity key (its file is made on first use)
        self.peers = SqlitePinnedPeers(db)
        self.identity = FileIdentityKey.of_root(settings.root)
        lom = (
            None
            if relay is None
            else LomPorts(
                relay=relay,
                keys=SqliteLomKeys(self.peers, self.secagg_keys, db),
                identity=self.identity,
                agreement_seconds=agreement_seconds,
            )
        )
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
            lom=lom,
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
        relay: SecaggRelay | None = None,
        agreement_seconds: float = 60.0,
    ) -> "Node":
        """Open (creating if needed) the node's root directory and database and wire the adapters.

        ``monitor`` defaults to dropping scalars, ``crypter`` to one that refuses to encrypt,
        ``clock`` to the system clock; ``algorithm`` hashes newly registered plans. ``relay``
        (the server's key relay) lets the node agree LOM contexts with its pinned peers, waiting
        at most ``agreement_seconds`` for their offers; without one LOM rounds are refused.
        Raises ``NodeAdminError`` when the root or the database cannot be used.
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
            crypter=crypter or _default_crypter(),
            clock=clock or SystemClock(),
            algorithm=algorithm,
            relay=relay,
            agreement_seconds=agreement_seconds,
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
        """Close the database and stop the crypter's mask workers (idempotent)."""
        stop = getattr(self.ports.crypter, "close", None)
        if callable(stop):
            stop()
        self._db.close()

    def __enter__(self) -> "Node":
        """Use as a context manager: closes on exit."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the node."""
        self.close()


# --- node processes: settings on disk, the owner's access, the pulling agent -----------------------

SETTINGS_FILE = "settings.json"


def save_settings(settings: NodeSettings) -> Path:
    """Write ``settings`` as JSON in its root (the node owner edits this file)."""
    settings.root.mkdir(parents=True, exist_ok=True)
    data = {
        "node_id": settings.node_id,
        "training_plan_approval": settings.training_plan_approval,
        "secure_aggregation": settings.secure_aggregation,
        "force_secure_aggregation": settings.force_secure_aggregation,
        "gpu": {"gpu": settings.gpu.gpu, "gpu_num": settings.gpu.gpu_num, "gpu_only": settings.gpu.gpu_only},
        "max_download_bytes": settings.max_download_bytes,
        "keep_states_per_job": settings.keep_states_per_job,
        "allowed_origins": list(settings.allowed_origins),
        "max_loader_workers": settings.max_loader_workers,
        "max_batch_size": settings.max_batch_size,
        "max_epochs": settings.max_epochs,
        "max_updates": settings.max_updates,
        "max_round_seconds": settings.max_round_seconds,
    }
    path = settings.root / SETTINGS_FILE
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_or_create_settings(
    root: Path | str, *, node_id: str | None = None, **overrides: Any
) -> NodeSettings:
    """The settings stored in ``root``; created (with ``node_id`` and ``overrides``) on first use.

    Whichever command first uses a root gives it its id: ``node_id``, or a new random one. Raises
    ``NodeAdminError`` for an unreadable file, or when ``node_id`` differs from the stored one (the
    message names the stored id, so the owner can pass it).
    """
    root = Path(root)
    path = root / SETTINGS_FILE
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            gpu = GpuPolicy(**data.pop("gpu", {}))
            settings = NodeSettings(root=root, gpu=gpu, **data)
        except (OSError, ValueError, TypeError) as err:
            raise NodeAdminError(f"cannot read the node settings {path}: {err}") from err
        if node_id is not None and node_id != settings.node_id:
            raise NodeAdminError(
                f"{root} belongs to node {settings.node_id!r}, not {node_id!r}: "
                f"pass --node-id {settings.node_id} or use another --root"
            )
        return evolve(settings, **overrides) if overrides else settings
    settings = NodeSettings(node_id=node_id or f"node-{uuid.uuid4().hex[:8]}", root=root, **overrides)
    save_settings(settings)
    return settings


class OfflineExchange:
    """A FileExchange that moves no files: for an owner session, which runs no rounds, and for
    transports whose messages carry every payload inline (a Fed-BioMed 6.x federation)."""

    def download(self, url: str, dest: Path, *, max_bytes: int) -> Result[Path, RoundError]:
        return Failure(RoundError(code=ErrorCode.DOWNLOAD_FAILED, step="", detail="owner session: offline"))

    def upload(self, path: Path) -> Result[str, RoundError]:
        return Failure(RoundError(code=ErrorCode.UPLOAD_FAILED, step="", detail="owner session: offline"))


def open_owner(root: Path | str, *, node_id: str | None = None, gpu: bool = False) -> Node:
    """Open a node's stores for its owner (datasets, plan approvals, secagg keys); no rounds run."""
    overrides: dict[str, Any] = {"gpu": GpuPolicy(gpu=True)} if gpu else {}
    settings = load_or_create_settings(root, node_id=node_id, **overrides)
    if gpu and not settings.gpu.gpu:
        settings = evolve(settings, gpu=GpuPolicy(gpu=True))
        save_settings(settings)
    return Node.open(settings, exchange=OfflineExchange())


def _default_crypter() -> SecaggCrypter:
    """The Joye-Libert crypter when the secagg extra is installed, else one that refuses to encrypt."""
    try:
        from fedpipe.secagg import JoyeLibertCrypter
    except ImportError:
        return UnconfiguredCrypter()
    return JoyeLibertCrypter()


def read_token_file(path: Path | str) -> str:
    """The bearer token stored in ``path`` (its first line); NodeAdminError when unusable."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise NodeAdminError(f"cannot read the token file {path}: {err}") from err
    if not text or any(c.isspace() or not c.isprintable() for c in text):
        raise NodeAdminError(f"the token file {path} does not hold one token")
    return text


class _LeaseKeeper:
    """Renews a task's lease from a daemon thread while the round runs (every third of the lease)."""

    def __init__(self, client: "HttpTaskClient", task: "Task", log: logging.Logger) -> None:
        self._client = client
        self._task = task
        self._log = log
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedpipe-lease", daemon=True)

    def _run(self) -> None:
        from fedpipe.adapters.task_client import TaskBoardRefused, TaskBoardUnavailable

        interval = max(self._task.lease_seconds / 3, 0.2)
        while not self._done.wait(interval):
            try:
                if self._client.renew(self._task):
                    continue
            except TaskBoardUnavailable:
                continue  # the server may come back before the lease runs out
            except TaskBoardRefused:
                pass
            # the round goes on: its reply will be refused, and the board redelivers the task
            self._log.warning("task %s: lease lost while the round runs", self._task.task_id)
            return

    def __enter__(self) -> "_LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)


def _fallback_reply(request: Any, node_id: str) -> TrainReply:
    """A failure reply that the board always accepts, for a task whose own reply it refused."""
    error = RoundError(
        code=ErrorCode.INTERNAL,
        step="(reply)",
        detail="the task board refused the round's reply",
        public="The node could not send the reply of this round.",
    )
    return to_reply(Failure(error), header_of(request if isinstance(request, Mapping) else None, node_id))


class _Backoff:
    """The agent's wait after a failure: 0.5 s doubling up to 30 s, back to 0.5 s after a success."""

    def __init__(self, stop: threading.Event, log: logging.Logger) -> None:
        self._stop = stop
        self._log = log
        self.delay = 0.5

    def reset(self) -> None:
        self.delay = 0.5

    def wait(self, err: Exception) -> None:
        self._log.warning("%s; retrying in %.1f s", err, self.delay)
        self._stop.wait(self.delay)
        self.delay = min(self.delay * 2, 30.0)


def deliver_reply(
    client: "HttpTaskClient",
    task: "Task",
    replies: Sequence[TrainReply],
    *,
    stop: threading.Event,
    backoff: _Backoff,
    log: logging.Logger,
) -> "ReplyOutcome | None":
    """Post the first of ``replies`` the board accepts (the later ones are fallbacks for a refusal).

    Waits out an unreachable board until ``stop`` is set; returns the last outcome (None when
    stopped before any answer). A lost lease is final: the board has redelivered the task.
    """
    from fedpipe.adapters.task_client import ReplyOutcome, TaskBoardUnavailable

    pending = list(replies)
    while not stop.is_set():
        try:
            outcome = client.post_reply(task, pending[0].to_dict())
        except TaskBoardUnavailable as err:
            backoff.wait(err)
            continue
        if outcome is ReplyOutcome.REFUSED and len(pending) > 1:
            log.error("task %s: the board refused the reply; sending a failure reply", task.task_id)
            pending.pop(0)
            continue
        if outcome is not ReplyOutcome.ACCEPTED:
            log.warning("task %s: reply not accepted (%s)", task.task_id, outcome.value)
        return outcome
    return None


def _check_server_url(url: str) -> None:
    """Refuse a server URL the agent could never reach (no http(s) scheme or host) at once, not by retrying."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port
    except ValueError as err:
        raise NodeAdminError(f"the server URL {url!r} is malformed: {err}") from err
    if parts.scheme not in ("http", "https") or not host:
        raise NodeAdminError(
            f"the server URL must start with http:// or https://, e.g. http://{url}, not {url!r}"
        )


def run_node_agent(
    root: Path | str,
    *,
    server_url: str,
    node_id: str | None = None,
    token: str | None = None,
    ca_file: Path | str | None = None,
    poll_wait: float = 10.0,
    stop: threading.Event | None = None,
    agreement_seconds: float = 60.0,
) -> int:
    """Serve train requests from ``server_url`` until ``stop`` is set (or SIGTERM/SIGINT): 0 on a clean stop.

    The node only makes outbound connections: it long-polls the task board with its ``token``,
    runs each round while renewing the task's lease, and posts the reply under that lease,
    backing off (up to 30 s) while the server cannot be reached. One process runs per node
    root (``NodeLocked`` for a second one). Files are exchanged only with the server's origin
    and the owner's ``allowed_origins``; ``ca_file`` verifies an HTTPS server
    signed by a private CA. A task that cannot be parsed or answered gets an error reply; one
    whose delivery kills the process is set aside by the board after a few deliveries.
    Returns 1 when the server refuses the node's credential. LOM contexts are agreed with the
    pinned peers through the server's key relay, waiting at most ``agreement_seconds``.
    A ``server_url`` that is not an http(s) URL, or a root that belongs to another ``node_id``,
    is refused with ``NodeAdminError`` before anything is created.
    """
    from fedpipe.adapters.http_exchange import HttpFileExchange, origin_of, ssl_context
    from fedpipe.adapters.lock import NodeLock
    from fedpipe.adapters.monitor import HttpMonitor
    from fedpipe.adapters.secagg_relay import HttpSecaggRelay
    from fedpipe.adapters.task_client import HttpTaskClient, TaskBoardRefused, TaskBoardUnavailable
    from fedpipe.training.warm import warm_up_in_background

    log = logging.getLogger("fedpipe.node")
    stop = stop or threading.Event()
    _check_server_url(server_url)  # before the root is made: a typo must not leave a node behind
    settings = load_or_create_settings(root, node_id=node_id)
    server = server_url.rstrip("/")
    verify = ssl_context(ca_file) if ca_file else True
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with NodeLock(settings.root):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
        try:
            exchange = HttpFileExchange(
                f"{server}/upload",
                headers=headers,
                allowed_origins=(*settings.allowed_origins, str(origin_of(server))),
                verify=verify,
            )
        except ValueError as err:  # the owner's allow-list, or the server URL, is malformed
            raise NodeAdminError(f"cannot use the file exchanges of {settings.root}: {err}") from err
        monitor = HttpMonitor(f"{server}/monitor", headers=headers, verify=verify)
        client = HttpTaskClient(server, settings.node_id, token=token, poll_wait=poll_wait, verify=verify)
        relay = HttpSecaggRelay(server, token=token, verify=verify)
        backoff = _Backoff(stop, log)

        code = 0
        fresh = True  # the first poll ends the leases a dead predecessor held
        try:
            with Node.open(
                settings,
                exchange=exchange,
                monitor=monitor,
                crypter=_default_crypter(),
                relay=relay,
                agreement_seconds=agreement_seconds,
            ) as node:
                removed = node.clean_workspaces()
                if removed:
                    log.warning("removed %d round workspace(s) left by an earlier run", removed)
                warm_up_in_background()  # torch's lazy imports, off the first round's path
                log.info("node %s pulling tasks from %s", settings.node_id, server)
                while not stop.is_set():
                    try:
                        task = client.next_task(fresh=fresh)
                    except TaskBoardUnavailable as err:
                        backoff.wait(err)
                        continue
                    fresh = False
                    backoff.reset()
                    if task is None:
                        continue
                    log.info("task %s: round started (delivery %d)", task.task_id, task.delivery)
                    fallback = _fallback_reply(task.request, settings.node_id)
                    with _LeaseKeeper(client, task, log):
                        try:
                            reply = node.run_round(task.request)
                        except Exception:  # a bug outside the round's own boundary: answer, go on
                            log.exception("task %s: the round could not run", task.task_id)
                            reply = fallback
                        log.info(
                            "task %s: %s",
                            task.task_id,
                            "success" if reply.success else f"failed ({reply.msg})",
                        )
                        monitor.flush()  # the round's metrics reach the researcher before its reply does
                        replies = [reply, fallback] if reply is not fallback else [reply]
                        deliver_reply(client, task, replies, stop=stop, backoff=backoff, log=log)
                    prefetch = getattr(node.ports.crypter, "prefetch_after_reply", None)
                    if reply.success and callable(prefetch):
                        # the next round's Joye-Libert masks, in the idle time until it arrives
                        prefetch(claimed_rounds=node.secagg_keys.claimed_rounds)
        except TaskBoardRefused as err:
            log.error("%s", err)
            code = 1
        finally:
            client.close()
            relay.close()
            monitor.close()
            exchange.close()
    return code
