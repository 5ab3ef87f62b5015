"""JoyeLibertCrypter: the node's SecaggCrypter (quantize, weight, checksum, pack, mask, encrypt).

Masks come from a MaskPool, off the critical path: after the reply of a secure round the node calls
``prefetch_after_reply`` and the workers compute the next round's masks in the idle time;
``start_masks`` (before training) completes what is missing, so that ``encrypt`` only packs and
multiplies. Masks are held in memory only, for one round: those of a round the node has encrypted
are never computed again, prefetched masks are dropped when another round arrives, and a round's
masks are forgotten once its reply is out (or when the next round starts).
"""

import hashlib
import math
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np
from attrs import define, field, frozen
from returns.result import Failure, Result, Success

from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import Biprime, ServerKeyShare
from fedpipe.secagg.jl import MAX_ROUND, protect
from fedpipe.secagg.lom import lom_quantize
from fedpipe.secagg.masks import MaskPool
from fedpipe.secagg.pack import pack
from fedpipe.secagg.params import (
    CLIPPING_RANGE,
    PLAINTEXT_BITS,
    Encoding,
    PackingMode,
    Quantization,
    checksum_modulus,
)
from fedpipe.secagg.quantize import quantize

__all__ = ["JoyeLibertCrypter", "encode"]


def _error(code: ErrorCode, detail: str, public: str | None = None) -> RoundError:
    # step left empty: NamedStep attributes the failure to the step that called the port
    return RoundError(code=code, step="", detail=detail, public=public or detail)


def encode(
    values: np.ndarray, *, weight: int, clipping_range: float, encoding: Encoding, n_nodes: int, biprime: int
) -> list[int]:
    """The plaintexts of ``values``: quantized (``encoding.quantization``), multiplied by ``weight``,
    checksummed and packed.

    >>> encode(np.array([-3.0, 3.0]), weight=2, clipping_range=3.0, encoding=Encoding(), n_nodes=2,
    ...        biprime=1 << 2047) == [(0 * 2) | (8191 * 2 << 32) | ((8191 * 2) << 64)]
    True
    """
    if encoding.quantization is Quantization.FEDBIOMED:
        levels = lom_quantize(values, clipping_range=clipping_range, target_range=encoding.target_range)
    else:
        levels = quantize(values, clipping_range, encoding.target_range)
    weighted = levels * np.uint64(weight)
    if encoding.checksum:
        p = np.uint64(checksum_modulus(encoding.value_bits))
        check = np.uint64(int(np.sum(weighted % p, dtype=np.uint64)) % int(p))
        weighted = np.append(weighted, check)
    return pack(weighted, encoding.slot_bits(n_nodes), encoding.slots(n_nodes, biprime))


def _key_id(key: ServerKeyShare, biprime: Biprime) -> str:
    """A digest naming the key material without holding it (ids may repeat across contexts)."""
    return hashlib.sha256(f"{biprime.biprime}:{key.key}".encode()).hexdigest()[:32]


@frozen(kw_only=True)
class _Round:
    """A (key, round) the crypter has masks for, with the value count they cover."""

    key: ServerKeyShare = field(repr=False)
    biprime: Biprime = field(repr=False)
    round_number: int
    n_values: int

    def same(self, key: ServerKeyShare, biprime: Biprime, round_number: int) -> bool:
        mine = (self.key.key, self.biprime.biprime, self.round_number)
        return mine == (key.key, biprime.biprime, round_number)


@define
class JoyeLibertCrypter:
    """Joye-Libert encryption of flat updates, with masks precomputed by a worker pool.

    ``start_masks`` without a value count reuses the count of this key's previous round (the model
    does not change size between rounds). Call ``close`` to stop the workers.
    """

    encoding: Encoding = field(factory=Encoding)
    pool: MaskPool = field(factory=MaskPool)
    _planned: dict[str, tuple[int, int]] = field(factory=dict, init=False, repr=False)
    _used: dict[str, set[int]] = field(factory=dict, init=False, repr=False)
    _prefetched: _Round | None = field(default=None, init=False, repr=False)
    _last: _Round | None = field(default=None, init=False, repr=False)

    def _material_problem(self, key: ServerKeyShare, biprime: Biprime, round_number: int) -> str | None:
        n = biprime.biprime
        if not isinstance(key.key, int) or isinstance(key.key, bool):
            return "the key share is not an integer"
        if not isinstance(n, int) or n < 2**15 or n % 2 == 0:
            return "the biprime is not a plausible modulus (odd, at least 16 bits)"
        if key.num_nodes < 1:
            return "the secagg context has no node party"
        if self.encoding.slot_bits(key.num_nodes) > 64:
            return "too many parties for the slot layout"
        if self.encoding.mode is PackingMode.COMPATIBLE and n.bit_length() < PLAINTEXT_BITS:
            return f"the compatible packing needs a biprime of at least {PLAINTEXT_BITS} bits"
        if self.encoding.slots(key.num_nodes, n) < 2:
            return f"the {n.bit_length()}-bit biprime is too small for the {self.encoding.mode} packing"
        if not 0 <= round_number <= MAX_ROUND:
            return f"round {round_number} is out of the range tau can encode"
        return None

    def _arrive(self, key: ServerKeyShare, biprime: Biprime, round_number: int) -> None:
        """A round is being prepared or encrypted: prefetched masks of any other (key, round) go."""
        pre = self._prefetched
        if pre is not None and not pre.same(key, biprime, round_number):
            self.pool.forget(pre.key.key, pre.biprime.biprime, pre.round_number)
            self._prefetched = None

    def _remember(self, key: ServerKeyShare, biprime: Biprime, round_number: int, n_values: int) -> None:
        last = self._planned.get(key.secagg_id)
        if last is not None and last[0] != round_number:
            # a new round of this key: the masks of the previous one will never be used again
            self.pool.forget(key.key, biprime.biprime, last[0])
        if last is None or last[0] != round_number or last[1] < n_values:
            self._planned[key.secagg_id] = (round_number, n_values)

    def _count(self, key: ServerKeyShare, biprime: Biprime, n_values: int) -> int:
        """The masks that ``n_values`` values and the one-value factor after them take."""
        return self.encoding.ciphertexts(n_values, key.num_nodes, biprime.biprime) + 1

    def start_masks(
        self, *, key: ServerKeyShare, biprime: Biprime, round_number: int, n_values: int | None
    ) -> None:
        """Start computing the masks of ``n_values`` values and of the one-value factor that follows them.

        The count is at least that of this key's previous round, which included the aux vars the
        parameter count does not show; ``None`` uses the previous count alone (nothing when unknown).
        Masks prefetched for another (key, round) are dropped; a round this crypter has already
        encrypted gets none (its tau is spent).
        """
        last = self._planned.get(key.secagg_id)
        known = [v for v in (n_values, None if last is None else last[1]) if v is not None and v >= 0]
        if not known or self._material_problem(key, biprime, round_number) is not None:
            return  # encrypt computes what is missing, and reports any problem
        self._arrive(key, biprime, round_number)
        if round_number in self._used.get(_key_id(key, biprime), ()):
            return
        count_values = max(known)
        self._remember(key, biprime, round_number, count_values)
        self.pool.start(key.key, biprime.biprime, round_number, self._count(key, biprime, count_values))

    def prefetch(
        self,
        *,
        key: ServerKeyShare,
        biprime: Biprime,
        round_number: int,
        n_values: int,
        claimed_rounds: Collection[int] = (),
    ) -> None:
        """Start computing the masks of ``round_number`` (the next round) now, in the node's idle time.

        The workers go on while the next round trains if they have not finished; its
        ``start_masks`` and ``encrypt`` then find the masks computed. Nothing is computed for a
        round in ``claimed_rounds`` (the key store's spent taus) or already encrypted by this
        crypter, nor with unusable key material. Masks prefetched earlier for another (key,
        round) are dropped: at most one round is prefetched. Never raises and never blocks.
        """
        if isinstance(n_values, bool) or not isinstance(n_values, int) or n_values < 0:
            return
        if self._material_problem(key, biprime, round_number) is not None:
            return
        if round_number in claimed_rounds or round_number in self._used.get(_key_id(key, biprime), ()):
            return
        last = self._planned.get(key.secagg_id)
        count_values = max(n_values, last[1] if last is not None else 0)
        pre = self._prefetched
        if pre is not None and not pre.same(key, biprime, round_number):
            self.pool.forget(pre.key.key, pre.biprime.biprime, pre.round_number)
        self._remember(key, biprime, round_number, count_values)
        self._prefetched = _Round(key=key, biprime=biprime, round_number=round_number, n_values=count_values)
        self.pool.start(key.key, biprime.biprime, round_number, self._count(key, biprime, count_values))

    def prefetch_after_reply(self, *, claimed_rounds: Callable[[str], Collection[int]] | None = None) -> None:
        """After the reply of a secure round: forget its masks and prefetch those of the next round.

        Continues from the last round this crypter encrypted (same key, biprime and value count,
        round + 1); does nothing when it has encrypted nothing since the last call.
        ``claimed_rounds(secagg_id)`` gives the rounds the key store holds as used; when it
        cannot answer (raises), nothing is prefetched. Never raises and never blocks.
        """
        last, self._last = self._last, None
        if last is None:
            return
        self.pool.forget(last.key.key, last.biprime.biprime, last.round_number)
        try:
            claimed = tuple(claimed_rounds(last.key.secagg_id)) if claimed_rounds is not None else ()
        except Exception:  # the store could not say: never risk masks for a spent tau
            return
        self.prefetch(
            key=last.key,
            biprime=last.biprime,
            round_number=last.round_number + 1,
            n_values=last.n_values,
            claimed_rounds=claimed,
        )

    def mask_stats(
        self, *, key: ServerKeyShare, biprime: Biprime, round_number: int
    ) -> Mapping[str, float] | None:
        """Plain numbers about the masks of (key, round), or None when the pool holds none.

        ``mask_cpu_seconds``: CPU of the masks summed over processes; ``mask_wall_seconds``: from
        the first request for them to the last computed; ``precomputed_fraction``: the share of the
        masks ``encrypt`` asked for that were ready at that moment; ``encrypt_wait_seconds``: how
        long ``encrypt`` waited for masks.
        """
        stats = self.pool.stats(key.key, biprime.biprime, round_number)
        if stats is None:
            return None
        return {
            "mask_cpu_seconds": stats.cpu_seconds,
            "mask_wall_seconds": stats.wall_seconds,
            "precomputed_fraction": stats.ready_when_asked / stats.asked if stats.asked else 0.0,
            "encrypt_wait_seconds": stats.wait_seconds,
        }

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
        """Encrypt ``values`` weighted by ``weight`` under tau indices ``first_index, first_index + 1 ...``.

        Values beyond the clipping range are clipped (the caller counts and reports them). An
        encryption at index 0 marks the round as spent for this crypter and is what
        ``prefetch_after_reply`` continues from.
        """
        problem = self._material_problem(key, biprime, round_number)
        if problem is not None:
            return Failure(_error(ErrorCode.SECAGG_CONFIG, problem))
        w_range = self.encoding.weight_range
        if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight < w_range:
            return Failure(
                _error(
                    ErrorCode.ENCRYPTION_FAILED,
                    f"weight (sample size) {weight!r} is outside [1, {w_range})",
                    f"The sample size must be between 1 and {w_range - 1} for secure aggregation.",
                )
            )
        c = float(CLIPPING_RANGE if clipping_range is None else clipping_range)
        if not (math.isfinite(c) and c > 0):
            return Failure(_error(ErrorCode.SECAGG_CONFIG, "the clipping range must be positive and finite"))
        if first_index < 0:
            return Failure(_error(ErrorCode.ENCRYPTION_FAILED, "negative first tau index"))
        try:
            arr = np.asarray(values, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as err:
            return Failure(
                _error(
                    ErrorCode.ENCRYPTION_FAILED,
                    f"values are not numbers: {err}",
                    "The flattened model update is not a list of finite numbers.",
                )
            )
        if not np.isfinite(arr).all():
            return Failure(
                _error(
                    ErrorCode.ENCRYPTION_FAILED,
                    "values contain NaN or infinity",
                    "The flattened model update is not a list of finite numbers.",
                )
            )
        n = biprime.biprime
        plaintexts = encode(
            arr, weight=weight, clipping_range=c, encoding=self.encoding, n_nodes=key.num_nodes, biprime=n
        )
        if any(p >= n for p in plaintexts):
            return Failure(
                _error(
                    ErrorCode.SECAGG_CONFIG,
                    f"a packed plaintext exceeds the {n.bit_length()}-bit biprime; use a larger biprime",
                )
            )
        self._arrive(key, biprime, round_number)
        if first_index == 0:
            self._remember(key, biprime, round_number, arr.size)
            self._used.setdefault(_key_id(key, biprime), set()).add(round_number)
            last = self._last
            count = (
                arr.size
                if last is None or not last.same(key, biprime, round_number)
                else max(last.n_values, arr.size)
            )
            self._last = _Round(key=key, biprime=biprime, round_number=round_number, n_values=count)
        masks = self.pool.get(key.key, n, round_number, first_index, first_index + len(plaintexts))
        return Success(protect(plaintexts, masks, n))

    def close(self) -> None:
        """Stop the mask workers at once and forget every mask (idempotent)."""
        self._prefetched = self._last = None
        self.pool.close()
