"""MaskPool: Joye-Libert masks computed ahead of need in low-priority worker processes on all cores.

A mask ``H(tau_j)^sk mod N^2`` depends on the key, the biprime, the round and the index only, so it
can be computed before the values exist: a node starts the next round's masks in the idle time
after it replied (``start``), keeps computing while the plan trains, and ``get`` returns them,
computing whatever is still missing on every worker and in the calling thread. Entries are keyed
by a digest of (N, key) and the round; the pool holds at most ``max_entries`` of them (the masks of
one round at 1M values and a 2048-bit N take ~25 MB) and drops the work of evicted ones.

Masks are secret material. Workers are child processes (``python -c`` running
:func:`serve_worker`) spoken to over their stdin and stdout in length-prefixed frames of integers:
no pickle, nothing written to disk, no key on a command line. Workers run at a lower scheduling
priority (``nice``) than training; ``close`` terminates them at once, mid-computation if need be,
and a worker whose parent dies exits by itself.
"""

import contextlib
import hashlib
import itertools
import os
import queue
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import IO

from attrs import define, field, frozen

from fedpipe.secagg.jl import Mask, masks

__all__ = ["MaskPool", "MaskStats", "serve_worker"]

EntryKey = tuple[str, int]

MAX_FRAME_BYTES = 1 << 28
"""The largest frame either side accepts (a chunk of masks is ~50 KB; anything bigger is corrupt)."""

_WORKER_CODE = "from fedpipe.secagg.masks import serve_worker; serve_worker()"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_URGENT, _BACKGROUND, _STOP = 1, 2, 0


# --- frames: a list of integers, length-prefixed, sign and magnitude --------------------------------


def encode_ints(values: Sequence[int]) -> bytes:
    """One frame holding ``values``: total length, count, then sign byte, length and magnitude each.

    >>> decode_ints(encode_ints([0, -5, 1 << 100])[4:])
    [0, -5, 1267650600228229401496703205376]
    """
    parts = [struct.pack(">I", len(values))]
    for v in values:
        magnitude = abs(v)
        raw = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "big")
        parts.append(struct.pack(">BI", v < 0, len(raw)))
        parts.append(raw)
    body = b"".join(parts)
    return struct.pack(">I", len(body)) + body


def decode_ints(body: bytes) -> list[int]:
    """The integers of a frame body (without its length prefix); ``ValueError`` if it is malformed."""
    if len(body) < 4:
        raise ValueError("truncated frame")
    (count,) = struct.unpack_from(">I", body, 0)
    pos, out = 4, []
    for _ in range(count):
        if pos + 5 > len(body):
            raise ValueError("truncated frame")
        negative, size = struct.unpack_from(">BI", body, pos)
        pos += 5
        if negative > 1 or pos + size > len(body):
            raise ValueError("malformed frame")
        v = int.from_bytes(body[pos : pos + size], "big")
        out.append(-v if negative else v)
        pos += size
    if pos != len(body):
        raise ValueError("trailing bytes in frame")
    return out


def _read_exactly(stream: IO[bytes], n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        part = stream.read(n - len(data))
        if not part:
            return None
        data += part
    return bytes(data)


def read_frame(stream: IO[bytes]) -> list[int] | None:
    """The next frame's integers, or None at the end of the stream; ``ValueError`` if malformed."""
    head = _read_exactly(stream, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    if size > MAX_FRAME_BYTES:
        raise ValueError("frame too large")
    body = _read_exactly(stream, size)
    if body is None:
        return None
    return decode_ints(body)


# --- the worker process -----------------------------------------------------------------------------


def _exit_with_parent(parent: int) -> None:
    # a parent killed without closing the pool: no one will read these masks
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def serve_worker() -> None:
    """A mask worker's main loop: read ``[start, stop, round, key, N]`` frames on stdin, answer on stdout.

    Each task is answered by two frames: ``[cpu_ns]`` (the worker's CPU time for the task) and the
    masks as ``[m_0, m_0 mod N, m_1, ...]``. ``argv[1]`` is the priority decrement. Ends at the end
    of stdin, on a malformed frame, or when the parent process goes away.
    """
    increment = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 0
    if increment > 0 and hasattr(os, "nice"):
        # training keeps the cores it needs; the masks take what is left (not permitted: normal priority)
        with contextlib.suppress(OSError):
            os.nice(increment)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    inp = sys.stdin.buffer
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print must not corrupt the frames
    while True:
        try:
            task = read_frame(inp)
        except ValueError:
            return
        if task is None or len(task) != 5:
            return
        start, stop, round_number, key, biprime = task
        t0 = time.process_time()
        frame = encode_ints([x for m in masks(start, stop, round_number, key, biprime) for x in m])
        cpu_ns = int((time.process_time() - t0) * 1e9)
        out.write(encode_ints([cpu_ns]) + frame)
        out.flush()


class _WorkerGone(Exception):
    """The worker process ended or answered nonsense."""


class _Worker:
    """One worker process and its pipes; used by one dispatcher thread at a time."""

    def __init__(self, nice: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, str(max(0, nice))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def compute(
        self, start: int, stop: int, round_number: int, key: int, biprime: int
    ) -> tuple[list[Mask], float]:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        if stdin is None or stdout is None:
            raise _WorkerGone
        try:
            stdin.write(encode_ints([start, stop, round_number, key, biprime]))
            stdin.flush()
            cpu = read_frame(stdout)
            flat = read_frame(stdout)
        except (OSError, ValueError) as err:
            raise _WorkerGone from err
        if cpu is None or flat is None or len(cpu) != 1 or len(flat) != 2 * (stop - start):
            raise _WorkerGone
        t0 = time.thread_time()
        result = list(zip(flat[0::2], flat[1::2], strict=True))
        return result, cpu[0] / 1e9 + (time.thread_time() - t0)

    def stop(self) -> None:
        """Terminate the process now (it holds nothing worth finishing), then reap it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGTERM ignored
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # a broken pipe to a dead worker
                    pipe.close()


# --- the pool ---------------------------------------------------------------------------------------


class _State(Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"


@frozen(kw_only=True)
class MaskStats:
    """What the pool knows of the masks of one (key, round).

    ``computed``: masks ready now; ``exponentiations``: masks computed so far, in workers and in
    callers' threads (``inline``); ``cpu_seconds``: their CPU time summed over processes;
    ``wall_seconds``: from the first submission to the last mask computed; ``asked`` masks were
    requested through ``get``, ``ready_when_asked`` of them already computed at that moment, and
    those calls took ``wait_seconds`` in all.
    """

    computed: int
    cpu_seconds: float
    wall_seconds: float
    exponentiations: int = 0
    inline: int = 0
    asked: int = 0
    ready_when_asked: int = 0
    wait_seconds: float = 0.0


@define(eq=False)
class _Chunk:
    start: int
    stop: int
    state: _State = _State.PENDING
    result: list[Mask] | None = field(default=None, repr=False)


@define(eq=False)
class _Entry:
    round_number: int
    key: int = field(repr=False)
    biprime: int = field(repr=False)
    chunks: list[_Chunk] = field(factory=list)
    submitted_until: int = 0
    first_submit: float | None = None
    last_done: float = 0.0
    cpu: float = 0.0
    exponentiations: int = 0
    inline: int = 0
    asked: int = 0
    ready_when_asked: int = 0
    wait: float = 0.0
    dropped: bool = False

    def drop(self) -> None:
        # evicted or forgotten: queued chunks are skipped, and the masks released now
        self.dropped = True
        for c in self.chunks:
            c.result = None


def _entry_key(key: int, biprime: int, round_number: int) -> EntryKey:
    digest = hashlib.sha256(f"{biprime}:{key}".encode()).hexdigest()[:32]
    return digest, round_number


_Task = tuple[int, int, _Entry | None, _Chunk | None]


@define
class MaskPool:
    """Worker processes that precompute masks; ``workers=0`` computes inline (no processes).

    ``workers=None`` uses every core. ``chunk`` is the largest number of masks per task; ``nice``
    lowers the workers' scheduling priority (POSIX) so that training runs first on a busy machine;
    ``max_entries`` bounds the (key, round) entries held, the oldest being dropped first. Workers
    start on first use (or ``warm_up``); after ``close`` a later use starts fresh ones.
    """

    workers: int | None = None
    chunk: int = 64
    nice: int = 10
    max_entries: int = 2
    _entries: "OrderedDict[EntryKey, _Entry]" = field(factory=OrderedDict, init=False, repr=False)
    _cond: threading.Condition = field(factory=threading.Condition, init=False, repr=False)
    _queue: "queue.PriorityQueue[_Task]" = field(factory=queue.PriorityQueue, init=False, repr=False)
    _seq: Iterator[int] = field(factory=itertools.count, init=False, repr=False)
    _procs: list[_Worker] = field(factory=list, init=False, repr=False)
    _threads: list[threading.Thread] = field(factory=list, init=False, repr=False)
    _ready: list[threading.Event] = field(factory=list, init=False, repr=False)
    _no_processes: bool = field(default=False, init=False, repr=False)

    @property
    def n_workers(self) -> int:
        """How many worker processes the pool runs (0: inline)."""
        if self._no_processes:
            return 0
        return (os.cpu_count() or 1) if self.workers is None else max(0, self.workers)

    @property
    def worker_pids(self) -> tuple[int, ...]:
        """The process ids of the running workers (empty before first use and after ``close``)."""
        with self._cond:
            return tuple(w.pid for w in self._procs)

    @property
    def busy_workers(self) -> int:
        """How many chunks of masks are being computed now, by workers or in a caller's thread."""
        with self._cond:
            return sum(c.state is _State.RUNNING for e in self._entries.values() for c in e.chunks)

    def _spawn(self) -> bool:
        """Start the workers if they are not running (caller holds the lock); False: compute inline."""
        if self._procs:
            return True
        if self.n_workers == 0:
            return False
        try:
            for _ in range(self.n_workers):
                self._procs.append(_Worker(self.nice))
        except OSError:  # no processes here: compute inline
            for w in self._procs:
                w.stop()
            self._procs.clear()
            self._no_processes = True
            return False
        for w in self._procs:
            ready = threading.Event()
            t = threading.Thread(target=self._dispatch, args=(w, ready), name="fedpipe-masks", daemon=True)
            self._threads.append(t)
            self._ready.append(ready)
            t.start()
        return True

    def warm_up(self) -> None:
        """Start the worker processes now and wait until they answer, so that the first round does not."""
        with self._cond:
            self._spawn()
            ready = list(self._ready)
        for event in ready:
            event.wait(timeout=60)

    def _dispatch(self, worker: _Worker, ready: threading.Event) -> None:
        """A dispatcher thread: feeds one worker process with queued chunks until stopped."""
        try:
            worker.compute(0, 0, 0, 1, 3)  # the worker has imported what it needs
        except _WorkerGone:
            # a worker that cannot even start will not start next time: compute inline from now on
            self._retire(worker, no_processes=True)
            ready.set()
            return
        ready.set()
        while True:
            _, _, entry, chunk = self._queue.get()
            if entry is None or chunk is None:
                return
            with self._cond:
                if entry.dropped or chunk.state is not _State.PENDING:
                    continue
                chunk.state = _State.RUNNING
            try:
                result, cpu = worker.compute(
                    chunk.start, chunk.stop, entry.round_number, entry.key, entry.biprime
                )
            except _WorkerGone:
                with self._cond:
                    chunk.state = _State.PENDING  # get() computes it, or another worker does
                    self._cond.notify_all()
                if self._retire(worker) and not entry.dropped:
                    self._queue.put((_BACKGROUND, next(self._seq), entry, chunk))
                return
            with self._cond:
                self._finish(entry, chunk, result, cpu)

    def _retire(self, worker: _Worker, *, no_processes: bool = False) -> bool:
        """Forget a worker that died (reaping it); whether it was still one of the pool's (not closed)."""
        with self._cond:
            ours = worker in self._procs
            if ours:
                self._procs.remove(worker)
            if no_processes:
                self._no_processes = True
        worker.stop()
        return ours

    def _finish(
        self, entry: _Entry, chunk: _Chunk, result: list[Mask], cpu: float, *, inline: bool = False
    ) -> None:
        """Record a computed chunk (caller holds the lock)."""
        n = chunk.stop - chunk.start
        chunk.result = None if entry.dropped else result
        chunk.state = _State.DONE
        entry.cpu += cpu
        entry.exponentiations += n
        entry.inline += n if inline else 0
        entry.last_done = time.perf_counter()
        self._cond.notify_all()

    def _entry(self, key: int, biprime: int, round_number: int) -> _Entry:
        ek = _entry_key(key, biprime, round_number)
        entry = self._entries.get(ek)
        if entry is None:
            entry = _Entry(round_number=round_number, key=key, biprime=biprime)
            self._entries[ek] = entry
            while len(self._entries) > max(1, self.max_entries):
                _, old = self._entries.popitem(last=False)
                old.drop()
        self._entries.move_to_end(ek)
        return entry

    def _submit(self, entry: _Entry, stop: int, per: int, priority: int) -> None:
        """Cut ``submitted_until .. stop`` into chunks of ``per`` and queue them (caller holds the lock)."""
        workers = self._spawn()
        if entry.first_submit is None:
            entry.first_submit = time.perf_counter()
        for s in range(entry.submitted_until, stop, per):
            c = _Chunk(start=s, stop=min(s + per, stop))
            entry.chunks.append(c)
            if workers:
                self._queue.put((priority, next(self._seq), entry, c))
        entry.submitted_until = max(entry.submitted_until, stop)

    def start(self, key: int, biprime: int, round_number: int, count: int) -> None:
        """Begin computing the masks of indices ``0 .. count - 1`` in the background; never blocks."""
        if self.n_workers == 0 or count <= 0:
            return
        with self._cond:
            entry = self._entry(key, biprime, round_number)
            todo = count - entry.submitted_until
            if todo > 0:
                # small enough chunks that every worker gets several: the last ones finish together
                per = max(1, min(self.chunk, -(-todo // (4 * self.n_workers))))
                self._submit(entry, count, per, _BACKGROUND)

    def get(self, key: int, biprime: int, round_number: int, start: int, stop: int) -> list[Mask]:
        """The masks of indices ``start .. stop - 1``: waits for the workers and computes, in this thread,
        whatever no worker has begun."""
        t0 = time.perf_counter()
        with self._cond:
            entry = self._entry(key, biprime, round_number)
            missing = stop - entry.submitted_until
            if missing > 0:
                per = max(1, min(self.chunk, -(-missing // max(self.n_workers, 1))))
                self._submit(entry, stop, per, _URGENT)
            chunks = sorted(
                (c for c in entry.chunks if c.stop > start and c.start < stop), key=lambda c: c.start
            )

            def overlap(c: _Chunk) -> int:
                return min(stop, c.stop) - max(start, c.start)

            entry.asked += max(0, stop - start)
            entry.ready_when_asked += sum(overlap(c) for c in chunks if c.state is _State.DONE)
        try:
            return self._collect(entry, chunks, start, stop)
        finally:
            with self._cond:
                entry.wait += time.perf_counter() - t0

    def _collect(self, entry: _Entry, chunks: list[_Chunk], start: int, stop: int) -> list[Mask]:
        """Wait for the workers' chunks and compute, in this thread, those no worker has begun."""
        mine: dict[int, list[Mask]] = {}  # computed by this call: kept even if the entry is dropped
        while True:
            with self._cond:
                claim, running = None, False
                for i in reversed(range(len(chunks))):  # the workers take the front: start from the back
                    c = chunks[i]
                    if i in mine or (c.state is _State.DONE and c.result is not None):
                        continue
                    if c.state is _State.RUNNING:
                        running = True
                        continue
                    claim = i  # pending, or done and then dropped by another thread
                    break
                if claim is None:
                    if not running:
                        parts = [mine.get(i) or c.result or [] for i, c in enumerate(chunks)]
                        break
                    self._cond.wait(timeout=1.0)
                    continue
                c = chunks[claim]
                was_pending = c.state is _State.PENDING
                c.state = _State.RUNNING
            t = time.thread_time()
            try:
                result = masks(c.start, c.stop, entry.round_number, entry.key, entry.biprime)
            except BaseException:
                with self._cond:
                    c.state = _State.PENDING if was_pending else _State.DONE
                    self._cond.notify_all()
                raise
            with self._cond:
                self._finish(entry, c, result, time.thread_time() - t, inline=True)
            mine[claim] = result
        out: list[Mask] = []
        for c, res in zip(chunks, parts, strict=True):
            out.extend(res[max(start, c.start) - c.start : min(stop, c.stop) - c.start])
        return out

    def stats(self, key: int, biprime: int, round_number: int) -> MaskStats | None:
        """What the masks of (key, round) cost so far, or None if the pool holds no such entry."""
        with self._cond:
            entry = self._entries.get(_entry_key(key, biprime, round_number))
            if entry is None:
                return None
            done = sum(
                c.stop - c.start for c in entry.chunks if c.state is _State.DONE and c.result is not None
            )
            wall = 0.0 if entry.first_submit is None else max(0.0, entry.last_done - entry.first_submit)
            return MaskStats(
                computed=done,
                cpu_seconds=entry.cpu,
                wall_seconds=wall,
                exponentiations=entry.exponentiations,
                inline=entry.inline,
                asked=entry.asked,
                ready_when_asked=entry.ready_when_asked,
                wait_seconds=entry.wait,
            )

    def forget(self, key: int, biprime: int, round_number: int) -> None:
        """Drop the masks of (key, round) and their pending work (after the round used them)."""
        with self._cond:
            entry = self._entries.pop(_entry_key(key, biprime, round_number), None)
            if entry is not None:
                entry.drop()

    def close(self) -> None:
        """Drop every entry and terminate the workers now, mid-computation if need be; idempotent."""
        with self._cond:
            for entry in self._entries.values():
                entry.drop()
            self._entries.clear()
            procs, self._procs = self._procs, []
            threads, self._threads = self._threads, []
            self._ready = []
            old_queue, self._queue = self._queue, queue.PriorityQueue()
        for w in procs:
            w.stop()
        for i in range(len(threads)):
            old_queue.put((_STOP, -1 - i, None, None))
        for t in threads:
            t.join(timeout=5)
