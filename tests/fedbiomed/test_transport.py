"""The node's gRPC link against a real grpcio researcher over TLS: polls, chunks, replies, feedback, outages.

Every test runs ``ResearcherLink.run`` in a thread against ``ResearcherStub`` (tests/fedbiomed/
researcher_stub.py); waits are bounded conditions on what the stub or the log saw, never sleeps
that a slow machine could outrun.
"""

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator

import pytest
from attrs import define, evolve, field

from fedpipe.fedbiomed.tls import PinnedResearcher, fingerprint
from fedpipe.fedbiomed.transport import ResearcherLink
from fedpipe.fedbiomed.wire import CHUNK_BYTES, Chunk, LogFeedback, ScalarFeedback
from tests.fedbiomed.researcher_stub import ResearcherStub, StubCertificate, make_certificate

HOST = "127.0.0.1"
RID = "RESEARCHER_5f0c"
NODE = "NODE_0d2e"
WAIT = 20.0


@pytest.fixture(scope="module")
def certificate() -> StubCertificate:
    return make_certificate(HOST, RID)


@pytest.fixture
def stub(certificate: StubCertificate) -> Iterator[ResearcherStub]:
    researcher = ResearcherStub(certificate).start()
    yield researcher
    researcher.stop()


class Lines(logging.Handler):
    """The link's log lines, with a way to wait for one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.records.append(record)
            self.changed.notify_all()

    def matching(self, text: str, level: int | None = None) -> list[str]:
        with self.changed:
            return [
                r.getMessage()
                for r in self.records
                if text in r.getMessage() and (level is None or r.levelno == level)
            ]

    def wait_for(self, text: str, timeout: float = WAIT) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: any(text in r.getMessage() for r in self.records), timeout)


@define
class Node:
    """A running link: its received messages, its log and how to stop it."""

    link: ResearcherLink
    lines: Lines
    stop: threading.Event
    thread: threading.Thread
    received: "queue.Queue[bytes]" = field(factory=queue.Queue)

    def next_message(self) -> bytes:
        return self.received.get(timeout=WAIT)


@pytest.fixture
def start_node(certificate: StubCertificate) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def start(
        stub: ResearcherStub,
        *,
        pinned: bytes | None = None,
        on_message: Callable[[bytes], None] | None = None,
        **options: object,
    ) -> Node:
        lines = Lines()
        log = logging.getLogger(f"test.fedbiomed.link.{len(nodes)}.{id(lines)}")
        log.setLevel(logging.DEBUG)
        log.addHandler(lines)
        log.propagate = False
        received: queue.Queue[bytes] = queue.Queue()
        researcher = PinnedResearcher(
            host=HOST, port=stub.port, certificate=pinned or certificate.certificate, researcher_id=RID
        )
        settings: dict[str, object] = {
            "retry_delay": 0.05,
            "max_retry_delay": 0.3,
            "max_message_bytes": 64 << 20,
        }
        settings.update(options)
        link = ResearcherLink(
            researcher=researcher,
            node_id=NODE,
            on_message=on_message or received.put,
            log=log,
            **settings,  # type: ignore[arg-type]
        )
        stop = threading.Event()
        thread = threading.Thread(target=link.run, args=(stop,), daemon=True)
        node = Node(link=link, lines=lines, stop=stop, thread=thread, received=received)
        nodes.append(node)
        thread.start()
        return node

    yield start
    for node in nodes:
        node.stop.set()
        node.link.close()
        node.thread.join(WAIT)


def polls(count: int) -> Callable[[ResearcherStub], bool]:
    return lambda stub: len(stub.of_kind("poll")) >= count


def eventually(attempt: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Whether ``attempt()`` succeeds within ``timeout``, trying again every 50 ms."""
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():
            if attempt():
                return True
            deadline.wait(0.05)
        return False
    finally:
        timer.cancel()


def scalar() -> ScalarFeedback:
    return ScalarFeedback(
        node_id=NODE,
        experiment_id="exp-1",
        train=True,
        test=False,
        test_on_local_updates=False,
        test_on_global_updates=False,
        metric={"Loss": 0.5},
        epoch=1,
        total_samples=320,
        batch_samples=48,
        num_batches=7,
        num_samples_trained=None,
        iteration=5,
        node_name="node-a",
    )


# --- the poll ---------------------------------------------------------------------------------


def test_polls_as_fedbiomed_and_reassembles_a_large_task(
    stub: ResearcherStub, start_node: Callable[..., Node]
) -> None:
    node = start_node(stub)
    assert stub.wait_for(polls(1))
    assert stub.of_kind("poll")[0] == (NODE, "7")
    task = os.urandom(CHUNK_BYTES + 500_000)  # two chunks, as the researcher cuts them
    stub.queue_task(task)
    assert node.next_message() == task
    small = b"\x82\xa1a\x01"
    stub.queue_task(small)
    assert node.next_message() == small


def test_a_poll_stays_open_while_a_message_is_handled(
    stub: ResearcherStub, start_node: Callable[..., Node]
) -> None:
    # the worker answers only once the researcher has seen the next poll: a node that stopped
    # polling while it handles a task would never answer here
    node = start_node(stub)
    assert stub.wait_for(polls(1))

    def worker() -> None:
        message = node.next_message()
        if stub.wait_for(polls(2)):
            node.link.send(b"reply to " + message)

    thread = threading.Thread(target=worker)
    thread.start()
    stub.queue_task(b"task")
    thread.join(WAIT)
    assert stub.wait_for(lambda s: bool(s.of_kind("reply")))
    kinds = [event.kind for event in stub.events]
    assert kinds.index("reply") > [i for i, kind in enumerate(kinds) if kind == "poll"][1]
    assert stub.of_kind("reply") == [b"reply to task"]


def test_stop_ends_run_promptly(stub: ResearcherStub, start_node: Callable[..., Node]) -> None:
    node = start_node(stub)
    assert stub.wait_for(polls(1))
    node.stop.set()
    node.thread.join(WAIT)
    assert not node.thread.is_alive()
    assert not node.lines.matching("", logging.WARNING)  # a stop is no outage


def test_close_ends_run_too(stub: ResearcherStub, start_node: Callable[..., Node]) -> None:
    node = start_node(stub)
    assert stub.wait_for(polls(1))
    node.link.close()
    node.thread.join(WAIT)
    assert not node.thread.is_alive()
    assert node.link.send(b"late") is False
    assert node.link.feedback(scalar()) is False


def test_reconnects_after_the_researcher_restarts(
    stub: ResearcherStub, start_node: Callable[..., Node]
) -> None:
    node = start_node(stub)
    assert stub.wait_for(polls(1))
    stub.stop()
    assert node.lines.wait_for("cannot reach the researcher")
    before = len(stub.of_kind("poll"))
    stub.start()  # same port
    assert node.lines.wait_for("reconnected to the researcher")
    assert stub.wait_for(polls(before + 1))
    stub.queue_task(b"after the restart")
    assert node.next_message() == b"after the restart"
    # one line when the outage began, one when it ended; none per retry
    assert node.lines.matching("", logging.WARNING) == [
        f"cannot reach the researcher at {HOST}:{stub.port}: connection refused; retrying with backoff"
    ]
    assert node.lines.matching("reconnected") == [f"reconnected to the researcher at {HOST}:{stub.port}"]


def test_a_researcher_with_another_certificate_is_refused(
    stub: ResearcherStub, start_node: Callable[..., Node]
) -> None:
    impostor = make_certificate(HOST, RID)  # same names, same id, another key
    node = start_node(stub, pinned=impostor.certificate)
    assert node.lines.wait_for("refusing to connect")
    assert node.lines.matching("refusing to connect") == [
        f"the researcher at {HOST}:{stub.port} now serves certificate {fingerprint(stub.certificate.certificate)}, "
        f"not the pinned {fingerprint(impostor.certificate)}: refusing to connect; retrying with backoff"
    ]
    assert stub.of_kind("poll") == []  # gRPC never got past the TLS handshake
    assert node.link.feedback(scalar()) is False
    assert stub.of_kind("feedback") == []


@pytest.mark.parametrize(
    ("bad", "logged"),
    [
        ([Chunk(size=2, iteration=2, data=b"b")], "chunk 2 of 2 came where chunk 1 was due"),
        (
            [Chunk(size=2, iteration=1, data=b"a"), Chunk(size=3, iteration=2, data=b"b")],
            "the chunk count changed from 2 to 3 mid-stream",
        ),
        ([Chunk(size=0, iteration=1, data=b"a")], "a chunk announces 0 chunks"),
        ([b"\x0e"], "a chunk does not parse"),
        ([Chunk(size=3, iteration=1, data=b"a")], "the stream ended after 1 of 3 chunks"),
    ],
)
def test_a_broken_stream_is_dropped_and_the_link_keeps_working(
    stub: ResearcherStub, start_node: Callable[..., Node], bad: list[Chunk | bytes], logged: str
) -> None:
    node = start_node(stub)
    stub.queue_chunks(bad)
    assert node.lines.wait_for(logged)
    stub.queue_task(b"the next task")
    assert node.next_message() == b"the next task"
    assert node.received.empty()
    assert len(node.lines.matching("dropped", logging.WARNING)) == 1


def test_an_oversized_task_is_dropped(stub: ResearcherStub, start_node: Callable[..., Node]) -> None:
    node = start_node(stub, max_message_bytes=10_000)
    stub.queue_task(os.urandom(20_000), chunk_bytes=4_000)
    assert node.lines.wait_for("the message is over the limit of 10000 bytes")
    stub.queue_task(b"small")
    assert node.next_message() == b"small"


def test_a_failing_handler_does_not_end_the_poll(
    stub: ResearcherStub, start_node: Callable[..., Node]
) -> None:
    got: list[bytes] = []

    def handler(message: bytes) -> None:
        if message == b"boom":
            raise RuntimeError("handler bug")
        got.append(message)

    node = start_node(stub, on_message=handler)
    stub.queue_task(b"boom")
    assert node.lines.wait_for("the handler of a researcher message failed")
    stub.queue_task(b"fine")
    assert stub.wait_for(lambda _: got == [b"fine"])


def test_two_tasks_on_one_stream_are_both_handed_over(
    stub: ResearcherStub, start_node: Callable[..., Node]
) -> None:
    node = start_node(stub)
    stub.queue_chunks(
        [
            Chunk(size=1, iteration=1, data=b"one"),
            Chunk(size=2, iteration=1, data=b"t"),
            Chunk(size=2, iteration=2, data=b"wo"),
        ]
    )
    assert [node.next_message(), node.next_message()] == [b"one", b"two"]


# --- replies and feedback ------------------------------------------------------------------------


def test_a_large_reply_goes_as_fedbiomed_chunks(
    stub: ResearcherStub, start_node: Callable[..., Node]
) -> None:
    node = start_node(stub)
    reply = os.urandom(CHUNK_BYTES + 876)
    assert node.link.send(reply) is True
    assert stub.of_kind("reply") == [reply]
    assert [(c.size, c.iteration) for c in stub.reply_chunks[0]] == [(2, 1), (2, 2)]


def test_a_refused_reply_is_retried(stub: ResearcherStub, start_node: Callable[..., Node]) -> None:
    node = start_node(stub)
    stub.refuse_replies = 2
    assert node.link.send(b"reply") is True
    assert stub.of_kind("refused") == [b"reply", b"reply"]
    assert stub.of_kind("reply") == [b"reply"]
    assert len(node.lines.matching("could not send a reply", logging.WARNING)) == 1
    assert node.lines.matching("took the reply at attempt 3")


def test_a_reply_nobody_takes_is_dropped_after_its_attempts(
    stub: ResearcherStub, start_node: Callable[..., Node]
) -> None:
    node = start_node(stub, send_retries=2)
    stub.refuse_replies = 10
    assert node.link.send(b"reply") is False
    assert len(stub.of_kind("refused")) == 3
    assert len(node.lines.matching("could not send a reply", logging.WARNING)) == 1
    assert node.lines.matching("did not take it in 3 attempts", logging.ERROR)


def test_sends_from_many_threads_all_arrive(stub: ResearcherStub, start_node: Callable[..., Node]) -> None:
    node = start_node(stub)
    assert stub.wait_for(polls(1))
    messages = [f"reply {i}".encode() * (1 + i * 1000) for i in range(8)]
    outcomes: list[bool] = []
    threads = [threading.Thread(target=lambda m=m: outcomes.append(node.link.send(m))) for m in messages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert outcomes == [True] * len(messages)
    assert sorted(stub.of_kind("reply")) == sorted(messages)
    assert len(stub.of_kind("poll")) >= 1 and not node.lines.matching("", logging.WARNING)


def test_feedback_reaches_the_researcher_with_its_id(
    stub: ResearcherStub, start_node: Callable[..., Node]
) -> None:
    node = start_node(stub)
    log = LogFeedback(node_id=NODE, level="INFO", msg='{"message": "Encrypting model parameters..."}')
    assert node.link.feedback(scalar()) is True
    assert node.link.feedback(log) is True
    assert stub.of_kind("feedback") == [(RID, scalar()), (RID, log)]


def test_feedback_failures_are_logged_once_and_never_raise(
    stub: ResearcherStub, start_node: Callable[..., Node]
) -> None:
    node = start_node(stub, feedback_timeout=2.0, feedback_pause=0.0)
    assert stub.wait_for(polls(1))
    stub.stop()
    assert [node.link.feedback(scalar()) for _ in range(3)] == [False] * 3
    assert len(node.lines.matching("could not send feedback")) == 1
    stub.start()
    assert eventually(lambda: node.link.feedback(scalar()))
    assert node.lines.matching("feedback reaches the researcher")
    assert node.link.feedback(evolve(scalar(), total_samples=2**40)) is False  # not an int32
    assert node.lines.matching("does not fit the wire")


def test_after_a_failed_feedback_items_are_dropped_for_a_while(
    stub: ResearcherStub, start_node: Callable[..., Node]
) -> None:
    """A researcher that fails Feedback does not hold the training loop for a timeout per batch."""
    node = start_node(stub, feedback_timeout=2.0, feedback_pause=3600.0)
    assert stub.wait_for(polls(1))
    stub.stop()
    assert node.link.feedback(scalar()) is False  # tried: the researcher is gone
    stub.start()
    assert eventually(lambda: node.link.send(b"the researcher is back"))  # replies get through
    # within the pause no feedback is tried, though the researcher is back
    assert [node.link.feedback(scalar()) for _ in range(5)] == [False] * 5
    assert stub.of_kind("feedback") == []
