"""The composition root of a fedpipe node in a Fed-BioMed 6.x federation.

Three threads: the transport keeps a ``GetTaskUnary`` poll open at all times (also while a round
trains) and hands each message to ``FedbiomedNode.receive``, which only queues it; the
dispatcher decodes each message and answers management requests at once (Search, List, Ping,
plan status, approval); the round worker runs train requests one at a time through
``fedbiomed_round`` and sends the TrainReply. Every message that names a request gets an answer
(a reply or an ``ErrorMessage``): a Fed-BioMed researcher waits forever on a dropped reply.
Metrics go to the researcher as Scalar feedback while the round runs.
"""

import json
import logging
import queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from attrs import evolve
from returns.result import Failure, Success

from fedpipe.approval import canonical_source
from fedpipe.bootstrap import SETTINGS_FILE, Node, OfflineExchange, load_or_create_settings
from fedpipe.compose import NamedStep
from fedpipe.errors import printable
from fedpipe.fedbiomed.compat import FedbiomedPlanLoader
from fedpipe.fedbiomed.mapping import (
    InlineRound,
    approval_reply,
    error_message,
    list_reply,
    ping_reply,
    refusal_reply,
    round_reply,
    scalar_of,
    search_reply,
    status_reply,
    train_request_of,
)
from fedpipe.fedbiomed.messages import Message, MessageError, decode_message, encode_message
from fedpipe.fedbiomed.round import fedbiomed_round, fedbiomed_validation_round
from fedpipe.fedbiomed.secure import SecaggSetups, SecaggStore
from fedpipe.fedbiomed.wire import LogFeedback, ScalarFeedback
from fedpipe.ports import Approval, MetricEvent, Ports, SecaggCrypter
from fedpipe.request import TrainRequest
from fedpipe.runner import RoundRun, execute_round
from fedpipe.settings import NodeSettings
from fedpipe.training.warm import warm_up_in_background

__all__ = ["FedbiomedNode", "FeedbackMonitor", "Link", "run_fedbiomed_node"]

log = logging.getLogger("fedpipe.node")

STOP_GRACE_SECONDS = 30
"""How long a stopping node waits for the round in hand (plan code that never returns cannot be
interrupted in-process: the node then stops without that round's reply; nothing half-saved, the
state is written last and atomically)."""

MAX_QUEUED_MESSAGES = 256
"""Messages received but not yet handled; past this a message is answered with an error reply."""

MAX_QUEUED_BYTES_FACTOR = 4
"""Received messages wait in at most this many times the message size bound of memory; past it,
a message is answered with an error reply (each may be up to ``max_message_bytes`` long)."""

MAX_QUEUED_ROUNDS = 4
"""Train requests waiting for the round worker (each holds its decoded parameters); past this a
train request is answered with an error reply instead of queued. A Fed-BioMed researcher sends one
per node and round, so only a misbehaving one meets the bound."""

_STOPPING_TEXT = "The node is stopping; this round was not run."

_MANAGEMENT = frozenset(
    {"SearchRequest", "ListRequest", "PingRequest", "ApprovalRequest", "TrainingPlanStatusRequest"}
)
_SECAGG_SETUP = frozenset(
    {"SecaggRequest", "AdditiveSSSetupRequest", "SecaggDeleteRequest", "OverlayMessage"}
)

_EXPIRY_CHECK_SECONDS = 1.0
"""How often the dispatcher looks for secure-aggregation set-ups that ran out of time."""


class Link(Protocol):
    """What the node needs from its connection to the researcher (``ResearcherLink`` in production)."""

    def send(self, message: bytes) -> bool:
        """Send one application message as a ReplyTask stream; False once retries are spent."""
        ...

    def feedback(self, item: ScalarFeedback | LogFeedback) -> bool:
        """Send one Feedback message; False when it could not be sent."""
        ...


class FeedbackMonitor:
    """The Monitor port over Fed-BioMed's Feedback RPC: each metric report is one Scalar."""

    def __init__(self, link: Link, node_name: str) -> None:
        """Report through ``link``, naming the node ``node_name``."""
        self._link = link
        self._node_name = node_name

    def report(self, event: MetricEvent) -> None:
        """Send ``event`` as Scalar feedback (a lost scalar never fails the round)."""
        self._link.feedback(scalar_of(event, node_name=self._node_name))


class FedbiomedNode:
    """Answers a Fed-BioMed researcher's messages with fedpipe's stores and rounds."""

    def __init__(
        self,
        node: Node,
        link: Link,
        *,
        researcher_id: str,
        node_name: str,
        max_message_bytes: int,
        insecure_validation: bool = True,
    ) -> None:
        """Serve ``node``'s stores and rounds to the researcher ``researcher_id`` over ``link``.

        ``insecure_validation``: send the secure-aggregation validation factor that 6.4.1's
        researcher checks by default (see ``fedpipe.fedbiomed.secure`` for what it reveals).
        """
        self.node = node
        self.link = link
        self.settings: NodeSettings = node.settings
        self.researcher_id = researcher_id
        self.node_name = node_name
        self.max_message_bytes = max_message_bytes
        self.ports: Ports = evolve(
            node.ports,
            exchange=OfflineExchange(),
            plans=FedbiomedPlanLoader(),
            monitor=FeedbackMonitor(link, node_name),
        )
        self.insecure_validation = insecure_validation
        self.secagg_store: SecaggStore = node.secagg_keys
        self.secagg = SecaggSetups.open(
            node_id=self.settings.node_id, node_name=node_name, store=self.secagg_store
        )
        self.jl_crypter = compatible_crypter(node.ports.crypter)
        self._inbox: queue.Queue[tuple[float, bytes] | None] = queue.Queue(MAX_QUEUED_MESSAGES)
        self._inbox_bytes = 0  # bytes waiting in the inbox, under _inbox_lock
        self._inbox_lock = threading.Lock()
        self._max_inbox_bytes = MAX_QUEUED_BYTES_FACTOR * max_message_bytes
        # bounded by the dispatcher (its only producer) so that stop's sentinel never blocks
        self._rounds: queue.Queue[tuple[float, Message] | None] = queue.Queue()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- receiving ------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Queue one message from the transport (called on its thread; never raises).

        Past ``MAX_QUEUED_MESSAGES`` waiting messages, or ``MAX_QUEUED_BYTES_FACTOR`` times the
        message bound of waiting bytes, the message is answered with an error reply instead.
        """
        with self._inbox_lock:
            fits = self._inbox_bytes + len(data) <= self._max_inbox_bytes
            if fits:
                try:
                    self._inbox.put_nowait((time.perf_counter(), data))
                except queue.Full:
                    fits = False
                else:
                    self._inbox_bytes += len(data)
        if not fits:
            log.error(
                "dropped a message of %d bytes: %d messages (%d bytes) are already waiting",
                len(data),
                self._inbox.qsize(),
                self._inbox_bytes,
            )
            self._answer_undecoded(data, "The node is overloaded; the request was not handled.")

    def start(self) -> None:
        """Start the dispatcher and the round worker."""
        warm_up_in_background()
        for target, name in (
            (self._dispatch_loop, "fedbiomed-dispatch"),
            (self._round_loop, "fedbiomed-rounds"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the round in hand: it finishes and is answered; waiting ones are refused.

        Messages already received are still handled (management ones answered, train requests
        answered with an error reply); ``timeout`` bounds each thread's join.
        """
        self._stopping.set()
        self._inbox.put(None)
        dispatcher = [t for t in self._threads if t.name == "fedbiomed-dispatch"]
        for thread in dispatcher:
            # every train request the dispatcher queues goes in before the rounds' sentinel
            thread.join(timeout)
        self._rounds.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def busy(self) -> bool:
        """Whether a thread of this node is still running (after ``stop``: a round that did not end)."""
        return any(thread.is_alive() for thread in self._threads)

    # --- dispatching ----------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while True:
            try:
                item = self._inbox.get(timeout=_EXPIRY_CHECK_SECONDS)
            except queue.Empty:
                self._expire_setups()
                continue
            self._expire_setups()
            if item is None:
                return
            with self._inbox_lock:
                self._inbox_bytes -= len(item[1])
            try:
                self.handle(item[1], arrived=item[0])
            except Exception:  # the dispatcher must outlive a bug in one handler
                log.exception("bug while handling a researcher message")

    def _expire_setups(self) -> None:
        if self.secagg.waiting:
            for reply in self.secagg.expire():
                self._send(*reply)

    def handle(self, data: bytes, *, arrived: float | None = None) -> None:
        """Decode one message and answer it (management), queue it (training) or refuse it."""
        decoded = decode_message(data, max_bytes=self.max_message_bytes)
        if isinstance(decoded, Failure):
            self._refuse(decoded.failure())
            return
        message = decoded.unwrap()
        researcher = message.fields.get("researcher_id")
        if researcher != self.researcher_id:
            # the pinned certificate names the researcher; anything else is not ours to serve
            log.error(
                "refused a %s from researcher %r: this node serves %r (the pinned certificate's)",
                message.kind,
                researcher,
                self.researcher_id,
            )
            return
        if message.kind == "TrainRequest":
            self._queue_round(message, arrived)
            return
        if message.kind in _SECAGG_SETUP:
            try:
                outgoing = self.secagg.handle(message)
            except Exception:  # a bug in a set-up must not end the dispatcher, nor go unanswered
                log.exception("could not handle a %s", message.kind)
                outgoing = (
                    []
                    if message.kind == "OverlayMessage"
                    else [
                        (
                            "ErrorMessage",
                            error_message(
                                message,
                                node_id=self.settings.node_id,
                                node_name=self.node_name,
                                extra_msg="The node could not set secure aggregation up.",
                            ),
                        )
                    ]
                )
            for kind, fields in outgoing:
                self._send(kind, fields)
            return
        try:
            reply = self._management(message)
        except Exception:  # a store's bug: the researcher still gets an answer, never silence
            log.exception("could not answer a %s", message.kind)
            reply = (
                "ErrorMessage",
                error_message(
                    message,
                    node_id=self.settings.node_id,
                    node_name=self.node_name,
                    extra_msg=f"The node could not handle this `{message.kind}`.",
                ),
            )
        if reply is not None:
            self._send(*reply)

    def _queue_round(self, message: Message, arrived: float | None) -> None:
        """Hand a train request to the round worker, or refuse it when stopping or too many wait."""
        if self._stopping.is_set():
            self._refuse_round(message, _STOPPING_TEXT)
            return
        if self._rounds.qsize() >= MAX_QUEUED_ROUNDS:
            log.error(
                "refused a train request: %d are already waiting for the round worker", MAX_QUEUED_ROUNDS
            )
            self._refuse_round(
                message,
                f"The node is busy: {MAX_QUEUED_ROUNDS} train requests are already waiting; this round was not run.",
            )
            return
        self._rounds.put((time.perf_counter() if arrived is None else arrived, message))

    def _refuse_round(self, message: Message, text: str) -> None:
        self._send(
            "ErrorMessage",
            error_message(
                message,
                node_id=self.settings.node_id,
                node_name=self.node_name,
                extra_msg=text,
                errnum="FB300",
            ),
        )

    def _management(self, message: Message) -> tuple[str, dict[str, Any]] | None:
        ids = {"node_id": self.settings.node_id, "node_name": self.node_name}
        kind = message.kind
        if kind == "PingRequest":
            return "PingReply", ping_reply(message, **ids)
        if kind == "SearchRequest":
            return "SearchReply", search_reply(message, self.node.datasets.list(), **ids)
        if kind == "ListRequest":
            return "ListReply", list_reply(message, self.node.datasets.list(), **ids)
        if kind == "TrainingPlanStatusRequest":
            return "TrainingPlanStatusReply", self._plan_status(message, ids)
        if kind == "ApprovalRequest":
            return "ApprovalReply", self._approval(message, ids)
        return "ErrorMessage", error_message(
            message,
            **ids,
            extra_msg=f"This node does not handle `{kind}` requests.",
        )

    def _plan_status(self, message: Message, ids: Mapping[str, str]) -> dict[str, Any]:
        source = str(message.fields.get("training_plan", ""))
        obliged = self.settings.training_plan_approval
        found = self.node.approvals.status(source)
        if isinstance(found, Failure):
            return status_reply(
                message,
                **ids,
                approval_obligation=obliged,
                status=None,
                plan_id=None,
                error=found.failure().public,
            )
        record = self.node.approvals.find(source) if found.unwrap() is not Approval.NOT_REGISTERED else None
        return status_reply(
            message,
            **ids,
            approval_obligation=obliged,
            status=found.unwrap(),
            plan_id=record.plan_id if record else None,
        )

    def _approval(self, message: Message, ids: Mapping[str, str]) -> dict[str, Any]:
        """Register the researcher's plan as pending, source kept for the owner's review."""
        from fedpipe.bootstrap import NodeAdminError

        source = str(message.fields.get("training_plan", ""))
        description = str(message.fields.get("description", ""))
        try:
            existing = self.node.approvals.find(source)  # raises for a source that does not parse
            if existing is not None:
                return approval_reply(
                    message,
                    **ids,
                    success=True,
                    plan_id=existing.plan_id,
                    text=f"This training plan is already registered here ({existing.status.value}).",
                )
            record = self.node.approvals.register(
                source,
                description=description[:1000],
                status=Approval.PENDING,
                researcher_id=self.researcher_id,
                notes="approval requested by the researcher",
            )
        except NodeAdminError as err:
            log.warning("approval request refused: %s", err)
            return approval_reply(
                message,
                **ids,
                success=False,
                plan_id=None,
                text="The training plan could not be registered for review"
                + (" (it does not parse)." if isinstance(canonical_source(source), Failure) else "."),
            )
        log.info(
            "training plan %s registered as Pending for review (`fedpipe plans show --id %s`)",
            record.plan_id,
            record.plan_id,
        )
        return approval_reply(message, **ids, success=True, plan_id=record.plan_id, text="")

    # --- rounds ---------------------------------------------------------------------------------

    def _round_loop(self) -> None:
        while True:
            item = self._rounds.get()
            if item is None:
                return
            arrived, message = item
            if self._stopping.is_set():
                self._refuse_round(message, _STOPPING_TEXT)
                continue
            try:
                self.train(message, arrived=arrived)
            except BaseException:  # a plan may raise SystemExit here: the worker must live on
                log.exception("a train request could not be handled")
                self._send(
                    "ErrorMessage",
                    error_message(
                        message,
                        node_id=self.settings.node_id,
                        node_name=self.node_name,
                        extra_msg="The node could not run this round.",
                    ),
                )

    def train(self, message: Message, *, arrived: float | None = None) -> RoundRun | None:
        """Run one TrainRequest and send its TrainReply (or the error reply); return the run."""
        ids = {"node_id": self.settings.node_id, "node_name": self.node_name}
        mapped = train_request_of(message)
        if isinstance(mapped, Failure):
            error = mapped.failure()
            log.error("train request refused: %s", error.log_line())
            refusal = refusal_reply(message, error, **ids)
            self._send(refusal.kind, refusal.fields)
            return None
        request, inline = mapped.unwrap()
        log.info(
            "round %d of experiment %s started (%s)",
            request.round,
            request.job_id,
            "training" if request.training else "validation only",
        )
        started = time.perf_counter()
        run = execute_round(request, self.ports, self.settings, rounds=self._selector(inline))
        ran = time.perf_counter()
        reply = round_reply(message, run, **ids)
        for note in reply.notes:
            log.warning("experiment %s: %s", request.job_id, note)
        self._tell_researcher(request, run, reply.notes)
        self._send(reply.kind, reply.fields)
        done = time.perf_counter()
        # the masks of the next round depend only on the key and the round: compute them now,
        # while the researcher aggregates (nothing happens after a plain or LOM round)
        prefetch = getattr(self.jl_crypter, "prefetch_after_reply", None)
        if callable(prefetch):
            prefetch(claimed_rounds=self.secagg_store.claimed_rounds)
        outcome = "success" if run.reply.success else f"failed ({run.reply.msg})"
        training = dict(run.step_seconds).get("train_model", 0.0)
        log.info(
            "round %d of experiment %s: %s; replied %.3f s after the request arrived "
            "(waited %.3f s, round %.3f s of which training %.3f s, reply %.3f s)",
            request.round,
            request.job_id,
            outcome,
            done - (arrived if arrived is not None else started),
            started - (arrived if arrived is not None else started),
            ran - started,
            training,
            done - ran,
        )
        return run

    def _selector(self, inline: InlineRound) -> Callable[[Ports, TrainRequest], Sequence[NamedStep]]:
        def rounds(ports: Ports, request: TrainRequest) -> Sequence[NamedStep]:
            if request.training:
                return fedbiomed_round(
                    ports,
                    inline,
                    secagg_store=self.secagg_store,
                    crypter=self.jl_crypter,
                    insecure_validation=self.insecure_validation,
                )
            return fedbiomed_validation_round(ports, inline, secagg_store=self.secagg_store)

        return rounds

    def _tell_researcher(self, request: TrainRequest, run: RoundRun, reply_notes: Sequence[str]) -> None:
        """Log feedback to the researcher's console: a failed round's public text, the round's notes.

        Only texts meant for the researcher (``RoundError.public``, round notes) are sent.
        """
        if isinstance(run.result, Failure):
            self._log_feedback("ERROR", f"Round {request.round} failed: {run.result.failure().public}")
            return
        for note in (*run.result.unwrap().notes, *reply_notes):
            self._log_feedback("WARNING", f"Round {request.round}: {note}")

    def _log_feedback(self, level: str, text: str) -> None:
        record = {
            "asctime": time.strftime("%Y-%m-%d %H:%M:%S"),
            "node_id": self.settings.node_id,
            "name": "fedpipe.node",
            "level": level,
            "message": printable(text, limit=2000),
        }
        self.link.feedback(LogFeedback(node_id=self.settings.node_id, level=level, msg=json.dumps(record)))

    # --- sending --------------------------------------------------------------------------------

    def _send(self, kind: str, fields: Mapping[str, Any]) -> None:
        try:
            data = encode_message(kind, fields)
        except Exception:  # a reply we cannot encode is our bug; answer with the error reply
            log.exception("cannot encode a %s", kind)
            if kind == "ErrorMessage":
                return
            fallback = {k: fields.get(k) for k in ("request_id", "node_id", "node_name")}
            fallback["researcher_id"] = fields.get("researcher_id") or self.researcher_id
            data = encode_message(
                "ErrorMessage",
                {**fallback, "extra_msg": "The node could not encode its reply.", "errnum": "FB301"},
            )
        if not self.link.send(data):
            log.error("could not send a %s to the researcher", kind)

    def _refuse(self, error: MessageError) -> None:
        log.error("refused a researcher message: %s", error.reason)
        if error.request_id is None:
            return  # nothing to answer: the researcher cannot be waiting for it
        if error.researcher_id is not None and error.researcher_id != self.researcher_id:
            # as for a readable message: another researcher's request is not ours to answer
            log.error("not answered: it names researcher %r, not %r", error.researcher_id, self.researcher_id)
            return
        self._send(
            "ErrorMessage",
            error_message(
                error,
                node_id=self.settings.node_id,
                node_name=self.node_name,
                extra_msg=f"The node could not read the request: {error.reason}",
            ),
        )

    def _answer_undecoded(self, data: bytes, text: str) -> None:
        decoded = decode_message(data, max_bytes=self.max_message_bytes)
        request_id = (
            decoded.unwrap().fields.get("request_id")
            if isinstance(decoded, Success)
            else decoded.failure().request_id
        )
        if not isinstance(request_id, str):
            return
        error = MessageError(reason=text, request_id=request_id, researcher_id=self.researcher_id)
        self._send(
            "ErrorMessage",
            error_message(error, node_id=self.settings.node_id, node_name=self.node_name, extra_msg=text),
        )


def compatible_crypter(crypter: SecaggCrypter) -> SecaggCrypter:
    """The Joye-Libert crypter of a Fed-BioMed federation: compatible packing, no checksum slot,
    6.4.1's quantisation (the node contributes exactly what a stock node would).

    It shares ``crypter``'s mask workers (masks do not depend on the packing), so closing the
    node's crypter stops both. Without the secagg extra, ``crypter`` itself (it refuses).
    """
    try:
        from fedpipe.secagg import Encoding, JoyeLibertCrypter, MaskPool
        from fedpipe.secagg.params import Quantization
    except ImportError:
        return crypter
    pool = getattr(crypter, "pool", None)
    return JoyeLibertCrypter(
        encoding=Encoding(checksum=False, quantization=Quantization.FEDBIOMED),
        pool=pool if isinstance(pool, MaskPool) else MaskPool(),
    )


def run_fedbiomed_node(
    root: Path | str,
    *,
    address: str,
    node_id: str | None = None,
    node_name: str | None = None,
    certificate_file: Path | None = None,
    fingerprint: str | None = None,
    stop: threading.Event | None = None,
    insecure_validation: bool = True,
) -> int:
    """Serve a Fed-BioMed 6.x researcher at ``address`` (HOST:PORT) until stopped: 0 on a clean stop.

    The researcher's certificate must be pinned (``certificate_file``, or ``fingerprint``
    confirmed once and stored in the root); the node dials exactly the host the certificate
    names. Returns 2 with a one-line message on stderr's log for a misconfiguration (unreachable
    researcher, certificate mismatch, wrong host name, bad address).
    """
    from fedpipe.adapters.lock import NodeLock
    from fedpipe.fedbiomed.tls import check_owner_choice, pin_researcher, wait_reachable
    from fedpipe.fedbiomed.transport import ResearcherLink

    stop = stop or threading.Event()
    host, port = parse_address(address)
    fresh = not (Path(root) / SETTINGS_FILE).exists()
    # a new root gets an id in Fed-BioMed's form; an existing one keeps its own
    settings = load_or_create_settings(root, node_id=node_id or (f"NODE_{uuid.uuid4()}" if fresh else None))
    name = node_name or settings.node_id
    with NodeLock(settings.root):
        try:
            socket.getaddrinfo(host, port)
        except OSError:
            log.error("cannot resolve the researcher's host name %r", host)
            return 2
        offline = check_owner_choice(certificate_file, fingerprint)
        if isinstance(offline, Failure):  # a misconfiguration is told now, not once the researcher is up
            log.error("%s", offline.failure())
            return 2
        if not wait_reachable(host, port, stop, log=log):
            return 0  # stopped while waiting
        pinned = pin_researcher(
            settings.root, host, port, certificate_file=certificate_file, fingerprint=fingerprint
        )
        if isinstance(pinned, Failure):
            log.error("%s", pinned.failure())
            return 2
        researcher = pinned.unwrap()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
        max_bytes = min(settings.max_download_bytes, 100 * 1024**2)
        holder: list[FedbiomedNode] = []
        link = ResearcherLink(
            researcher=researcher,
            node_id=settings.node_id,
            max_message_bytes=max_bytes,
            on_message=lambda data: holder[0].receive(data),
            log=log,
        )
        try:
            with Node.open(settings, exchange=OfflineExchange()) as node:
                removed = node.clean_workspaces()
                if removed:
                    log.warning("removed %d round workspace(s) left by an earlier run", removed)
                server = FedbiomedNode(
                    node,
                    link,
                    researcher_id=researcher.researcher_id,
                    node_name=name,
                    max_message_bytes=max_bytes,
                    insecure_validation=insecure_validation,
                )
                holder.append(server)
                server.start()
                log.info(
                    "node %s (%s) serving researcher %s at %s:%d",
                    settings.node_id,
                    name,
                    researcher.researcher_id,
                    host,
                    port,
                )
                try:
                    link.run(stop)
                finally:
                    server.stop(timeout=STOP_GRACE_SECONDS)
                    if server.busy():
                        log.warning(
                            "a round was still running %d s after the stop; the node stops without its reply",
                            STOP_GRACE_SECONDS,
                        )
        finally:
            link.close()
    log.info("node %s stopped", settings.node_id)
    return 0


def parse_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` too); ValueError with a one-line reason otherwise.

    >>> parse_address("127.0.0.1:50051"), parse_address("[::1]:50051")
    (('127.0.0.1', 50051), ('::1', 50051))
    >>> parse_address("http://x:1")
    Traceback (most recent call last):
    ValueError: the researcher address must be HOST:PORT (e.g. 127.0.0.1:50051), not 'http://x:1'
    """
    host, sep, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    ok = bool(sep and host and port_text.isdigit() and "/" not in host and 0 < int(port_text) < 65536)
    if not ok:
        raise ValueError(f"the researcher address must be HOST:PORT (e.g. 127.0.0.1:50051), not {address!r}")
    return host, int(port_text)
