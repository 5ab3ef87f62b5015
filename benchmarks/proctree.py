"""Peak memory of a whole process tree, sampled from Linux ``/proc`` (standard library only).

``PeakMemory`` samples, in a background thread every ~50 ms, every process under a root pid (by
default this process) and records the peak of the sum of their RSS and, separately, the peak of the
sum of their PSS (``/proc/PID/smaps_rollup``; RSS where that cannot be read). PSS is read less
often (every 0.5 s, and within 0.2 s of a new RSS peak): the kernel computes it by walking each
process's page tables, which on a 2-core machine would otherwise slow the processes measured. The
tree is found anew at every sample from the parent pids in ``/proc/*/stat``, so processes started
later (Ray's GCS, raylet, workers) are counted from the sample after they appear. Processes that
exit between the scan and the read are skipped. RSS counts a shared page (torch's libraries, Ray's
object store in ``/dev/shm``) once in every process that maps it; PSS splits it among them, so the
PSS sum is the memory the tree really holds and the RSS sum an upper bound.

Ray's processes (checked on Linux with Ray 2.60 under ``ray.init(address="local")`` and with Ray
2.55.1 under Flower 1.42's simulation engine): the GCS server, raylet, dashboard, log monitor and
autoscaler monitor are direct children of the driver, and the workers (``ray::IDLE``, the actors)
and the dashboard and runtime-env agents are children of the raylet, so the driver's tree holds
them all while the driver lives; none re-parents to init. A cluster started by ``ray start`` is
another process tree; for that, ``extra_pids`` adds the pids a callable returns at every sample,
for instance ``lambda: pids_matching(session_dir)`` (every process whose command line names the
Ray session or temporary directory).

Run ``python benchmarks/proctree.py`` for a self-test: a child process that holds 200 MiB must
raise the peak by about that much.
"""

import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType

_PAGE = os.sysconf("SC_PAGE_SIZE")
_MIB = 1024 * 1024


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # The command name in parentheses may hold spaces and parentheses: fields follow the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def tree_pids(root: int | None = None) -> set[int]:
    """Return ``root`` (default: this process) and all its living descendants.

    Read from the parent pids of every process in ``/proc`` at the time of the call; a process
    that has exited, or whose parent exited and re-parented it to init, is not included.
    """
    top = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for pid in _pids():
        parent = _ppid(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    found = {top}
    stack = [top]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def pids_matching(substring: str) -> set[int]:
    """Return the pids of every process whose command line contains ``substring``.

    The command line's NUL-separated arguments are joined with spaces; kernel threads (empty
    command lines) and processes that cannot be read are left out.
    """
    needle = substring.encode()
    found = set()
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                data = cmdline.read()
        except OSError:
            continue
        if needle in data.replace(b"\0", b" "):
            found.add(pid)
    return found


def _rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def _pss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        return None
    return None


def _tree_and_extra(root: int | None, extra: Iterable[int]) -> set[int]:
    return tree_pids(root) | set(extra)


def sample(root: int | None = None, extra: Iterable[int] = ()) -> tuple[int, int]:
    """Return ``(rss_bytes, pss_bytes)`` summed over ``root``'s tree and the ``extra`` pids.

    A process's PSS falls back to its RSS when ``smaps_rollup`` cannot be read; a process that
    vanishes mid-read counts for nothing.
    """
    return _sum_rss(_tree_and_extra(root, extra)), _sum_pss(_tree_and_extra(root, extra))


def _sum_rss(pids: Iterable[int]) -> int:
    return sum(rss for rss in map(_rss, pids) if rss is not None)


def _sum_pss(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        pss = _pss(pid)
        if pss is None:
            pss = _rss(pid)
        total += pss or 0
    return total


class PeakMemory:
    """Peak summed RSS and PSS of a process tree, sampled in a background thread.

    Use as ``with PeakMemory() as peak: ...`` or with ``start()`` and ``stop()``; the peaks
    (``peak_rss_mib``, ``peak_pss_mib``) can be read at any time and hold the largest sums seen
    so far. RSS is read every ``interval`` seconds (``/proc/PID/statm``, a few microseconds a
    process). PSS costs far more: the kernel walks the page tables of each process for
    ``smaps_rollup`` (~15 ms for a 750 MiB process) and holds its memory map lock meanwhile, so
    PSS is read every ``pss_interval`` seconds, and sooner (but not within ``4 * interval``)
    when the RSS sum reaches a new peak; never more often than keeps the PSS reads under ~5% of
    the time. One full sample is taken at ``start`` and one at ``stop``.
    """

    def __init__(
        self,
        root: int | None = None,
        *,
        interval: float = 0.05,
        pss_interval: float = 0.5,
        extra_pids: Callable[[], Iterable[int]] | None = None,
    ) -> None:
        self.root = os.getpid() if root is None else root
        self.interval = interval
        self.pss_interval = pss_interval
        self.extra_pids = extra_pids
        self.peak_rss = 0
        self.peak_pss = 0
        self.samples = 0
        self.pss_samples = 0
        self._last_pss = -math.inf
        self._pss_cost = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def peak_rss_mib(self) -> float:
        """The largest summed RSS seen, in MiB."""
        return self.peak_rss / _MIB

    @property
    def peak_pss_mib(self) -> float:
        """The largest summed PSS seen, in MiB."""
        return self.peak_pss / _MIB

    def _pids(self) -> set[int]:
        extra: Iterable[int] = ()
        if self.extra_pids is not None:
            try:
                extra = list(self.extra_pids())
            except OSError:
                extra = ()
        return _tree_and_extra(self.root, extra)

    def sample_once(self, *, force_pss: bool = True) -> None:
        """Take one sample now and fold it into the peaks (PSS too unless rate-limited)."""
        pids = self._pids()
        rss = _sum_rss(pids)
        now = time.monotonic()
        since = now - self._last_pss
        gap = max(self.pss_interval if rss <= self.peak_rss else 4 * self.interval, 20 * self._pss_cost)
        self.peak_rss = max(self.peak_rss, rss)
        self.samples += 1
        if force_pss or since >= gap:
            self.peak_pss = max(self.peak_pss, _sum_pss(pids))
            self._last_pss = time.monotonic()
            self._pss_cost = self._last_pss - now
            self.pss_samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample_once(force_pss=False)

    def start(self) -> "PeakMemory":
        """Start sampling in a daemon thread; return ``self``."""
        if self._thread is None:
            self.sample_once()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> "PeakMemory":
        """Stop sampling after one last sample; return ``self``."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.sample_once()
        return self

    def __enter__(self) -> "PeakMemory":
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _self_test() -> None:
    hold = "import sys, time; b = b'x' * (200 * 1024 * 1024); sys.stdout.write('x\\n'); "
    hold += "sys.stdout.flush(); time.sleep(1.0)"
    before = sample()
    with PeakMemory() as peak:
        child = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE)
        assert child.stdout is not None
        child.stdout.readline()
        time.sleep(0.3)
        assert child.pid in tree_pids(), "the child is not in this process's tree"
        assert child.pid in pids_matching("(200 * 1024 * 1024)"), "the child's command line not found"
        child.wait()
    rise_rss = peak.peak_rss_mib - before[0] / _MIB
    rise_pss = peak.peak_pss_mib - before[1] / _MIB
    print(
        f"before: rss {before[0] / _MIB:.1f} MiB, pss {before[1] / _MIB:.1f} MiB; "
        f"peak: rss {peak.peak_rss_mib:.1f} MiB, pss {peak.peak_pss_mib:.1f} MiB; "
        f"{peak.samples} samples, {peak.pss_samples} with PSS"
    )
    assert rise_rss >= 190, rise_rss
    assert rise_pss >= 190, rise_pss
    print("ok")


if __name__ == "__main__":
    _self_test()
