"""Monitor contract (HTTP, callback, fake) and HttpMonitor under an unreachable or slow researcher."""

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from attrs import frozen

from fedpipe.adapters.clock import SystemClock
from fedpipe.adapters.monitor import CallbackMonitor, HttpMonitor
from fedpipe.ports import Clock, MetricEvent, Monitor
from fedpipe.server import create_app
from fedpipe.server.auth import bearer
from fedpipe.server.testing import running_app
from fedpipe.testing.fakes import FakeClock, RecordingMonitor
from tests.conftest import Fault, FaultProxy


def event(i: int, **metric: float) -> MetricEvent:
    return MetricEvent(
        node_id="node-1",
        job_id="job-1",
        researcher_id="r",
        round=2,
        metric=metric or {"loss": 1.0 / (i + 1)},
        iteration=i,
        epoch=1,
        train=True,
        batch_samples=8,
        num_batches=10,
        total_samples=80,
    )


@frozen
class Subject:
    monitor: Monitor
    received: Callable[[], list[dict[str, Any]]]


@pytest.fixture(params=["http", "callback", "fake"])
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    if request.param == "fake":
        fake = RecordingMonitor()
        yield Subject(fake, lambda: [e.to_dict() for e in fake.events])
    elif request.param == "callback":
        got: list[dict[str, Any]] = []
        yield Subject(CallbackMonitor(lambda e: got.append(e.to_dict())), lambda: got)
    else:
        app, node, researcher = served_app(tmp_path)
        with running_app(app) as url, HttpMonitor(f"{url}/monitor", headers=node) as monitor:

            def received() -> list[dict[str, Any]]:
                assert monitor.flush(10)
                return httpx.get(f"{url}/monitor", headers=researcher).json()

            yield Subject(monitor, received)


def served_app(root: Path) -> tuple[Any, dict[str, str], dict[str, str]]:
    """A server app, node-1's headers and the headers of a researcher who posted a task of job-1."""
    app = create_app(root)
    node = bearer(app.state.tokens.issue("node", "node-1").token)
    researcher = bearer(app.state.tokens.issue("researcher", "r").token)
    app.state.board.post("r", "node-1", b'{"job_id":"job-1"}', "job-1")
    return app, node, researcher


def test_reported_events_reach_the_researcher_in_order(subject: Subject) -> None:
    events = [event(i) for i in range(20)]
    for e in events:
        subject.monitor.report(e)
    assert subject.received() == [e.to_dict() for e in events]


def test_every_reference_field_is_forwarded(subject: Subject) -> None:
    subject.monitor.report(event(0))
    (got,) = subject.received()
    assert got["command"] == "add_scalar"
    assert set(got) >= {"node_id", "job_id", "researcher_id", "train", "test", "metric", "iteration", "epoch"}


def test_numpy_scalars_in_metrics_are_sent_as_numbers(tmp_path: Path) -> None:
    app, node, researcher = served_app(tmp_path)
    with running_app(app) as url, HttpMonitor(f"{url}/monitor", headers=node) as monitor:
        monitor.report(event(0, loss=np.float32(0.25), n=np.int64(3)))  # type: ignore[arg-type]
        assert monitor.flush(10)
        assert httpx.get(f"{url}/monitor", headers=researcher).json()[0]["metric"] == {"loss": 0.25, "n": 3}


def test_non_finite_metrics_reach_the_researcher_as_strings(tmp_path: Path) -> None:
    app, node, researcher = served_app(tmp_path)
    with running_app(app) as url, HttpMonitor(f"{url}/monitor", headers=node) as monitor:
        monitor.report(event(0, loss=float("nan"), up=float("inf"), down=np.float64("-inf")))  # type: ignore[arg-type]
        assert monitor.flush(10)
        assert (monitor.sent, monitor.dropped) == (1, 0)
        got = httpx.get(f"{url}/monitor", headers=researcher)
    assert got.status_code == 200
    assert got.json()[0]["metric"] == {"loss": "NaN", "up": "Infinity", "down": "-Infinity"}


def test_a_lone_surrogate_in_an_event_is_replaced_not_dropped(tmp_path: Path) -> None:
    app, node, researcher = served_app(tmp_path)
    with running_app(app) as url, HttpMonitor(f"{url}/monitor", headers=node) as monitor:
        monitor.report(event(0, **{"acc\ud800": 1.0}))
        assert monitor.flush(10)
        assert monitor.sent == 1
        assert list(httpx.get(f"{url}/monitor", headers=researcher).json()[0]["metric"]) == ["acc?"]


def test_an_event_sent_without_a_credential_is_refused_and_counted_dropped(tmp_path: Path) -> None:
    app, _, _ = served_app(tmp_path)
    with running_app(app) as url, HttpMonitor(f"{url}/monitor") as monitor:
        monitor.report(event(0))
        assert monitor.flush(10)
    assert (monitor.sent, monitor.dropped) == (0, 1)  # no token: 401, dropped and logged


def test_unreachable_researcher_drops_without_blocking_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caplog.set_level(logging.WARNING, logger="fedpipe.node")
    with HttpMonitor(f"http://127.0.0.1:{port}/monitor", queue_size=4, timeout=0.5) as monitor:
        start = time.perf_counter()
        for i in range(200):
            monitor.report(event(i))
        assert time.perf_counter() - start < 0.5
        assert monitor.flush(10)
    assert monitor.dropped == 200
    assert monitor.sent == 0
    warnings = [r for r in caplog.records if r.name == "fedpipe.node" and "dropping" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not once per event


def test_slow_researcher_never_blocks_training(proxy: FaultProxy, node_headers: dict[str, str]) -> None:
    proxy.always = Fault("delay", seconds=0.3)
    with HttpMonitor(f"{proxy.url}/monitor", queue_size=2, timeout=5, headers=node_headers) as monitor:
        start = time.perf_counter()
        for i in range(50):
            monitor.report(event(i))
        assert time.perf_counter() - start < 0.2
        assert monitor.flush(15)
    assert monitor.dropped >= 45
    assert monitor.sent + monitor.dropped == 50


def test_recovery_is_logged_with_the_count_of_dropped_events(
    proxy: FaultProxy, node_headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fedpipe.node")
    proxy.script(Fault("status", status=503), Fault("status", status=503))
    with HttpMonitor(f"{proxy.url}/monitor", headers=node_headers) as monitor:
        for i in range(3):
            monitor.report(event(i))
        assert monitor.flush(10)
    assert (monitor.dropped, monitor.sent) == (2, 1)
    assert any("2 metric event(s) were dropped" in r.getMessage() for r in caplog.records)


def test_report_after_close_is_dropped_not_raised() -> None:
    monitor = HttpMonitor("http://127.0.0.1:1/monitor")
    monitor.close()
    monitor.report(event(0))
    assert monitor.dropped == 1


def test_raising_callback_is_logged_and_swallowed(caplog: pytest.LogCaptureFixture) -> None:
    def broken(e: MetricEvent) -> None:
        raise RuntimeError("plot window closed")

    caplog.set_level(logging.WARNING, logger="fedpipe.node")
    CallbackMonitor(broken).report(event(0))
    assert any("callback raised" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("clock", [SystemClock(), FakeClock()], ids=["system", "fake"])
def test_clock_readings_never_go_backwards(clock: Clock) -> None:
    wall = [clock.perf_counter() for _ in range(5)]
    cpu = [clock.process_time() for _ in range(5)]
    assert wall == sorted(wall)
    assert cpu == sorted(cpu)
