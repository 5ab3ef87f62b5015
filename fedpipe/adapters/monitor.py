"""``Monitor`` adapters: POST each metric event to the researcher from a background thread, or call back.

``HttpMonitor.report`` only puts the event on a bounded queue, so training never waits on the
network; a worker thread posts the events in order. When the queue is full or the researcher
cannot be reached, events are dropped and the node log (logger ``fedpipe.node``) says so, once per
outage, with a count when it ends. Events are always valid JSON: a NaN or infinite metric (a
diverging loss) is sent as the string "NaN", "Infinity" or "-Infinity", as the server stores it.
"""

import contextlib
import json
import logging
import math
import queue
import ssl
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import httpx

from fedpipe.adapters.http_exchange import CLIENT_LIMITS, ssl_context
from fedpipe.ports import MetricEvent

__all__ = ["CallbackMonitor", "HttpMonitor"]

log = logging.getLogger("fedpipe.node")

_STOP = object()


def _finite(number: float) -> float | str:
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return number


def _jsonable(value: Any) -> Any:
    """JSON for numpy/torch scalars that slip into metrics (``float()`` of them), else their text."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return str(value)
    if not math.isfinite(number):
        return _finite(number)
    return int(number) if number.is_integer() else number


def _text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (echoed from a request): no JSON reader takes it
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def _strict(value: Any) -> Any:
    """``value`` with non-finite floats replaced by their names and lone surrogates by "?" (strict JSON)."""
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {_text(k) if isinstance(k, str) else k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def event_body(event: MetricEvent) -> bytes:
    """The JSON body for one event: the reference's AddScalarReply fields.

    Non-finite floats become the strings "NaN", "Infinity" and "-Infinity", and a lone surrogate
    in a text becomes "?", so the body is always strict JSON the server accepts.

    >>> from fedpipe.ports import MetricEvent
    >>> event_body(MetricEvent(node_id="n", job_id="j", researcher_id="r", round=1,
    ...                        metric={"loss": 0.5}, iteration=3))[:40]
    b'{"node_id": "n", "job_id": "j", "researc'
    >>> b'"loss": "NaN"' in event_body(MetricEvent(node_id="n", job_id="j", researcher_id="r",
    ...                                          round=1, metric={"loss": float("nan")}, iteration=1))
    True
    """
    return json.dumps(_strict(event.to_dict()), default=_jsonable, allow_nan=False).encode()


class HttpMonitor:
    """Posts ``MetricEvent.to_dict()`` as JSON to ``url`` from a daemon thread (a bounded queue).

    ``report`` never blocks and never raises. ``flush`` waits (bounded) until the queue is empty;
    ``close`` flushes and stops the thread. ``dropped`` counts the events that were not delivered.
    ``headers`` go with every post (the node's ``Authorization: Bearer ...``); ``verify`` is
    httpx's TLS verification (True, a CA file path, or an ``ssl.SSLContext``). Both apply to the
    client the monitor makes, not to a ``client`` passed in.
    """

    def __init__(
        self,
        url: str,
        *,
        queue_size: int = 1000,
        timeout: float = 2.0,
        client: httpx.Client | None = None,
        headers: dict[str, str] | None = None,
        verify: ssl.SSLContext | str | bool = True,
    ) -> None:
        self.url = url
        self.dropped = 0
        self.sent = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, queue_size))
        self._owns_client = client is None
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(timeout),
            headers=headers or {},
            verify=ssl_context(verify),
            follow_redirects=False,
            trust_env=False,  # the token goes to this server only, never through an environment proxy
            limits=CLIENT_LIMITS,
        )
        self._lock = threading.Lock()
        self._outage = False
        self._outage_drops = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="fedpipe-monitor", daemon=True)
        self._thread.start()

    def report(self, event: MetricEvent) -> None:
        """Queue ``event`` for sending; drop it (and say so) when the queue is full."""
        if self._closed:
            self._drop("the monitor is closed")
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._drop("the researcher is not keeping up (queue full)")

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event was sent or dropped; tell whether that happened in time."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Flush (bounded by ``timeout``), stop the worker and close the connection pool if owned."""
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout)
        self._thread.join(timeout)
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> "HttpMonitor":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _drop(self, why: str) -> None:
        with self._lock:
            self.dropped += 1
            self._outage_drops += 1
            first = not self._outage
            self._outage = True
        if first:
            log.warning("monitor: dropping metric events, %s (%s)", why, self.url)

    def _recovered(self) -> None:
        with self._lock:
            was, lost = self._outage, self._outage_drops
            self._outage, self._outage_drops = False, 0
            self.sent += 1
        if was:
            log.warning("monitor: researcher reachable again; %d metric event(s) were dropped", lost)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                self._send(item)
            except Exception:  # the worker must outlive any bad event, or flush() would wait forever
                log.warning("monitor: could not send a metric event; dropped", exc_info=True)
                with self._lock:
                    self.dropped += 1
            finally:
                self._queue.task_done()

    def _send(self, event: object) -> None:
        if not isinstance(event, MetricEvent):
            raise TypeError(f"not a MetricEvent: {type(event).__name__}")
        try:
            response = self._client.post(
                self.url, content=event_body(event), headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as err:
            self._drop(f"the researcher cannot be reached: {type(err).__name__}")
            return
        if response.status_code >= 400:
            self._drop(f"the researcher answered HTTP {response.status_code}")
            return
        self._recovered()


class CallbackMonitor:
    """Hands each event to ``fn`` in the training thread; an exception from ``fn`` is logged, not raised."""

    def __init__(self, fn: Callable[[MetricEvent], object]) -> None:
        self._fn = fn

    def report(self, event: MetricEvent) -> None:
        """Call ``fn(event)``; never raises."""
        try:
            self._fn(event)
        except Exception:  # the callback is foreign code; a broken callback must not stop training
            log.warning("monitor: the metric callback raised; event dropped", exc_info=True)
