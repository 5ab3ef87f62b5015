"""A minimal Fed-BioMed 6.4.1 researcher for tests: a real grpcio server over TLS, scripted from the test.

It serves ``researcher.ResearcherService`` as the stock researcher does (one task per
``GetTaskUnary`` poll, streamed as chunks, then the call ends; ``ReplyTask`` client streams;
unary ``Feedback``), with a certificate made as ``fedbiomed component create`` makes it
(CN = host, O = researcher id, an IP subject-alternative name when the host is an IP). It records
what arrives (polls, reassembled replies, feedback) in one ordered event log, and can send
hand-made chunk streams (out of order, oversized ...) to test the node's defences.
"""

import datetime
import ipaddress
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
from attrs import define, field, frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedpipe.fedbiomed.wire import (
    Chunk,
    LogFeedback,
    Reassembler,
    ScalarFeedback,
    decode_chunk,
    decode_feedback,
    decode_task_request,
    encode_chunk,
    iter_chunks,
)

SERVICE = "researcher.ResearcherService"

# as Fed-BioMed 6.4.1's researcher configures its server (keepalive tolerance, one server per port)
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", 100 * 1024 * 1024),
    ("grpc.max_receive_message_length", 100 * 1024 * 1024),
    ("grpc.http2.min_ping_interval_without_data_ms", 1800),
    ("grpc.http2.max_ping_strikes", 100),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]


@frozen(kw_only=True)
class StubCertificate:
    """A researcher certificate and its private key, both PEM."""

    certificate: bytes
    key: bytes = field(repr=False)


def make_certificate(
    host: str,
    researcher_id: str | None,
    *,
    days: int = 30,
    not_before: datetime.datetime | None = None,
) -> StubCertificate:
    """A self-signed certificate as Fed-BioMed makes the researcher's (an EC key, to be quick)."""
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, host)]
    if researcher_id is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, researcher_id))
    name = x509.Name(attributes)
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
    )
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ip)]), critical=False)
    certificate = builder.sign(key, hashes.SHA256())
    return StubCertificate(
        certificate=certificate.public_bytes(serialization.Encoding.PEM),
        key=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


@frozen(kw_only=True)
class Event:
    """One thing the stub saw: ``kind`` is "poll", "reply", "refused" (a reply it refused) or "feedback"."""

    kind: str
    value: Any = field(eq=False, repr=False)


@define
class _Task:
    chunks: Sequence[bytes]  # encoded TaskResponse messages, sent as they are


class ResearcherStub:
    """A researcher on ``host:port`` (0: any free port) over TLS with ``certificate``; start() then stop().

    ``queue_task(message)`` hands ``message`` to the next poll, chunked as Fed-BioMed does;
    ``queue_chunks(chunks)`` sends hand-made chunks instead. ``events`` lists what came in order.
    """

    def __init__(
        self,
        certificate: StubCertificate,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_bytes: int = 200 * 1024 * 1024,
    ) -> None:
        self.certificate = certificate
        self.host = host
        self.port = port
        self.max_bytes = max_bytes
        self.refuse_replies = 0  # answer this many more complete replies with UNAVAILABLE
        self.events: list[Event] = []
        self.reply_chunks: list[list[Chunk]] = []
        self._tasks: queue.Queue[_Task] = queue.Queue()
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._server: grpc.Server | None = None

    # --- the scripted side ---------------------------------------------------------------------

    def queue_task(self, message: bytes, chunk_bytes: int | None = None) -> None:
        """Send ``message`` on the next poll, as 6.4.1 chunks it (or in ``chunk_bytes`` pieces)."""
        pieces = iter_chunks(message) if chunk_bytes is None else iter_chunks(message, chunk_bytes)
        self._tasks.put(_Task(chunks=[encode_chunk(chunk) for chunk in pieces]))

    def queue_chunks(self, chunks: Sequence[Chunk | bytes]) -> None:
        """Send these chunks (or raw message bytes) as they are on the next poll, then end the call."""
        raw = [chunk if isinstance(chunk, bytes) else encode_chunk(chunk) for chunk in chunks]
        self._tasks.put(_Task(chunks=raw))

    def of_kind(self, kind: str) -> list[Any]:
        """The values of the events of ``kind`` so far, in order."""
        with self._changed:
            return [event.value for event in self.events if event.kind == kind]

    def wait_for(self, predicate: Callable[["ResearcherStub"], bool], timeout: float = 15.0) -> bool:
        """Wait until ``predicate(self)`` holds (re-checked on every event); False after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.2))
        return True

    def _record(self, kind: str, value: Any) -> None:
        with self._changed:
            self.events.append(Event(kind=kind, value=value))
            self._changed.notify_all()

    # --- the servicer ----------------------------------------------------------------------------

    def _get_task_unary(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record("poll", decode_task_request(request).value_or(("?", "?")))
        while context.is_active() and not self._stopping.is_set():
            try:
                task = self._tasks.get(timeout=0.05)
            except queue.Empty:
                continue
            yield from task.chunks
            return

    def _reply_task(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        reassembler = Reassembler(self.max_bytes)
        chunks: list[Chunk] = []
        for raw in requests:
            chunk = decode_chunk(raw).unwrap()
            chunks.append(Chunk(size=chunk.size, iteration=chunk.iteration, data=b""))
            message = reassembler.add(chunk).unwrap()
            if message is not None:
                with self._changed:
                    refuse = self.refuse_replies > 0
                    if refuse:
                        self.refuse_replies -= 1
                if refuse:
                    self._record("refused", message)
                    context.abort(grpc.StatusCode.UNAVAILABLE, "refused by the test")
                with self._changed:
                    self.reply_chunks.append(chunks)
                self._record("reply", message)
                reassembler, chunks = Reassembler(self.max_bytes), []
        return b""

    def _feedback(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        item: tuple[str | None, ScalarFeedback | LogFeedback] = decode_feedback(request).unwrap()
        self._record("feedback", item)
        return b""

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> "ResearcherStub":
        """Listen (on the same port again after a stop); returns self."""
        self._stopping.clear()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=SERVER_OPTIONS)
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "GetTaskUnary": grpc.unary_stream_rpc_method_handler(self._get_task_unary),
                "ReplyTask": grpc.stream_unary_rpc_method_handler(self._reply_task),
                "Feedback": grpc.unary_unary_rpc_method_handler(self._feedback),
            },
        )
        server.add_generic_rpc_handlers((handler,))
        credentials = grpc.ssl_server_credentials(((self.certificate.key, self.certificate.certificate),))
        self.port = server.add_secure_port(f"{self.host}:{self.port}", credentials)
        if self.port == 0:
            raise RuntimeError("the stub could not bind its port")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        """Stop serving now: open calls end, the port is free again."""
        self._stopping.set()
        if self._server is not None:
            self._server.stop(grace=None).wait(10)
            self._server = None

    def __enter__(self) -> "ResearcherStub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
