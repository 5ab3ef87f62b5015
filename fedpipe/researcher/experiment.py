"""A minimal researcher: sample-weighted FedAvg (or SCAFFOLD, or secure aggregation) over pulled nodes.

Each round: upload the global parameters, post one train request per node on the task board,
wait for the replies until a deadline, download and decode the results, aggregate. Nodes that
fail or stay silent are reported; the experiment goes on with the others or stops, as configured.
"""

import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from attrs import define, evolve, field, frozen
from returns.result import Failure, Result

from fedpipe.codec import dump_file, load_file, loads
from fedpipe.errors import RoundError
from fedpipe.ports import FileExchange
from fedpipe.researcher.board import TaskBoard

__all__ = [
    "Experiment",
    "ExperimentResult",
    "ExperimentStopped",
    "HeldExchange",
    "NodeMetrics",
    "NodeResult",
    "ProgressEvent",
    "RoundRecord",
    "SecureReport",
    "Strategy",
    "secure_report",
]

log = logging.getLogger("fedpipe.researcher")


@frozen(kw_only=True)
class NodeResult:
    """One node's answer to one round."""

    node_id: str
    success: bool
    msg: str = ""
    sample_size: int = 0
    state_id: str | None = None
    results: Mapping[str, Any] = field(factory=dict, eq=False, repr=False)


@frozen(kw_only=True)
class SecureReport:
    """What one node's encrypted update says of its encryption (its results' ``metadata.secagg``).

    ``values`` counts everything encrypted (weights, numeric aux values, the ``secagg_random``
    factor); ``ciphertexts`` what was sent for them. The timings are the node's own figures, None
    where the node did not report them: ``encrypt_seconds`` is the encryption after training,
    ``mask_cpu_seconds`` / ``mask_wall_seconds`` what computing the masks cost, and
    ``precomputed_fraction`` the share of masks ready before the encryption asked for them.
    """

    node_id: str
    scheme: str
    values: int
    ciphertexts: int
    encrypt_seconds: float | None = None
    mask_cpu_seconds: float | None = None
    mask_wall_seconds: float | None = None
    precomputed_fraction: float | None = None
    out_of_range: int = 0


_SCHEME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _seconds(value: Any) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if isinstance(value, int) and not 0 <= value <= 10**9:
        return None  # no duration; and a huge int would not even convert to a float
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def secure_report(node_id: str, results: Mapping[str, Any]) -> SecureReport | None:
    """The encryption report of a node's downloaded results, or None when they are not encrypted.

    The results come from the network: a field of the wrong type reads as absent, and a scheme name
    that is not a short lowercase word reads as ``"unknown"`` (it is printed on the researcher's
    terminal). Results without the counts (an older node) fall back on the ciphertexts themselves.

    >>> secure_report("n", {"encrypted": True, "model_weights": [5, 6], "encryption_factor": [7],
    ...     "metadata": {"secagg": {"scheme": "joye-libert", "n_values": 40}}}).ciphertexts
    3
    >>> secure_report("n", {"encrypted": False, "model_weights": {"w": [0.5]}}) is None
    True
    """
    if results.get("encrypted") is not True:
        return None
    meta = results.get("metadata")
    sec = meta.get("secagg") if isinstance(meta, Mapping) else None
    sec = sec if isinstance(sec, Mapping) else {}
    scheme = sec.get("scheme")
    weights, factor = results.get("model_weights"), results.get("encryption_factor")
    sent = sum(len(part) for part in (weights, factor) if isinstance(part, list))
    encrypted = sec.get("encrypted")
    counts = [_count(v) for v in encrypted.values()] if isinstance(encrypted, Mapping) else []
    n_values = _count(sec.get("n_values"))
    if counts and all(c is not None for c in counts):
        values = sum(c or 0 for c in counts)
    else:
        values = (n_values or 0) + (1 if isinstance(factor, list) and factor else 0)
    masking = sec.get("masking")
    masking = masking if isinstance(masking, Mapping) else {}
    return SecureReport(
        node_id=node_id,
        scheme=scheme if isinstance(scheme, str) and _SCHEME.fullmatch(scheme) else "unknown",
        values=values,
        ciphertexts=_count(sec.get("ciphertexts")) or sent,
        encrypt_seconds=_seconds(sec.get("encrypt_seconds")),
        mask_cpu_seconds=_seconds(masking.get("mask_cpu_seconds")),
        mask_wall_seconds=_seconds(masking.get("mask_wall_seconds")),
        precomputed_fraction=_seconds(masking.get("precomputed_fraction")),
        out_of_range=_count(sec.get("out_of_range")) or 0,
    )


@frozen(kw_only=True)
class NodeMetrics:
    """What a node reported for a round: last training loss, validation before and after training."""

    train_loss: float | None = None
    before: float | None = None
    after: float | None = None
    test_samples: int = 0


_LOGGED_FAILURES = 5
"""How many failed nodes of a round the log names one by one; the rest are counted."""


def _secure_reports(results: Sequence[NodeResult]) -> tuple[SecureReport, ...]:
    reports = (secure_report(r.node_id, r.results) for r in results if r.success)
    return tuple(report for report in reports if report is not None)


def _without_update(result: NodeResult) -> NodeResult:
    """``result`` as a round record keeps it: its update's metadata, not its parameters."""
    meta = result.results.get("metadata")
    return evolve(result, results={} if meta is None else {"metadata": meta})


@frozen(kw_only=True)
class RoundRecord:
    """A finished round: each node's result and metrics, and the sample-weighted global figures.

    ``round`` is the round's index on the wire (0-based, what its requests carry); ``number`` is
    what a user reads (1-based). Its ``results`` keep of each node's update only the
    ``metadata`` (what the node says of its encryption, timings), and ``secure`` the encryption
    reports read from the whole updates: the parameters were aggregated into the next global
    model, and a run over many nodes and rounds must not hold every node's model of every round
    in memory.
    """

    round: int
    results: tuple[NodeResult, ...]
    metrics: Mapping[str, NodeMetrics]
    seconds: float
    training: bool = True
    secure_reports: tuple[SecureReport, ...] | None = field(default=None, eq=False, repr=False)
    """The encryption reports, read from the whole updates before they were dropped (None: read ``results``)."""

    @property
    def number(self) -> int:
        """The round's number as users see it: ``round + 1`` for a training round; for a
        validation-only round, the number of the last training round before it (whose model it
        validates).

        >>> RoundRecord(round=0, results=(), metrics={}, seconds=0.0).number
        1
        >>> RoundRecord(round=5, results=(), metrics={}, seconds=0.0, training=False).number
        5
        """
        return self.round + 1 if self.training else self.round

    def weighted(self, attribute: str) -> float | None:
        """The test-sample-weighted mean of a metric attribute over the nodes that reported it."""
        pairs = [
            (getattr(m, attribute), m.test_samples or 1)
            for m in self.metrics.values()
            if getattr(m, attribute) is not None
        ]
        total = sum(w for _, w in pairs)
        return None if not pairs or total == 0 else sum(v * w for v, w in pairs) / total

    @property
    def secure(self) -> tuple[SecureReport, ...]:
        """The encryption reports of the nodes that sent an encrypted update (empty: a plain round)."""
        if self.secure_reports is not None:
            return self.secure_reports
        return _secure_reports(self.results)


@frozen(kw_only=True)
class ExperimentResult:
    """The whole run: per-round records, the final parameters and the final global validation."""

    rounds: tuple[RoundRecord, ...]
    params: Mapping[str, Any] = field(eq=False, repr=False)
    final: RoundRecord | None = None

    @property
    def final_metric(self) -> float | None:
        """The global model's metric after the last round (validation-only round on every node)."""
        return None if self.final is None else self.final.weighted("before")


@frozen(kw_only=True)
class ProgressEvent:
    """One node's progress in one round, for a progress display.

    ``number`` is the round's user-facing number (``RoundRecord.number``); ``status`` is
    ``"sent"`` (the task is queued), ``"done"``, ``"failed"`` (``message`` says why) or
    ``"timeout"`` (no reply before the round deadline); ``seconds`` runs from the task's posting.
    """

    number: int
    training: bool
    node_id: str
    status: str
    seconds: float = 0.0
    message: str = ""


class Strategy(Protocol):
    """How the researcher turns node results into the next global parameters."""

    def aggregator_args(self) -> dict[str, Any]:
        """Arguments sent to every node with the train request."""
        ...

    def aux_vars_for(self, node_id: str) -> Mapping[str, Any] | None:
        """Auxiliary variables to send to ``node_id`` this round (None: none)."""
        ...

    def aggregate(
        self, params: Mapping[str, Any], results: Sequence[NodeResult], round_number: int
    ) -> Mapping[str, Any]:
        """The next global parameters."""
        ...


class ExperimentStopped(Exception):
    """A node failed and the experiment was configured to stop on failure."""


def _metric_value(metric: Mapping[str, Any]) -> float | None:
    for value in metric.values():
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
    return None


_MAX_RESULTS = 8 * 1024**3


@runtime_checkable
class HeldExchange(Protocol):
    """A file exchange that holds its files in this process: results are read without a file."""

    def read_bytes(self, url: str, *, max_bytes: int) -> Result[bytes, RoundError]:
        """The bytes of ``url`` (at most ``max_bytes``), or the error a download would give."""
        ...


@define
class Experiment:
    """A federated experiment driven over the task board and the file exchange.

    ``board`` and ``exchange`` are ports: ``fedpipe run`` passes the server's, a simulation
    in-memory ones. ``sample`` picks the nodes of each training round from its index (default:
    every node of ``node_ids``); the final validation runs on every node.
    """

    board: TaskBoard
    exchange: FileExchange
    node_ids: Sequence[str]
    plan_source_url: str
    plan_class: str
    dataset_id: str
    training_args: Mapping[str, Any]
    initial_params: Mapping[str, Any]
    strategy: Strategy
    workdir: Path
    model_args: Mapping[str, Any] = field(factory=dict)
    job_id: str = field(factory=lambda: f"job-{uuid.uuid4().hex[:12]}")
    researcher_id: str = "researcher"
    round_deadline_s: float = 300.0
    stop_on_failure: bool = False
    secagg_fields: Callable[[int], Mapping[str, Any]] | None = None
    on_round: Callable[[RoundRecord], None] | None = None
    on_progress: Callable[[ProgressEvent], None] | None = None
    state_ids: dict[str, str | None] = field(factory=dict)
    sample: Callable[[int], Sequence[str]] | None = None

    def _upload(self, name: str, obj: Any) -> str:
        path = self.workdir / f"{name}.mpk"
        dump_file(obj, path)
        result = self.exchange.upload(path)
        path.unlink(missing_ok=True)
        if isinstance(result, Failure):
            raise ExperimentStopped(f"cannot upload {name}: {result.failure().detail}")
        return result.unwrap()

    def _download(self, url: str) -> Mapping[str, Any] | None:
        # a HeldExchange (a simulation's) is told by its method: isinstance on a runtime Protocol
        # walks the protocol's attributes, once per result of every round
        read = getattr(self.exchange, "read_bytes", None)
        if callable(read):
            held: Result[bytes, RoundError] = read(url, max_bytes=_MAX_RESULTS)
            fetched: Result[Any, RoundError] = held.map(loads)
        else:
            dest = self.workdir / f"results-{uuid.uuid4().hex}.mpk"
            fetched = self.exchange.download(url, dest, max_bytes=_MAX_RESULTS).map(load_file)
            dest.unlink(missing_ok=True)
        if isinstance(fetched, Failure):
            log.warning("cannot download results %s: %s", url, fetched.failure().detail)
            return None
        value = fetched.unwrap().value_or(None)
        return value if isinstance(value, Mapping) else None

    def _request(self, node_id: str, round_number: int, params_url: str, training: bool) -> dict[str, Any]:
        aux = self.strategy.aux_vars_for(node_id) if training else None
        aux_urls = [self._upload(f"aux-{node_id}-{round_number}", dict(aux))] if aux else None
        request: dict[str, Any] = {
            "researcher_id": self.researcher_id,
            "job_id": self.job_id,
            "state_id": self.state_ids.get(node_id),
            "params_url": params_url,
            "training_args": dict(self.training_args),
            "dataset_id": self.dataset_id,
            "training": training,
            "model_args": dict(self.model_args),
            "training_plan_url": self.plan_source_url,
            "training_plan_class": self.plan_class,
            "round": round_number,
            # the validation round builds the same optimizer (e.g. SCAFFOLD's SGD, whose arguments Adam refuses)
            "aggregator_args": self.strategy.aggregator_args(),
            "aux_var_urls": aux_urls,
            "command": "train",
        }
        if training and self.secagg_fields is not None:
            request.update(self.secagg_fields(round_number))
        return request

    def _progress(self, number: int, training: bool, node_id: str, status: str, **more: Any) -> None:
        if self.on_progress is not None:
            self.on_progress(
                ProgressEvent(number=number, training=training, node_id=node_id, status=status, **more)
            )

    def _collect(
        self, tasks: Mapping[str, str], started: float, number: int, training: bool
    ) -> list[NodeResult]:
        deadline = started + self.round_deadline_s
        pending = dict(tasks)
        results: dict[str, NodeResult] = {}
        while pending and time.monotonic() < deadline:
            for node_id, task_id in list(pending.items()):
                # shorter waits when several nodes are pending, so that a finished node is seen soon
                wait = max(0.0, min(2.0 / len(pending), deadline - time.monotonic()))
                reply = self.board.reply(task_id, wait=wait)
                if reply is None:
                    continue
                del pending[node_id]
                result = results[node_id] = self._result_of(node_id, reply)
                self._progress(
                    number,
                    training,
                    node_id,
                    "done" if result.success else "failed",
                    seconds=time.monotonic() - started,
                    message=result.msg,
                )
        for node_id in pending:
            results[node_id] = NodeResult(
                node_id=node_id, success=False, msg="no reply before the round deadline"
            )
            self._progress(number, training, node_id, "timeout", seconds=time.monotonic() - started)
        return [results[n] for n in tasks]

    def _result_of(self, node_id: str, reply: Mapping[str, Any]) -> NodeResult:
        if not reply.get("success"):
            return NodeResult(node_id=node_id, success=False, msg=str(reply.get("msg", "")))
        url = reply.get("params_url") or ""
        content = self._download(url) if url else {}
        if content is None:
            return NodeResult(node_id=node_id, success=False, msg="results could not be downloaded")
        sample_size = reply.get("sample_size")
        return NodeResult(
            node_id=node_id,
            success=True,
            sample_size=int(sample_size) if isinstance(sample_size, int) else 0,
            state_id=reply.get("state_id") if isinstance(reply.get("state_id"), str) else None,
            results=content,
        )

    def _metrics(self, round_number: int, node_ids: Sequence[str]) -> dict[str, NodeMetrics]:
        events = [e for e in self.board.events(self.job_id) if e.get("round") == round_number]
        by_node: dict[str, list[dict[str, Any]]] = {n: [] for n in node_ids}
        for e in events:
            node = e.get("node_id")
            if isinstance(node, str) and node in by_node:
                by_node[node].append(e)
        out: dict[str, NodeMetrics] = {}
        for node_id in node_ids:
            mine = by_node[node_id]
            losses = [_metric_value(e.get("metric", {})) for e in mine if e.get("train")]
            before = [e for e in mine if e.get("test") and e.get("test_on_global_updates")]
            after = [e for e in mine if e.get("test") and e.get("test_on_local_updates")]
            out[node_id] = NodeMetrics(
                train_loss=losses[-1] if losses else None,
                before=_metric_value(before[-1].get("metric", {})) if before else None,
                after=_metric_value(after[-1].get("metric", {})) if after else None,
                test_samples=int((before or after)[-1].get("total_samples") or 0) if (before or after) else 0,
            )
        return out

    def run_round(
        self, round_number: int, params: Mapping[str, Any], *, training: bool = True
    ) -> tuple[RoundRecord, Mapping[str, Any]]:
        """One round on its nodes (``sample``'s pick, or every node); returns its record and the next parameters."""
        started = time.monotonic()
        params_url = self._upload(f"global-{round_number}", {"model_weights": dict(params)})
        node_ids = self.node_ids if not training or self.sample is None else self.sample(round_number)
        tasks = {
            n: self.board.post_task(n, self._request(n, round_number, params_url, training)) for n in node_ids
        }
        number = round_number + 1 if training else round_number
        for n in tasks:
            self._progress(number, training, n, "sent")
        results = self._collect(tasks, started, number, training)
        failed = [r for r in results if not r.success]
        for r in failed[:_LOGGED_FAILURES]:
            log.warning("round %d: node %s failed: %s", number, r.node_id, r.msg)
        if len(failed) > _LOGGED_FAILURES:  # a thousand simulated nodes past a deadline: not a thousand lines
            log.warning("round %d: %d more nodes failed", number, len(failed) - _LOGGED_FAILURES)
        if failed and self.stop_on_failure:
            raise ExperimentStopped(
                f"round {number}: {len(failed)} node(s) failed: "
                + "; ".join(f"{r.node_id}: {r.msg}" for r in failed)
            )
        ok = [r for r in results if r.success]
        if training:
            for r in ok:
                self.state_ids[r.node_id] = r.state_id
            if not ok:
                raise ExperimentStopped(f"round {number}: no node succeeded")
            params = self.strategy.aggregate(params, ok, round_number)
        record = RoundRecord(
            round=round_number,
            results=tuple(_without_update(r) for r in results),
            secure_reports=_secure_reports(results),
            metrics=self._metrics(round_number, node_ids),
            seconds=time.monotonic() - started,
            training=training,
        )
        if self.on_round is not None:
            self.on_round(record)
        return record, params

    def run(self, rounds: int) -> ExperimentResult:
        """``rounds`` training rounds, then one validation-only round of the final global model."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        params: Mapping[str, Any] = self.initial_params
        records: list[RoundRecord] = []
        for r in range(rounds):
            record, params = self.run_round(r, params)
            records.append(record)
        final, _ = self.run_round(rounds, params, training=False)
        return ExperimentResult(rounds=tuple(records), params=params, final=final)
