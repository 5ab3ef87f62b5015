"""``Clock`` adapter: the process's real clocks."""

import time

__all__ = ["SystemClock"]


class SystemClock:
    """``time.perf_counter`` and ``time.process_time`` behind the ``Clock`` port.

    >>> clock = SystemClock()
    >>> clock.perf_counter() <= clock.perf_counter()
    True
    """

    def perf_counter(self) -> float:
        """Monotonic wall-clock seconds from an arbitrary origin."""
        return time.perf_counter()

    def process_time(self) -> float:
        """CPU seconds used by this process."""
        return time.process_time()
