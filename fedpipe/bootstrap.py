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
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

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
        durable: bool = True,
    ) -> "Node":
        """Open (creating if needed) the node's root directory and database and wire the adapters.

        ``monitor`` defaults to dropping scalars, ``crypter`` to one that refuses to encrypt,
        ``clock`` to the system clock; ``algorithm`` hashes newly registered plans. ``relay``
        (the server's key relay) lets the node agree LOM contexts with its pinned peers, waiting
        at most ``agreement_seconds`` for their offers; without one LOM rounds are refused.
        ``durable=False`` opens the database without a disk sync per commit (see ``Database``):
        for scratch node roots only.
        Raises ``NodeAdminError`` when the root or the database cannot be used.
        """
        try:
            settings.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise NodeAdminError(f"cannot create the node root {settings.root}: {err}") from err
        db = Database(settings.db_path, durable=durable)
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
        "workspace_dir": None if settings.workspace_dir is None else str(settings.workspace_dir),
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


class _Stop(Protocol):
    """What the agent's waits watch: ``threading.Event`` or the agent's own ``_StopFlag``."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class _StopFlag:
    """The agent's stop: the caller's event, or SIGTERM/SIGINT as noted by the signal handler.

    The handler only stores the signal's name: a handler that took a lock (an Event's, a log
    handler's) could deadlock or fail on the very lock the interrupted code holds. A watcher
    thread does the rest (``_Lifecycle``).
    """

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.signal_name: str | None = None

    def is_set(self) -> bool:
        return self.signal_name is not None or self.event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: for ever) for the stop; True when stopping."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = 0.1 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.1))
        return self.is_set()


class _Backoff:
    """The agent's wait after a failure: 0.5 s doubling up to 30 s, back to 0.5 s after a success.

    Its log line tells a lost connection from one that is still down.
    """

    def __init__(self, stop: _Stop, log: logging.Logger) -> None:
        self._stop = stop
        self._log = log
        self.delay = 0.5
        self.connected: bool | None = None  # None: not yet reached

    def reset(self) -> None:
        self.delay = 0.5

    def wait(self, err: Exception) -> None:
        state = {None: "cannot reach the server", True: "connection lost", False: "still unreachable"}
        self._log.warning("%s (%s); retrying in %.1f s", state[self.connected], err, self.delay)
        if self.connected:
            self.connected = False
        self._stop.wait(self.delay)
        self.delay = min(self.delay * 2, 30.0)


def deliver_reply(
    client: "HttpTaskClient",
    task: "Task",
    replies: Sequence[TrainReply],
    *,
    stop: _Stop,
    backoff: _Backoff,
    log: logging.Logger,
) -> "ReplyOutcome | None":
    """Post the first of ``replies`` the board accepts (the later ones are fallbacks for a refusal).

    Waits out an unreachable board until ``stop`` is set (a stopping node still tries once: the
    round is done, its reply is what the researcher waits for); returns the last outcome (None
    when no answer came). A lost lease is final: the board has redelivered the task.
    """
    from fedpipe.adapters.task_client import ReplyOutcome, TaskBoardUnavailable

    pending = list(replies)
    while True:
        try:
            outcome = client.post_reply(task, pending[0].to_dict())
        except TaskBoardUnavailable as err:
            if stop.is_set():
                log.warning("task %s: reply not sent (%s): stopping", task.task_id, err)
                return None
            backoff.wait(err)
            continue
        if outcome is ReplyOutcome.REFUSED and len(pending) > 1:
            log.error("task %s: the board refused the reply; sending a failure reply", task.task_id)
            pending.pop(0)
            continue
        if outcome is not ReplyOutcome.ACCEPTED:
            log.warning("task %s: reply not accepted (%s)", task.task_id, outcome.value)
        return outcome


def round_label(request: Any) -> str:
    """How the node's log names the round a request asks for, numbered as its researcher reads it.

    The wire's ``round`` counts from 0; a training round is shown 1-based (what ``fedpipe run``
    and the demo print), a validation-only round as the validation after that many rounds. A
    request too broken to say gets a plain label (the round itself will refuse it).

    >>> round_label({"job_id": "j1", "round": 0, "training": True})
    'round 1 of job j1'
    >>> round_label({"job_id": "j1", "round": 5, "training": False})
    'validation after round 5 of job j1'
    >>> round_label(["not", "a", "request"])
    'a malformed request'
    """
    if not isinstance(request, Mapping):
        return "a malformed request"
    job = request.get("job_id")
    job_text = f"job {job[:80]}" if isinstance(job, str) and job.isprintable() else "an unnamed job"
    number = request.get("round", 0)
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        return f"a round of {job_text}"
    if request.get("training", True) is False:
        return f"validation after round {number} of {job_text}"
    return f"round {number + 1} of {job_text}"


class _RoundAbandoned(BaseException):
    """Raised by the signal handler when the owner asks twice to stop during a round.

    A BaseException, so that the round's last-resort ``except Exception`` lets it through: the
    round unwinds (its state transaction rolls back, its workspace is removed) and gets no reply;
    the board hands the task out again once its lease runs out.
    """


class _Lifecycle:
    """The node's stop: signal handling, the watcher that acts on it, and the round in progress.

    First SIGTERM/SIGINT: logged, and the long poll is cut short (its connection shut down); a
    round in progress runs to its end and its reply is sent, since a round's steps are not safe
    to cut at any point and the researcher waits for that reply. A second signal during that
    round abandons it (``_RoundAbandoned``).
    """

    def __init__(self, stop: _StopFlag, client: "HttpTaskClient", log: logging.Logger) -> None:
        self.stop = stop
        self.client = client
        self.log = log
        self.round: str | None = None  # the label of the round in progress
        self.abandoned: str | None = None
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="fedpipe-stop", daemon=True)
        self._previous: dict[int, Any] = {}

    def on_signal(self, signum: int, frame: object) -> None:
        """The signal handler: note the signal (a second one during a round abandons the round)."""
        name = signal.Signals(signum).name
        if self.stop.signal_name is not None and self.round is not None:
            self.abandoned = self.round
            raise _RoundAbandoned
        self.stop.signal_name = self.stop.signal_name or name

    def _watch(self) -> None:
        reported = False
        while not self._done.is_set():
            if self.stop.is_set():
                if not reported:
                    reported = True
                    why = f"{self.stop.signal_name} received" if self.stop.signal_name else "asked to stop"
                    running = self.round
                    if running is None:
                        self.log.info("stopping: %s", why)
                    else:
                        self.log.info(
                            "stopping: %s; finishing %s first (signal again to abandon it)", why, running
                        )
                if self.round is None:
                    # between rounds only: a round in progress keeps its connections (renewal, reply)
                    self.client.interrupt()
                    return
            self._done.wait(0.05)

    def __enter__(self) -> "_Lifecycle":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self.on_signal)
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._watcher.join(timeout=2)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


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


def _shown_url(url: str) -> str:
    """``url`` as the log shows it: without any user info (a credential never reaches a log).

    >>> _shown_url("https://user:secret@board.example:8443/fed")
    'https://board.example:8443/fed'
    """
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


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

    Stopping (``stop``, or SIGTERM/SIGINT when run in the main thread) cuts the long poll short,
    so an idle node stops at once; a round in progress first runs to its end and sends its reply,
    and a second signal abandons it (no reply, nothing half-written: the board hands the task
    out again after its lease). Each change of state is logged at INFO on ``fedpipe.node``:
    connected, waiting for tasks, running round r of job j, replied, stopping, stopped; a lost
    connection at WARNING with the retry delay. The token never reaches the log.
    """
    from fedpipe.adapters.http_exchange import HttpFileExchange, origin_of, ssl_context
    from fedpipe.adapters.lock import NodeLock
    from fedpipe.adapters.monitor import HttpMonitor
    from fedpipe.adapters.secagg_relay import HttpSecaggRelay
    from fedpipe.adapters.task_client import HttpTaskClient, TaskBoardRefused, TaskBoardUnavailable
    from fedpipe.training.warm import warm_up_in_background

    log = logging.getLogger("fedpipe.node")
    _check_server_url(server_url)  # before the root is made: a typo must not leave a node behind
    settings = load_or_create_settings(root, node_id=node_id)
    server = server_url.rstrip("/")
    verify = ssl_context(ca_file) if ca_file else True
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    stopping = _StopFlag(stop or threading.Event())
    with NodeLock(settings.root):
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
        backoff = _Backoff(stopping, log)
        lifecycle = _Lifecycle(stopping, client, log)

        code = 0
        fresh = True  # the first poll ends the leases a dead predecessor held
        waiting = False  # whether "waiting for tasks" was said since the last change of state
        try:
            with (
                lifecycle,
                Node.open(
                    settings,
                    exchange=exchange,
                    monitor=monitor,
                    crypter=_default_crypter(),
                    relay=relay,
                    agreement_seconds=agreement_seconds,
                ) as node,
            ):
                removed = node.clean_workspaces()
                if removed:
                    log.warning("removed %d round workspace(s) left by an earlier run", removed)
                warm_up_in_background()  # torch's lazy imports, off the first round's path
                log.info("node %s pulling tasks from %s", settings.node_id, _shown_url(server))
                while not stopping.is_set():
                    if backoff.connected and not waiting:
                        log.info("waiting for tasks")
                        waiting = True
                    try:
                        # the first poll answers at once: "connected" means reached, not 10 s later
                        task = client.next_task(fresh=fresh, wait=0.0 if fresh else None)
                    except TaskBoardUnavailable as err:
                        if stopping.is_set():
                            break  # the poll was cut short to stop
                        backoff.wait(err)
                        waiting = False
                        continue
                    if not backoff.connected:
                        log.info("connected to %s as node %s", _shown_url(server), settings.node_id)
                        backoff.connected = True
                    fresh = False
                    backoff.reset()
                    if task is None:
                        continue
                    waiting = False
                    label = round_label(task.request)
                    lifecycle.round = label  # from here a stop lets the round finish
                    if stopping.is_set():
                        # the poll returned a task as the node stopped: not started, so the
                        # board hands it out again when its lease runs out (or at the next start)
                        log.info("task %s (%s) left to the board: stopping", task.task_id, label)
                        break
                    log.info("running %s (task %s, delivery %d)", label, task.task_id, task.delivery)
                    reply = _run_task(node, client, task, monitor, stopping, backoff, log)
                    lifecycle.round = None
                    prefetch = getattr(node.ports.crypter, "prefetch_after_reply", None)
                    if reply.success and callable(prefetch) and not stopping.is_set():
                        # the next round's Joye-Libert masks, in the idle time until it arrives
                        prefetch(claimed_rounds=node.secagg_keys.claimed_rounds)
        except _RoundAbandoned:
            log.warning(
                "abandoned %s: no reply sent; the board hands the task out again", lifecycle.abandoned
            )
        except TaskBoardRefused as err:
            log.error("%s", err)
            code = 1
        finally:
            client.close()
            relay.close()
            monitor.close()
            exchange.close()
    log.info("stopped")
    return code


def _run_task(
    node: Node,
    client: "HttpTaskClient",
    task: "Task",
    monitor: Any,
    stop: _Stop,
    backoff: _Backoff,
    log: logging.Logger,
) -> TrainReply:
    """Run one task's round under its lease and deliver the reply (or a fallback); the round's reply."""
    from fedpipe.adapters.task_client import ReplyOutcome

    fallback = _fallback_reply(task.request, node.settings.node_id)
    with _LeaseKeeper(client, task, log):
        try:
            reply = node.run_round(task.request)
        except Exception:  # a bug outside the round's own boundary: answer, go on
            log.exception("task %s: the round could not run", task.task_id)
            reply = fallback
        monitor.flush()  # the round's metrics reach the researcher before its reply does
        replies = [reply, fallback] if reply is not fallback else [reply]
        outcome = deliver_reply(client, task, replies, stop=stop, backoff=backoff, log=log)
    if outcome is ReplyOutcome.ACCEPTED:
        log.info("replied: %s", "success" if reply.success else f"failure ({reply.msg})")
    return reply
