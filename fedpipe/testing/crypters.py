"""A fake crypter that spends time on a fake clock and reports masking figures, as the real one can."""

from collections.abc import Mapping, Sequence
from typing import Any

from attrs import define, field
from returns.result import Result

from fedpipe.errors import RoundError
from fedpipe.ports import Biprime, ServerKeyShare
from fedpipe.testing.fakes import FakeClock, FakeCrypter

__all__ = ["MASK_STATS_EXAMPLE", "MaskStatsCrypter"]

MASK_STATS_EXAMPLE: Mapping[str, float] = {
    "mask_cpu_seconds": 3.5,
    "mask_wall_seconds": 1.75,
    "precomputed_fraction": 1.0,
    "encrypt_wait_seconds": 0.0,
}


@define
class MaskStatsCrypter(FakeCrypter):
    """``FakeCrypter`` plus the optional ``mask_stats`` of ``JoyeLibertCrypter``.

    Each ``encrypt`` call lets ``seconds`` pass on ``clock`` (when one is given), as real work
    would; ``mask_stats`` records what it was asked and returns ``stats`` as given, so that a test
    can also hand the step entries it must drop (a key, a NaN, a boolean).
    """

    clock: FakeClock | None = None
    seconds: float = 0.0
    stats: Mapping[str, Any] | None = field(factory=lambda: dict(MASK_STATS_EXAMPLE))
    asked: list[tuple[str, int]] = field(factory=list)

    def encrypt(
        self,
        values: Sequence[float],
        *,
        key: ServerKeyShare,
        biprime: Biprime,
        round_number: int,
        weight: int,
        clipping_range: float | None,
        first_index: int = 0,
    ) -> Result[list[int], RoundError]:
        """As ``FakeCrypter.encrypt``, after letting ``seconds`` pass on ``clock``."""
        if self.clock is not None:
            self.clock.advance(self.seconds)
        return FakeCrypter.encrypt(
            self,
            values,
            key=key,
            biprime=biprime,
            round_number=round_number,
            weight=weight,
            clipping_range=clipping_range,
            first_index=first_index,
        )

    def mask_stats(
        self, *, key: ServerKeyShare, biprime: Biprime, round_number: int
    ) -> Mapping[str, Any] | None:
        """Record (secagg id, round) and return ``stats``."""
        self.asked.append((key.secagg_id, round_number))
        return self.stats
