"""In-memory fakes of every port, with fault-injection knobs, for testing rounds without I/O.

Faults are driven by explicit knobs (``fail_next``, ``missing``), never by hidden randomness,
so that property tests replay. ``FakeNode`` bundles a full set with settings and a helper that
publishes a plan and parameters and returns a valid train request.
"""

import hashlib
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from attrs import define, field
from returns.result import Failure, Result, Success

from fedpipe.adapters.memory_files import read_upload, write_download
from fedpipe.approval import PendingPlan, plan_digest
from fedpipe.args import Metric, TrainingArgs
from fedpipe.codec import dumps
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.plan import (
    DatasetRecord,
    DataSplit,
    MetricSink,
    PlanFactory,
    Scalars,
    StopCheck,
    TrainingPlan,
    never_stop,
)
from fedpipe.ports import (
    Approval,
    Biprime,
    LomPorts,
    MetricEvent,
    NodeState,
    Ports,
    ServerKeyShare,
)
from fedpipe.settings import GpuPolicy, NodeSettings

__all__ = [
    "FakeClock",
    "FakeCrypter",
    "FakeNode",
    "InMemoryApprovalRegistry",
    "InMemoryDatasetRegistry",
    "InMemoryFileExchange",
    "InMemorySecaggKeys",
    "InMemoryStateStore",
    "RecordingMonitor",
    "RegistryPlanLoader",
    "ScriptedPlan",
    "fake_ports",
]

FAKE_HOST = "http://exchange.invalid"


def _error(code: ErrorCode, detail: str, *, retryable: bool = False) -> RoundError:
    # step is left empty: NamedStep attributes the failure to the step that called the port
    return RoundError(code=code, step="", detail=detail, retryable=retryable)


@define
class InMemoryFileExchange:
    """A file exchange in a dict: ``publish`` files, inspect ``uploads``; ``fail_next`` injects faults."""

    files: dict[str, bytes] = field(factory=dict)
    uploads: dict[str, bytes] = field(factory=dict)
    fail_next: dict[str, int] = field(factory=dict)  # url or "upload" -> failures still to inject
    downloads: list[str] = field(factory=list)
    _ids: Iterator[int] = field(factory=itertools.count)

    def publish(self, name: str, content: bytes) -> str:
        """Store ``content`` and return its URL."""
        url = f"{FAKE_HOST}/files/{name}"
        self.files[url] = content
        return url

    def publish_object(self, name: str, obj: Any) -> str:
        """Encode ``obj`` with the codec, store it and return its URL."""
        return self.publish(name, dumps(obj))

    def _inject(self, key: str) -> bool:
        left = self.fail_next.get(key, 0)
        if left > 0:
            self.fail_next[key] = left - 1
            return True
        return False

    def download(self, url: str, dest: Path, *, max_bytes: int) -> Result[Path, RoundError]:
        """Copy the stored (published or uploaded) bytes to ``dest``; unknown URLs fail like a 404."""
        self.downloads.append(url)
        if self._inject(url):
            return Failure(_error(ErrorCode.DOWNLOAD_FAILED, f"injected failure for {url}", retryable=True))
        return write_download(url, self.files.get(url, self.uploads.get(url)), dest, max_bytes=max_bytes)

    def upload(self, path: Path) -> Result[str, RoundError]:
        """Store the file's bytes under a new URL."""
        if self._inject("upload"):
            return Failure(_error(ErrorCode.UPLOAD_FAILED, "injected upload failure", retryable=True))
        return read_upload(path).map(self._keep)

    def _keep(self, content: bytes) -> str:
        url = f"{FAKE_HOST}/uploads/{next(self._ids)}"
        self.uploads[url] = content
        return url


def source_digest(source: str) -> str:
    """The fake registry's plan identity: the canonical digest of ``fedpipe.approval`` (as the real one).

    A source that does not parse has no canonical form; it is keyed by the SHA-256 of its text,
    so that tests may still register it (its ``status`` fails like the real registry's).
    """
    digest = plan_digest(source)
    if isinstance(digest, Failure):
        return "raw:" + hashlib.sha256(source.encode("utf-8")).hexdigest()
    return digest.unwrap().hexdigest


@define
class InMemoryApprovalRegistry:
    """Plan approvals keyed by canonical source digest; ``fail_next`` makes lookups fail; refused
    unknown plans are kept as pending, with their source in ``refused``."""

    statuses: dict[str, Approval] = field(factory=dict)
    fail_next: int = 0
    refused: dict[str, str] = field(factory=dict)  # digest -> source of the plans rounds refused

    def set_status(self, source: str, status: Approval) -> None:
        """Register ``source`` with ``status``."""
        self.statuses[source_digest(source)] = status

    def approve(self, source: str) -> None:
        """Register ``source`` as approved."""
        self.set_status(source, Approval.APPROVED)

    def record_refused(
        self, source: str, *, plan_class: str, researcher_id: str | None
    ) -> Result[PendingPlan, RoundError]:
        """Keep ``source`` as pending (its source in ``refused``), once; as the node's registry does."""
        digest = plan_digest(source)
        if isinstance(digest, Failure):
            return Failure(_error(ErrorCode.PLAN_NOT_APPROVED, "the refused plan does not parse"))
        d = digest.unwrap()
        self.statuses.setdefault(d.hexdigest, Approval.PENDING)
        self.refused.setdefault(d.hexdigest, source)
        return Success(PendingPlan(plan_id=f"pending-{d.hexdigest[:12]}", digest=d))

    def status(self, source: str) -> Result[Approval, RoundError]:
        """The status of ``source``; NOT_REGISTERED when unknown; a failure when it does not parse."""
        if self.fail_next > 0:
            self.fail_next -= 1
            return Failure(_error(ErrorCode.PLAN_NOT_APPROVED, "injected registry failure"))
        digest = plan_digest(source)
        if isinstance(digest, Failure):
            err = digest.failure()
            return Failure(
                RoundError(
                    code=ErrorCode.PLAN_NOT_APPROVED,
                    step="",
                    detail=f"training plan source does not parse: {err.message} (line {err.line})",
                    public=err.public(),
                )
            )
        return Success(self.statuses.get(digest.unwrap().hexdigest, Approval.NOT_REGISTERED))


@define
class InMemoryDatasetRegistry:
    """Datasets in a dict."""

    records: dict[str, DatasetRecord] = field(factory=dict)

    def add(self, record: DatasetRecord) -> None:
        """Register ``record`` under its id."""
        self.records[record.dataset_id] = record

    def get(self, dataset_id: str) -> Result[DatasetRecord | None, RoundError]:
        """The record, or None."""
        return Success(self.records.get(dataset_id))


@define
class InMemoryStateStore:
    """Node states in a dict; ``fail_next_save`` / ``fail_next_load`` inject store failures."""

    states: dict[tuple[str, str], NodeState] = field(factory=dict)
    fail_next_save: int = 0
    fail_next_load: int = 0
    saves: int = 0
    loads: int = 0

    def load(self, job_id: str, state_id: str) -> Result[NodeState | None, RoundError]:
        """The state, or None when absent."""
        self.loads += 1
        if self.fail_next_load > 0:
            self.fail_next_load -= 1
            return Failure(
                _error(ErrorCode.STATE_LOAD_FAILED, "injected state-store read failure", retryable=True)
            )
        return Success(self.states.get((job_id, state_id)))

    def save(self, state: NodeState) -> Result[None, RoundError]:
        """Store ``state`` (all or nothing)."""
        if self.fail_next_save > 0:
            self.fail_next_save -= 1
            return Failure(
                _error(ErrorCode.STATE_SAVE_FAILED, "injected state-store write failure", retryable=True)
            )
        self.saves += 1
        self.states[(state.job_id, state.state_id)] = state
        return Success(None)


@define
class RegistryPlanLoader:
    """Instantiates plans from registered factories by class name (the source file is only checked to exist)."""

    factories: dict[str, PlanFactory] = field(factory=dict)
    instances: list[TrainingPlan] = field(factory=list)

    def register(self, class_name: str, factory: PlanFactory) -> None:
        """Make ``class_name`` instantiable."""
        self.factories[class_name] = factory

    def load(self, source_path: Path, class_name: str) -> Result[TrainingPlan, RoundError]:
        """A new instance of ``class_name``; an unknown name or a raising factory is PLAN_LOAD_FAILED."""
        factory = self.factories.get(class_name)
        if factory is None or not source_path.exists():
            return Failure(_error(ErrorCode.PLAN_LOAD_FAILED, f"no class {class_name!r} in plan source"))
        try:
            plan = factory()
        except Exception as exc:
            return Failure(_error(ErrorCode.PLAN_LOAD_FAILED, f"{class_name}(): {type(exc).__name__}: {exc}"))
        self.instances.append(plan)
        return Success(plan)


@define
class RecordingMonitor:
    """Keeps every metric event."""

    events: list[MetricEvent] = field(factory=list)

    def report(self, event: MetricEvent) -> None:
        """Record ``event``."""
        self.events.append(event)


@define
class FakeClock:
    """A clock that advances by ``tick`` seconds at every reading (``tick=0``: only by ``advance``)."""

    now: float = 0.0
    tick: float = 0.5

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, as slow work would (no reading is taken)."""
        self.now += seconds

    def perf_counter(self) -> float:
        """Advance and read."""
        self.now += self.tick
        return self.now

    def process_time(self) -> float:
        """Advance and read (the same counter)."""
        return self.perf_counter()


@define
class InMemorySecaggKeys:
    """Key shares and biprimes in dicts; remembers claimed (key, round) pairs."""

    server_keys: dict[str, ServerKeyShare] = field(factory=dict)
    biprimes: dict[str, Biprime] = field(factory=dict)
    claimed: set[tuple[str, int]] = field(factory=set)

    def server_key(self, secagg_id: str, job_id: str) -> Result[ServerKeyShare | None, RoundError]:
        """The share, None if absent, a failure if it belongs to another job."""
        key = self.server_keys.get(secagg_id)
        if key is not None and key.job_id != job_id:
            return Failure(_error(ErrorCode.SECAGG_CONFIG, f"key share {secagg_id!r} belongs to another job"))
        return Success(key)

    def biprime(self, secagg_id: str) -> Result[Biprime | None, RoundError]:
        """The biprime, or None."""
        return Success(self.biprimes.get(secagg_id))

    def claim_tau(self, secagg_id: str, round_number: int) -> Result[None, RoundError]:
        """Refuse a (key, round) pair that was already used."""
        if (secagg_id, round_number) in self.claimed:
            return Failure(
                RoundError(
                    code=ErrorCode.SECAGG_CONFIG,
                    step="",
                    detail=f"(key {secagg_id!r}, round {round_number}) already used for an encryption",
                    public="This node already encrypted an update for this secagg context and round.",
                )
            )
        self.claimed.add((secagg_id, round_number))
        return Success(None)


@define
class FakeCrypter:
    """A stand-in crypter: fixed-point integers of the weighted values, no security at all."""

    calls: int = 0
    fail_next: int = 0
    first_indices: list[int] = field(factory=list)
    started: list[tuple[str, int, int | None]] = field(factory=list)

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
        """Return ``round(v * weight * 1e6)`` for each value (``first_index`` is recorded, not used)."""
        self.calls += 1
        self.first_indices.append(first_index)
        if self.fail_next > 0:
            self.fail_next -= 1
            return Failure(_error(ErrorCode.ENCRYPTION_FAILED, "injected encryption failure"))
        return Success([round(v * weight * 1_000_000) for v in values])

    def start_masks(
        self, *, key: ServerKeyShare, biprime: Biprime, round_number: int, n_values: int | None
    ) -> None:
        """Record the request (secagg id, round, value count); there is nothing to precompute."""
        self.started.append((key.secagg_id, round_number, n_values))


class PlanFault(RuntimeError):
    """Raised by ScriptedPlan methods named in ``fail``."""


@define
class ScriptedPlan:
    """A tiny training plan without torch: one weight vector, a fake loss, scripted faults.

    Training moves every weight ``lr`` towards ``target`` once per sample; the loss reported is the
    squared distance. ``fail`` names methods that raise ``PlanFault``.

    With a ``clock`` (the round's FakeClock), each training or testing sample "takes"
    ``seconds_per_sample`` of its time and ``stop`` is polled before each training sample, so a
    round's wall-time limit can be exercised without sleeping. Without one, ``stop`` is polled
    once before training (a FakeClock advances at each reading: polling it per sample would
    make a large fake dataset "take" hours). Testing polls it once, before it starts.
    ``samples_trained`` counts the samples of the last training routine; ``stopped`` tells
    whether a routine returned early because ``stop`` was true.
    """

    n_samples: int = 10
    weights: list[float] = field(factory=lambda: [0.0, 0.0, 0.0])
    target: float = 1.0
    lr: float = 0.01
    fail: frozenset[str] = frozenset()
    aux_out: dict[str, Any] = field(factory=dict)
    calls: list[str] = field(factory=list)
    args: TrainingArgs | None = None
    model_args: Mapping[str, Any] | None = None
    aggregator_args: Mapping[str, Any] | None = None
    dataset: DatasetRecord | None = None
    split: DataSplit | None = None
    restored: Mapping[str, Any] | None = None
    aux_in: Mapping[str, Any] | None = None
    steps_done: int = 0
    clock: FakeClock | None = None
    seconds_per_sample: float = 0.0
    samples_trained: int = 0
    stopped: bool = False

    def _take_time(self, samples: int) -> None:
        if self.clock is not None:
            self.clock.advance(self.seconds_per_sample * samples)

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail:
            raise PlanFault(f"scripted failure in {name}")

    def post_init(
        self,
        *,
        model_args: Mapping[str, Any],
        training_args: TrainingArgs,
        aggregator_args: Mapping[str, Any],
    ) -> None:
        self._enter("post_init")
        self.args, self.model_args, self.aggregator_args = training_args, model_args, aggregator_args

    def load_state(self, state: Mapping[str, Any]) -> Sequence[str]:
        self._enter("load_state")
        self.restored = state
        self.steps_done = int(state.get("steps_done", 0))
        return []

    def set_model_params(self, params: Mapping[str, Any]) -> None:
        self._enter("set_model_params")
        self.weights = [float(v) for v in params["w"]]

    def set_aux_vars(self, aux_vars: Mapping[str, Any]) -> None:
        self._enter("set_aux_vars")
        self.aux_in = aux_vars

    def load_data(self, dataset: DatasetRecord) -> int:
        self._enter("load_data")
        self.dataset = dataset
        return self.n_samples

    def set_split(self, split: DataSplit) -> None:
        self._enter("set_split")
        self.split = split

    def _loss(self) -> float:
        return sum((w - self.target) ** 2 for w in self.weights)

    def testing_routine(
        self,
        *,
        metric: Metric | None,
        metric_args: Mapping[str, Any],
        report: MetricSink,
        before_train: bool,
        stop: StopCheck = never_stop,
    ) -> Mapping[str, float]:
        self._enter("testing_routine")
        if stop():
            self.stopped = True
            return {}
        self._take_time(len(self.split.test_indices) if self.split else 0)
        name = (metric or Metric.MEAN_SQUARE_ERROR).value
        value = {name: self._loss()}
        report(
            Scalars(
                metric=value,
                iteration=1,
                test=True,
                test_on_global_updates=before_train,
                test_on_local_updates=not before_train,
                total_samples=len(self.split.test_indices) if self.split else 0,
                batch_samples=len(self.split.test_indices) if self.split else 0,
                num_batches=1,
            )
        )
        return value

    def training_routine(self, *, report: MetricSink, gpu: GpuPolicy, stop: StopCheck = never_stop) -> int:
        self._enter("training_routine")
        total = len(self.split.train_indices) if self.split else self.n_samples
        n = 0
        for index in range(total):
            if (index == 0 or self.clock is not None) and stop():
                self.stopped = True
                break
            self.weights = [w + self.lr * (self.target - w) for w in self.weights]
            self._take_time(1)
            n += 1
        self.samples_trained = n
        self.steps_done += 1
        report(
            Scalars(
                metric={"Loss": self._loss()}, iteration=1, train=True, num_samples_trained=n, batch_samples=n
            )
        )
        return n

    def collect_aux_vars(self) -> Mapping[str, Any]:
        self._enter("collect_aux_vars")
        return dict(self.aux_out)

    def after_training_params(self, *, flatten: bool) -> Any:
        self._enter("after_training_params")
        return list(self.weights) if flatten else {"w": list(self.weights)}

    def save_state(self) -> Mapping[str, Any]:
        self._enter("save_state")
        return {"steps_done": self.steps_done}

    def optimizer_args(self) -> Mapping[str, Any]:
        self._enter("optimizer_args")
        return {"lr": self.lr}


PLAN_SOURCE = "class ScriptedPlan:\n    '''Stands for the researcher's plan source in fake rounds.'''\n"


@define
class FakeNode:
    """A full set of fakes plus settings: ``ports`` for rounds, ``request()`` for valid requests."""

    settings: NodeSettings
    exchange: InMemoryFileExchange = field(factory=InMemoryFileExchange)
    approvals: InMemoryApprovalRegistry = field(factory=InMemoryApprovalRegistry)
    datasets: InMemoryDatasetRegistry = field(factory=InMemoryDatasetRegistry)
    states: InMemoryStateStore = field(factory=InMemoryStateStore)
    plans: RegistryPlanLoader = field(factory=RegistryPlanLoader)
    monitor: RecordingMonitor = field(factory=RecordingMonitor)
    clock: FakeClock = field(factory=FakeClock)
    secagg_keys: InMemorySecaggKeys = field(factory=InMemorySecaggKeys)
    crypter: FakeCrypter = field(factory=FakeCrypter)
    lom: LomPorts | None = None
    _ids: Iterator[int] = field(factory=itertools.count)

    def new_id(self) -> str:
        """Deterministic ids: 0, 1, 2 ..."""
        return f"{next(self._ids):032x}"

    @property
    def ports(self) -> Ports:
        """The fakes as a Ports bundle."""
        return Ports(
            exchange=self.exchange,
            approvals=self.approvals,
            datasets=self.datasets,
            states=self.states,
            plans=self.plans,
            monitor=self.monitor,
            clock=self.clock,
            secagg_keys=self.secagg_keys,
            crypter=self.crypter,
            new_id=self.new_id,
            lom=self.lom,
        )

    def request(
        self,
        *,
        plan: Callable[[], TrainingPlan] | None = None,
        class_name: str = "ScriptedPlan",
        source: str = PLAN_SOURCE,
        params: Mapping[str, Any] | None = None,
        approve: bool = True,
        dataset: DatasetRecord | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Publish a plan source and parameters, register plan and dataset, return a valid request dict.

        Keyword ``fields`` override request fields (``training_args``, ``round``, ``state_id`` ...).
        """
        self.plans.register(class_name, plan or ScriptedPlan)
        if approve:
            self.approvals.approve(source)
        record = dataset or DatasetRecord(dataset_id="ds-1", name="fake", path="/data/fake")
        self.datasets.add(record)
        plan_url = self.exchange.publish(f"plan-{class_name}.py", source.encode())
        params_url = self.exchange.publish_object(
            f"params-{len(self.exchange.files)}", {"model_weights": dict(params or {"w": [0.0, 0.0, 0.0]})}
        )
        request: dict[str, Any] = {
            "researcher_id": "researcher-1",
            "job_id": "job-1",
            "state_id": None,
            "params_url": params_url,
            "training_args": {"epochs": 1, "loader_args": {"batch_size": 4}},
            "dataset_id": record.dataset_id,
            "training": True,
            "model_args": {},
            "training_plan_url": plan_url,
            "training_plan_class": class_name,
            "secagg_servkey_id": None,
            "secagg_biprime_id": None,
            "secagg_random": None,
            "secagg_clipping_range": None,
            "round": 0,
            "aggregator_args": {},
            "aux_var_urls": None,
            "command": "train",
        }
        request.update(fields)
        return request


def fake_ports(root: Path | str = "/nonexistent/fedpipe-fake") -> Ports:
    """A Ports bundle of fresh fakes (for building rounds; use FakeNode to drive them)."""
    return FakeNode(settings=NodeSettings(node_id="fake-node", root=Path(root))).ports
