"""Virtual nodes: real node roots made on demand, each task run by the real node round.

A virtual node is a node root under the simulation's folder (settings, SQLite database with its
dataset registry, plan approvals and node state, its partition of the data as a CSV file),
made the first time the node is sampled, as its owner would: the partition is registered and
the researcher's plan approved. Each task opens the node (``fedpipe.bootstrap.Node``), runs
``execute_round`` with the standard steps over an in-memory exchange, and closes it again: an
idle node holds nothing in memory but its settings (a small frozen value). What a process can
keep warm across nodes and rounds is kept: the plan module, compiled and run once per source
digest, and a plan's tables when it reads them with ``fedpipe.training.read_table``. A virtual
node's database does not sync each commit to the disk (``durable=False``): its root is scratch.
Its round workspaces (the plan source, the parameters and the results a round writes and removes)
go to a folder of the process on a tmpfs (``/dev/shm``) where there is one, not to its root.
"""

import hashlib
import os
import shutil
import tempfile
import threading
import types
import uuid
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from attrs import evolve
from returns.result import Failure, Result

from fedpipe.adapters.plan_loader import ModulePlanLoader, compile_plan, isolated_module
from fedpipe.bootstrap import (
    Node,
    NodeAdminError,
    OfflineExchange,
    UnconfiguredCrypter,
    load_or_create_settings,
)
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.plan import DatasetRecord, TrainingPlan
from fedpipe.ports import Approval
from fedpipe.reply import header_of, to_reply
from fedpipe.runner import execute_round
from fedpipe.settings import GpuPolicy, NodeSettings
from fedpipe.simulation.transport import EventRecorder, SimTask, TaskExchange, TaskOutcome

__all__ = ["CachedPlanLoader", "VirtualNodes", "node_ids", "workspace_folder"]

TMPFS = Path("/dev/shm")  # noqa: S108 a folder of ours is made in it with mkdtemp (0700)
_WORKSPACES = "fedpipe-rounds-"


def node_ids(n: int) -> tuple[str, ...]:
    """The ids of ``n`` virtual nodes.

    >>> node_ids(2)
    ('sim-0001', 'sim-0002')
    """
    return tuple(f"sim-{i + 1:04d}" for i in range(n))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def workspace_folder(base: Path | None = None) -> Path | None:
    """A new folder of this process for round workspaces under ``base`` (default: the tmpfs), or None.

    None when ``base`` is not a writable folder (the nodes then use their roots). The folders of
    processes that no longer run (an actor killed in a round) are removed first, so that a tmpfs
    does not keep what they left.
    """
    base = TMPFS if base is None else base
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        return None
    for stale in base.glob(f"{_WORKSPACES}*-*"):
        pid = stale.name[len(_WORKSPACES) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    try:
        return Path(tempfile.mkdtemp(prefix=f"{_WORKSPACES}{os.getpid()}-", dir=base))
    except OSError:
        return None


class CachedPlanLoader:
    """A PlanLoader that runs each plan source once per process and instantiates its class per round.

    The module of a source (keyed by its SHA-256) is run once, isolated as ``ModulePlanLoader``
    runs it; a source that fails to load is left to ``ModulePlanLoader``, so that its error is
    the one a deployed node gives.
    """

    def __init__(self) -> None:
        self._modules: dict[str, types.ModuleType] = {}
        self._lock = threading.Lock()
        self._fallback = ModulePlanLoader()

    def load(self, source_path: Path, class_name: str) -> Result[TrainingPlan, RoundError]:
        """An instance of ``class_name`` from the source at ``source_path``."""
        try:
            key = hashlib.sha256(Path(source_path).read_bytes()).hexdigest()
        except OSError:
            return self._fallback.load(source_path, class_name)
        with self._lock:
            module = self._modules.get(key) or self._run(Path(source_path), key)
        if module is None:
            return self._fallback.load(source_path, class_name)
        return ModulePlanLoader._instantiate(module, class_name)

    def _run(self, source_path: Path, key: str) -> types.ModuleType | None:
        compiled = compile_plan(source_path)
        if isinstance(compiled, Failure):
            return None
        code, _ = compiled.unwrap()
        module = types.ModuleType(f"fedpipe_plan_{uuid.uuid4().hex}")
        module.__file__ = str(source_path)
        with isolated_module(module, source_path.parent):
            try:
                exec(code, module.__dict__)  # noqa: S102 the plan every virtual node's owner approved
            except (Exception, SystemExit):  # foreign code: the fallback reports it as a node would
                return None
        self._modules[key] = module
        return module


class VirtualNodes:
    """The virtual nodes of one simulation: their roots under ``workdir``, made on first use.

    ``partitions`` holds each node's row indices into ``features`` / ``labels`` (one array per
    id of ``ids``); ``plan_source`` is the plan every owner approves; ``dataset_id`` the id the
    partition is registered under. ``run`` runs one task on its node and returns its outcome.
    ``workspaces`` is where the rounds' workspaces go: a folder of this process made under it
    (default: the tmpfs, else the node roots; see ``workspace_folder``), removed with the nodes.
    ``gpu`` is the GPU policy of every node (default: each root's own, which allows no GPU); a
    Ray actor that holds a share of a GPU gives its nodes one that allows it, so that training
    runs there when the researcher's ``use_gpu`` asks for it.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        ids: Sequence[str],
        features: np.ndarray,
        labels: np.ndarray,
        columns: Sequence[str],
        partitions: Sequence[np.ndarray],
        dataset_id: str,
        plan_source: str,
        workspaces: Path | None = None,
        gpu: GpuPolicy | None = None,
    ) -> None:
        if len(ids) != len(partitions):
            raise ValueError(f"{len(ids)} node ids for {len(partitions)} partitions")
        self.workdir = Path(workdir)
        self._index = {node_id: i for i, node_id in enumerate(ids)}
        self._features = features
        self._labels = labels
        self._columns = tuple(columns)
        self._partitions = partitions
        self._dataset_id = dataset_id
        self._plan_source = plan_source
        self._created: set[str] = set()
        # the settings of a created node (a small frozen value): read from its root once
        self._settings: dict[str, NodeSettings] = {}
        self._plans = CachedPlanLoader()
        self._workspace_base = workspaces
        self._workspaces: Path | None = None
        self._workspaces_made = False
        self.gpu = gpu

    def _workspace_dir(self) -> Path | None:
        """This process's folder of round workspaces, made on the first task (None: the node roots)."""
        if not self._workspaces_made:
            self._workspaces_made = True
            self._workspaces = workspace_folder(self._workspace_base)
            if self._workspaces is not None:
                weakref.finalize(self, shutil.rmtree, self._workspaces, True)
        return self._workspaces

    def root(self, node_id: str) -> Path:
        """The node root of ``node_id``."""
        return self.workdir / "nodes" / node_id

    @property
    def created(self) -> frozenset[str]:
        """The nodes whose root exists (they were sampled at least once)."""
        return frozenset(self._created)

    def _create(self, node_id: str) -> None:
        """What the owner of a new node does by hand: settings, the dataset, the plan approval."""
        root = self.root(node_id)
        settings = load_or_create_settings(root, node_id=node_id)
        rows = self._partitions[self._index[node_id]]
        table = np.column_stack([self._features[rows], self._labels[rows]])
        path = root / "data" / "partition.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savetxt(path, table, delimiter=",", header=",".join(self._columns), comments="", fmt="%.9g")
        with Node.open(
            settings, exchange=OfflineExchange(), crypter=UnconfiguredCrypter(), durable=False
        ) as owner:
            if owner.datasets.get(self._dataset_id).value_or(None) is None:
                owner.datasets.add(
                    DatasetRecord(
                        dataset_id=self._dataset_id,
                        name=f"partition of {node_id}",
                        path=str(path),
                        data_type="csv",
                        description="written by fedpipe simulate",
                    )
                )
            if owner.approvals.find(self._plan_source) is None:
                owner.approvals.register(self._plan_source, name="simulated plan", status=Approval.APPROVED)
        self._created.add(node_id)

    def run(self, task: SimTask, files: Mapping[str, bytes]) -> TaskOutcome:
        """Run ``task`` on its node with the real round; the node is closed again afterwards.

        Like a deployed node it always replies: a node root that cannot be made or opened (a
        full disk, an unknown node id) is a failure reply, not an exception.
        """
        exchange = TaskExchange(files, task.task_id)
        monitor = EventRecorder()
        try:
            if task.node_id not in self._index:
                raise NodeAdminError(f"no virtual node {task.node_id!r}")
            if task.node_id not in self._created:
                self._create(task.node_id)
            settings = self._settings.get(task.node_id)
            if settings is None:
                settings = load_or_create_settings(self.root(task.node_id), node_id=task.node_id)
                workspaces = self._workspace_dir()
                if workspaces is not None:
                    settings = evolve(settings, workspace_dir=workspaces)
                if self.gpu is not None:
                    settings = evolve(settings, gpu=self.gpu)
                self._settings[task.node_id] = settings
            node = Node.open(
                settings, exchange=exchange, monitor=monitor, crypter=UnconfiguredCrypter(), durable=False
            )
        except (NodeAdminError, OSError) as err:
            error = RoundError(
                code=ErrorCode.INTERNAL,
                step="(setup)",
                detail=f"virtual node {task.node_id}: {err}",
                public="The simulated node could not open its node root.",
            )
            reply = to_reply(Failure(error), header_of(task.request, task.node_id))
            return TaskOutcome(task_id=task.task_id, reply=reply.to_dict())
        with node:
            ports = evolve(node.ports, plans=self._plans)
            run = execute_round(task.request, ports, node.settings)
        return TaskOutcome(
            task_id=task.task_id,
            reply=run.reply.to_dict(),
            events=tuple(monitor.events),
            uploads=exchange.uploads,
        )
