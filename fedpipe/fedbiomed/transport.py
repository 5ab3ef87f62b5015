"""The node's gRPC link to a Fed-BioMed 6.4.1 researcher: the long poll, replies and feedback (grpcio).

The researcher is the server; the node dials it over TLS with the pinned certificate as the only
trust root (``tls.pin_researcher``) and the certificate's own name as the host. Calls are grpcio's
generic ones on the method paths of ``researcher.ResearcherService``, carrying the bytes that
``wire`` encodes, so no protobuf runtime is needed.

- ``run(stop)`` keeps one ``GetTaskUnary`` poll open at all times, as the researcher counts a node
  as connected only while it polls: each task's chunks are reassembled under the node's byte
  bound, handed to ``on_message`` (which only queues it) and the node polls again at once. A
  stream that breaks the framing is dropped with one log line; the link keeps going.
- A failed poll is retried once at once (the researcher's server ends its connections every hour,
  which is no outage), then with exponential backoff from ``retry_delay`` up to
  ``max_retry_delay``; an outage is logged once when it starts and once when the channel is ready
  again, never per retry.
- ``send`` streams one reply as ``ReplyTask`` chunks, retried as Fed-BioMed retries (5 times);
  ``feedback`` sends one ``Feedback`` call. Both are thread-safe, return a bool and never raise.

grpcio's exceptions are translated here and nowhere else.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import grpc
from returns.result import Success

from fedpipe.fedbiomed.tls import PinnedResearcher, fetch_certificate, fingerprint
from fedpipe.fedbiomed.wire import (
    LogFeedback,
    Reassembler,
    ScalarFeedback,
    decode_chunk,
    encode_chunk,
    encode_feedback,
    encode_task_request,
    iter_chunks,
)

__all__ = ["FEEDBACK_METHOD", "GET_TASK_METHOD", "REPLY_METHOD", "ResearcherLink", "channel_options"]

GET_TASK_METHOD: Final = "/researcher.ResearcherService/GetTaskUnary"
REPLY_METHOD: Final = "/researcher.ResearcherService/ReplyTask"
FEEDBACK_METHOD: Final = "/researcher.ResearcherService/Feedback"

_MAX_GRPC_MESSAGE: Final = 100 * 1024 * 1024
_STOP_CHECK: Final = 0.2  # how often the poll watcher looks at ``stop``


def channel_options() -> list[tuple[str, int]]:
    """The channel options of Fed-BioMed 6.4.1's node (message limits, keepalive, reconnect backoff)."""
    return [
        ("grpc.max_send_message_length", _MAX_GRPC_MESSAGE),
        ("grpc.max_receive_message_length", _MAX_GRPC_MESSAGE),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 2_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        # the channel's own reconnection stays quick, so a send soon finds a restarted researcher
        ("grpc.initial_reconnect_backoff_ms", 1_000),
        ("grpc.min_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


def _why(err: grpc.RpcError) -> str:
    code = err.code() if callable(getattr(err, "code", None)) else None
    details = err.details() if callable(getattr(err, "details", None)) else None
    name = code.name if isinstance(code, grpc.StatusCode) else type(err).__name__
    text = " ".join(str(details).split()) if details else ""
    return f"{name}: {text}" if text else name


class ResearcherLink:
    """The node's connection to one pinned researcher (see the module docstring for the behaviour).

    ``max_message_bytes`` bounds one incoming message (all its chunks); ``on_message`` gets each
    complete one, from the thread that runs ``run``, and must only queue it. ``log`` gets the
    one-line reports (outages, dropped streams, failed sends).
    """

    def __init__(
        self,
        *,
        researcher: PinnedResearcher,
        node_id: str,
        max_message_bytes: int,
        on_message: Callable[[bytes], None],
        log: logging.Logger,
        retry_delay: float = 2.0,
        max_retry_delay: float = 30.0,
        poll_deadline: float = 3600.0,
        send_retries: int = 5,
        send_timeout: float = 600.0,
        feedback_timeout: float = 5.0,
        feedback_pause: float = 10.0,
    ) -> None:
        self.researcher = researcher
        self.node_id = node_id
        self.max_message_bytes = max_message_bytes
        self.on_message = on_message
        self.log = log
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.poll_deadline = poll_deadline
        self.send_attempts = 1 + max(0, send_retries)
        self.send_timeout = send_timeout
        self.feedback_timeout = feedback_timeout
        # after a failed Feedback, items are dropped at once for this long: a researcher that
        # accepts connections but never answers would otherwise hold every batch for the timeout
        self.feedback_pause = feedback_pause
        self._feedback_resume = 0.0  # time.monotonic() before which feedback is dropped
        self._request = encode_task_request(node_id)
        self._credentials = grpc.ssl_channel_credentials(root_certificates=researcher.certificate)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._poll_channel: Any = None
        self._poll_call: Any = None
        self._send_channel: Any = None
        self._outage = False  # True from a logged poll failure until the channel is ready again
        self._feedback_failing = False
        self._unfit_logged = False

    # --- channels --------------------------------------------------------------------------------

    def _new_channel(self) -> Any:
        return grpc.secure_channel(self.researcher.address, self._credentials, options=channel_options())

    def _sender(self) -> Any:
        with self._lock:
            if self._closed.is_set():
                return None
            if self._send_channel is None:
                self._send_channel = self._new_channel()
            return self._send_channel

    def _on_state(self, state: grpc.ChannelConnectivity) -> None:
        # called from a grpc thread whenever the poll channel changes state
        if state is grpc.ChannelConnectivity.READY:
            with self._lock:
                recovered, self._outage = self._outage, False
            if recovered:
                self.log.info("reconnected to the researcher at %s", self.researcher.address)

    # --- the poll --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Keep a poll open and hand over each task until ``stop`` is set (or ``close``); never raises.

        ``stop`` ends the poll in flight promptly (it is cancelled), so ``run`` returns soon after.
        One ``run`` at a time per link.
        """
        finished = threading.Event()
        watcher = threading.Thread(
            target=self._watch, args=(stop, finished), name="fedbiomed-poll-stop", daemon=True
        )
        watcher.start()
        try:
            self._poll_loop(stop)
        finally:
            finished.set()
            with self._lock:
                channel, self._poll_channel = self._poll_channel, None
            if channel is not None:
                channel.close()
            watcher.join(timeout=2 * _STOP_CHECK + 1.0)

    def _stopping(self, stop: threading.Event) -> bool:
        return stop.is_set() or self._closed.is_set()

    def _watch(self, stop: threading.Event, finished: threading.Event) -> None:
        while not (stop.wait(_STOP_CHECK) or self._closed.is_set() or finished.is_set()):
            pass
        self._cancel_poll()

    def _cancel_poll(self) -> None:
        with self._lock:
            call = self._poll_call
        if call is not None:
            call.cancel()

    def _sleep(self, stop: threading.Event, seconds: float) -> None:
        end_steps = max(1, int(seconds / _STOP_CHECK))
        step = seconds / end_steps
        for _ in range(end_steps):
            if self._stopping(stop) or stop.wait(step):
                return

    def _poll_loop(self, stop: threading.Event) -> None:
        delay = self.retry_delay
        failures = 0
        while not self._stopping(stop):
            try:
                failure = self._poll_once(stop)
            except Exception as err:  # last resort: the node keeps polling whatever broke
                self.log.exception("unexpected error while polling the researcher")
                failure = type(err).__name__
            if failure is None:
                failures, delay = 0, self.retry_delay
                continue
            if self._stopping(stop):
                return
            failures += 1
            self._drop_poll_channel()
            if failures == 1:
                continue  # a single failure (say the server recycling its connection) is retried at once
            with self._lock:
                already, self._outage = self._outage, True
            if not already:
                self.log.warning("%s; retrying with backoff", self._describe_outage(failure))
            self._sleep(stop, delay)
            delay = min(delay * 2, self.max_retry_delay)

    def _drop_poll_channel(self) -> None:
        with self._lock:
            channel, self._poll_channel = self._poll_channel, None
        if channel is not None:
            channel.close()

    def _describe_outage(self, failure: str) -> str:
        """One line on why polls fail: unreachable, a certificate other than the pin, or the gRPC error."""
        served = fetch_certificate(self.researcher.host, self.researcher.port, timeout=1.0)
        if not isinstance(served, Success):
            return served.failure()
        now, pinned = fingerprint(served.unwrap()), self.researcher.fingerprint
        if now != pinned:
            return (
                f"the researcher at {self.researcher.address} now serves certificate {now}, "
                f"not the pinned {pinned}: refusing to connect"
            )
        return f"polling the researcher at {self.researcher.address} failed ({failure})"

    def _poll_once(self, stop: threading.Event) -> str | None:
        """One poll: None when it ended normally (tasks handed over or none came), else why it failed."""
        with self._lock:
            if self._poll_channel is None:
                self._poll_channel = self._new_channel()
                self._poll_channel.subscribe(self._on_state, try_to_connect=False)
            channel = self._poll_channel
        try:
            call = channel.unary_stream(GET_TASK_METHOD)(self._request, timeout=self.poll_deadline)
        except ValueError:  # grpcio's word for a channel that close() closed meanwhile
            if self._stopping(stop):
                return None
            raise
        with self._lock:
            self._poll_call = call
        if self._stopping(stop):
            call.cancel()  # stop came between the watcher's look and this call
        reassembler = Reassembler(self.max_message_bytes)
        dropped = False
        try:
            for raw in call:
                problem = self._take(raw, reassembler)
                if problem is not None:
                    self.log.warning("dropped a task stream from the researcher: %s", problem)
                    dropped = True
                    call.cancel()
                    break
                if reassembler.done:  # a stream may carry more than one message
                    reassembler = Reassembler(self.max_message_bytes)
        except grpc.RpcError as err:
            code = err.code() if callable(getattr(err, "code", None)) else None
            if code is grpc.StatusCode.CANCELLED and (dropped or self._stopping(stop)):
                return None
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                self._note_incomplete(reassembler, "the poll reached its deadline")
                return None
            self._note_incomplete(reassembler, "the call failed")
            return _why(err)
        finally:
            with self._lock:
                self._poll_call = None
        if not dropped:
            self._note_incomplete(reassembler, "the stream ended")
        return None

    def _take(self, raw: Any, reassembler: Reassembler) -> str | None:
        """Add one received chunk; hand a completed message over. The reason when the stream is bad."""
        if not isinstance(raw, bytes):
            return "a chunk is not bytes"
        decoded = decode_chunk(raw)
        if not isinstance(decoded, Success):
            return f"a chunk does not parse ({decoded.failure().reason})"
        added = reassembler.add(decoded.unwrap())
        if not isinstance(added, Success):
            return added.failure().reason
        message = added.unwrap()
        if message is None:
            return None
        try:
            self.on_message(message)
        except Exception:  # the handler is the node's; its bug must not end the poll
            self.log.exception("the handler of a researcher message failed")
        return None

    def _note_incomplete(self, reassembler: Reassembler, how: str) -> None:
        if reassembler.pending:
            self.log.warning(
                "dropped a task from the researcher: %s after %d of %d chunks",
                how,
                reassembler.received,
                reassembler.expected or 0,
            )

    # --- replies and feedback ------------------------------------------------------------------

    def send(self, message: bytes) -> bool:
        """Send one reply as a ``ReplyTask`` stream of chunks; True once the researcher took it.

        Retried with backoff up to ``send_retries`` times, as Fed-BioMed retries; False when every
        attempt failed or the link is closed. Thread-safe; never raises.
        """
        delay = self.retry_delay
        for attempt in range(1, self.send_attempts + 1):
            channel = self._sender()
            if channel is None:
                return False
            try:
                chunks: Iterator[bytes] = (encode_chunk(chunk) for chunk in iter_chunks(message))
                channel.stream_unary(REPLY_METHOD)(chunks, timeout=self.send_timeout)
            except grpc.RpcError as err:
                why = _why(err)
            except ValueError as err:  # grpcio's word for a channel closed meanwhile
                if self._closed.is_set():
                    return False
                why = str(err)
            else:
                if attempt > 1:
                    self.log.info("the researcher took the reply at attempt %d", attempt)
                return True
            if attempt == 1 and self.send_attempts > 1:
                self.log.warning(
                    "could not send a reply to the researcher at %s (%s); retrying",
                    self.researcher.address,
                    why,
                )
            if attempt < self.send_attempts:
                if self._closed.wait(delay):
                    return False
                delay = min(delay * 2, self.max_retry_delay)
        self.log.error(
            "dropped a reply of %d bytes: the researcher at %s did not take it in %d attempts (%s)",
            len(message),
            self.researcher.address,
            self.send_attempts,
            why,
        )
        return False

    def feedback(self, item: ScalarFeedback | LogFeedback) -> bool:
        """Send one log or scalar through ``Feedback``; False if it did not go (logged once per streak).

        Thread-safe; never raises.
        """
        try:
            data = encode_feedback(item, self.researcher.researcher_id)
        except ValueError as err:
            with self._lock:
                first, self._unfit_logged = not self._unfit_logged, True
            # a plan that reports an unfit value does so every batch: warn once, then quietly
            self.log.log(
                logging.WARNING if first else logging.DEBUG,
                "dropped a feedback item that does not fit the wire: %s",
                err,
            )
            return False
        with self._lock:
            paused = time.monotonic() < self._feedback_resume
        if paused:
            return False
        channel = self._sender()
        if channel is None:
            return False
        try:
            channel.unary_unary(FEEDBACK_METHOD)(data, timeout=self.feedback_timeout)
        except (grpc.RpcError, ValueError) as err:
            with self._lock:
                first, self._feedback_failing = not self._feedback_failing, True
                self._feedback_resume = time.monotonic() + self.feedback_pause
            if first and not self._closed.is_set():
                why = _why(err) if isinstance(err, grpc.RpcError) else str(err)
                self.log.warning(
                    "could not send feedback to the researcher at %s (%s); dropping it until it works again",
                    self.researcher.address,
                    why,
                )
            return False
        with self._lock:
            recovered, self._feedback_failing = self._feedback_failing, False
        if recovered:
            self.log.info("feedback reaches the researcher at %s again", self.researcher.address)
        return True

    def close(self) -> None:
        """End the link: the poll in flight is cancelled, ``run`` returns, sends fail. Idempotent."""
        self._closed.set()
        self._cancel_poll()
        with self._lock:
            channels = [self._send_channel, self._poll_channel]
            self._send_channel = self._poll_channel = None
        for channel in channels:
            if channel is not None:
                channel.close()
