"""MaskPool: Joye-Libert masks computed ahead of need in worker processes on all cores.

A mask ``H(tau_j)^sk mod N^2`` depends on the key, the biprime, the round and the index only. A node
calls ``start`` as soon as it knows it will encrypt (before training); workers, at a lower scheduling
priority than training, fill the masks in chunks; ``get`` returns them, computing whatever is still
missing on all workers. Entries are keyed by a digest of (N, key) and the round; the pool keeps a few
entries and cancels the work of evicted ones. The workers exchange only integers with this process.
"""

import contextlib
import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from attrs import define, field, frozen

from fedpipe.secagg.jl import Mask, masks

__all__ = ["MaskPool", "MaskStats"]

EntryKey = tuple[str, int]


def _lower_priority(increment: int) -> None:
    # training keeps the cores it needs; the masks take what is left
    if increment > 0 and hasattr(os, "nice"):
        with contextlib.suppress(OSError):  # not permitted: run at normal priority
            os.nice(increment)


def _task(start: int, stop: int, round_number: int, key: int, biprime: int) -> tuple[list[Mask], float]:
    t0 = time.process_time()
    out = masks(start, stop, round_number, key, biprime)
    return out, time.process_time() - t0


@frozen(kw_only=True)
class MaskStats:
    """What the pool spent on the masks of one (key, round): how many, CPU seconds summed over workers,
    and wall seconds from the first submission to the last completed chunk."""

    computed: int
    cpu_seconds: float
    wall_seconds: float


@define
class _Chunk:
    start: int
    stop: int
    future: "Future[tuple[list[Mask], float]] | None"
    result: list[Mask] | None = None


@define
class _Entry:
    round_number: int
    key: int = field(repr=False)
    biprime: int = field(repr=False)
    chunks: list[_Chunk] = field(factory=list)
    submitted_until: int = 0
    first_submit: float | None = None
    last_done: float = 0.0
    cpu: float = 0.0


def _entry_key(key: int, biprime: int, round_number: int) -> EntryKey:
    digest = hashlib.sha256(f"{biprime}:{key}".encode()).hexdigest()[:32]
    return digest, round_number


@define
class MaskPool:
    """Worker processes that precompute masks; ``workers=0`` computes inline (no processes).

    ``workers=None`` uses every core. ``chunk`` is the number of masks per task; ``nice`` lowers the
    workers' scheduling priority (POSIX) so that training runs first on a busy machine.
    """

    workers: int | None = None
    chunk: int = 64
    nice: int = 10
    max_entries: int = 4
    _executor: ProcessPoolExecutor | None = field(default=None, init=False, repr=False)
    _entries: "OrderedDict[EntryKey, _Entry]" = field(factory=OrderedDict, init=False, repr=False)
    _lock: threading.Lock = field(factory=threading.Lock, init=False, repr=False)

    @property
    def n_workers(self) -> int:
        """How many worker processes the pool runs (0: inline)."""
        return (os.cpu_count() or 1) if self.workers is None else self.workers

    def _pool(self) -> ProcessPoolExecutor | None:
        if self.n_workers == 0:
            return None
        if self._executor is None:
            try:
                self._executor = ProcessPoolExecutor(
                    max_workers=self.n_workers,
                    mp_context=get_context("spawn"),
                    initializer=_lower_priority,
                    initargs=(self.nice,),
                )
            except (OSError, ValueError):  # pragma: no cover - no processes here: compute inline
                self.workers = 0
                return None
        return self._executor

    def warm_up(self) -> None:
        """Start the worker processes now (spawning takes a moment), so that the first round does not wait."""
        pool = self._pool()
        if pool is not None:
            for f in [pool.submit(_task, 0, 0, 0, 1, 3) for _ in range(self.n_workers)]:
                f.result()

    def _entry(self, key: int, biprime: int, round_number: int) -> _Entry:
        ek = _entry_key(key, biprime, round_number)
        entry = self._entries.get(ek)
        if entry is None:
            entry = _Entry(round_number=round_number, key=key, biprime=biprime)
            self._entries[ek] = entry
            while len(self._entries) > self.max_entries:
                _, old = self._entries.popitem(last=False)
                for c in old.chunks:
                    if c.future is not None:
                        c.future.cancel()
        self._entries.move_to_end(ek)
        return entry

    def _submit(self, entry: _Entry, stop: int, chunk: int) -> None:
        pool = self._pool()
        if entry.first_submit is None:
            entry.first_submit = time.perf_counter()
        for s in range(entry.submitted_until, stop, chunk):
            e = min(s + chunk, stop)
            fut = None
            if pool is not None:
                try:
                    fut = pool.submit(_task, s, e, entry.round_number, entry.key, entry.biprime)
                    fut.add_done_callback(self._done_callback(entry))
                except (BrokenProcessPool, RuntimeError):
                    fut = None  # computed inline by get()
            entry.chunks.append(_Chunk(start=s, stop=e, future=fut))
        entry.submitted_until = max(entry.submitted_until, stop)

    @staticmethod
    def _done_callback(entry: _Entry) -> "Callable[[Future[tuple[list[Mask], float]]], None]":
        def done(_: "Future[tuple[list[Mask], float]]") -> None:
            entry.last_done = time.perf_counter()

        return done

    def start(self, key: int, biprime: int, round_number: int, count: int) -> None:
        """Begin computing the masks of indices ``0 .. count - 1`` in the background; never blocks."""
        if self.n_workers == 0 or count <= 0:
            return
        with self._lock:
            entry = self._entry(key, biprime, round_number)
            if count > entry.submitted_until:
                # small enough chunks that every worker gets several: the last ones finish together
                per = max(1, min(self.chunk, -(-(count - entry.submitted_until) // (4 * self.n_workers))))
                self._submit(entry, count, per)

    def get(self, key: int, biprime: int, round_number: int, start: int, stop: int) -> list[Mask]:
        """The masks of indices ``start .. stop - 1``; waits for the workers, computes what is missing."""
        with self._lock:
            entry = self._entry(key, biprime, round_number)
            missing = stop - entry.submitted_until
            if missing > 0:
                per = max(1, min(self.chunk, -(-missing // max(self.n_workers, 1))))
                self._submit(entry, stop, per)
            chunks = [c for c in entry.chunks if c.stop > start and c.start < stop]
        out: list[Mask] = []
        for c in sorted(chunks, key=lambda c: c.start):
            if c.result is None:
                c.result = self._resolve(entry, c)
            lo, hi = max(start, c.start), min(stop, c.stop)
            out.extend(c.result[lo - c.start : hi - c.start])
        return out

    def _resolve(self, entry: _Entry, c: _Chunk) -> list[Mask]:
        if c.future is not None:
            try:
                result, cpu = c.future.result()
                entry.cpu += cpu
                return result
            except (BrokenProcessPool, OSError, RuntimeError):
                pass  # a worker died or was cancelled: compute inline below
        t0 = time.process_time()
        result = masks(c.start, c.stop, entry.round_number, entry.key, entry.biprime)
        entry.cpu += time.process_time() - t0
        entry.last_done = time.perf_counter()
        return result

    def stats(self, key: int, biprime: int, round_number: int) -> MaskStats | None:
        """What the masks of (key, round) cost so far (counting resolved chunks), or None if unknown."""
        entry = self._entries.get(_entry_key(key, biprime, round_number))
        if entry is None:
            return None
        done = sum(c.stop - c.start for c in entry.chunks if c.result is not None)
        wall = 0.0 if entry.first_submit is None else max(0.0, entry.last_done - entry.first_submit)
        return MaskStats(computed=done, cpu_seconds=entry.cpu, wall_seconds=wall)

    def forget(self, key: int, biprime: int, round_number: int) -> None:
        """Drop the masks of (key, round), cancelling pending work (after the round used them)."""
        with self._lock:
            entry = self._entries.pop(_entry_key(key, biprime, round_number), None)
        if entry is not None:
            for c in entry.chunks:
                if c.future is not None:
                    c.future.cancel()

    def close(self) -> None:
        """Stop the workers (pending work is cancelled)."""
        with self._lock:
            self._entries.clear()
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None
