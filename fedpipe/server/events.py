"""The server's metric-event buffer: JSON texts bounded in bytes overall and per job, oldest out first."""

import collections
from collections.abc import Iterable
from typing import Any

from attrs import define, field

__all__ = ["EventBuffer"]

# what one stored event costs beyond its text (the entry, its slots in two deques)
_OVERHEAD = 200


@define
class _Entry:
    job: str
    text: bytes
    size: int
    live: bool = True


@define
class EventBuffer:
    """Events (as canonical JSON bytes) per job; at most ``max_bytes`` in all and ``max_job_bytes`` per job.

    Adding an event evicts the oldest events of its job, then the oldest overall, until both
    bounds hold; an event larger than a bound on its own is not kept. One event loop only.
    """

    max_bytes: int
    max_job_bytes: int
    total: int = 0
    _dead: int = 0
    _order: collections.deque[_Entry] = field(factory=collections.deque)
    _jobs: dict[str, collections.deque[_Entry]] = field(factory=dict)
    _job_bytes: dict[str, int] = field(factory=dict)

    def add(self, job: str, text: bytes) -> bool:
        """Keep ``text`` as the newest event of ``job``; False when it alone is over a bound."""
        size = len(text) + _OVERHEAD
        if size > self.max_job_bytes or size > self.max_bytes:
            return False
        while self._job_bytes.get(job, 0) + size > self.max_job_bytes:
            self._forget(self._jobs[job].popleft())
        while self.total + size > self.max_bytes:
            oldest = self._order.popleft()
            if oldest.live:
                self._jobs[oldest.job].popleft()  # the oldest live event overall is its job's oldest
                self._forget(oldest, in_order=False)
            else:
                self._dead -= 1
        entry = _Entry(job=job, text=text, size=size)
        self._jobs.setdefault(job, collections.deque()).append(entry)
        self._order.append(entry)
        self._job_bytes[job] = self._job_bytes.get(job, 0) + size
        self.total += size
        return True

    def _forget(self, entry: _Entry, *, in_order: bool = True) -> None:
        entry.live = False
        entry.text = b""
        self.total -= entry.size
        left = self._job_bytes[entry.job] - entry.size
        if left:
            self._job_bytes[entry.job] = left
        else:
            del self._job_bytes[entry.job]
            del self._jobs[entry.job]
        # a dead entry stays in ``_order`` until it reaches the front; past as many dead as
        # live, rebuild it, so that the queue stays within twice the live events (amortised O(1))
        if not in_order:
            return
        self._dead += 1
        if self._dead > len(self._order) // 2 + 16:
            self._order = collections.deque(e for e in self._order if e.live)
            self._dead = 0

    def texts(self, jobs: Iterable[str] | None = None) -> list[bytes]:
        """The kept events of ``jobs`` (all jobs when None), oldest first."""
        if jobs is None:
            return [e.text for e in self._order if e.live]
        wanted = set(jobs)
        return [e.text for e in self._order if e.live and e.job in wanted]

    def job_bytes(self, job: str) -> int:
        """The bytes the events of ``job`` take in the buffer (texts plus a fixed overhead each)."""
        return self._job_bytes.get(job, 0)

    def __len__(self) -> int:
        return sum(len(q) for q in self._jobs.values())

    @staticmethod
    def job_of(event: Any) -> str | None:
        """The ``job_id`` of an event when it is a string, else None."""
        job = event.get("job_id") if isinstance(event, dict) else None
        return job if isinstance(job, str) else None
