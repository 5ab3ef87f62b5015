"""JoyeLibertCrypter: the node's SecaggCrypter (quantize, weight, checksum, pack, mask, encrypt).

Masks come from a MaskPool: ``start_masks`` has the workers compute them while the plan trains,
so that ``encrypt`` only packs and multiplies.
"""

import math
from collections.abc import Sequence

import numpy as np
from attrs import define, field
from returns.result import Failure, Result, Success

from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import Biprime, ServerKeyShare
from fedpipe.secagg.jl import MAX_ROUND, protect
from fedpipe.secagg.masks import MaskPool
from fedpipe.secagg.pack import pack
from fedpipe.secagg.params import CLIPPING_RANGE, PLAINTEXT_BITS, Encoding, PackingMode, checksum_modulus
from fedpipe.secagg.quantize import quantize

__all__ = ["JoyeLibertCrypter", "encode"]


def _error(code: ErrorCode, detail: str, public: str | None = None) -> RoundError:
    # step left empty: NamedStep attributes the failure to the step that called the port
    return RoundError(code=code, step="", detail=detail, public=public or detail)


def encode(
    values: np.ndarray, *, weight: int, clipping_range: float, encoding: Encoding, n_nodes: int, biprime: int
) -> list[int]:
    """The plaintexts of ``values``: quantized, multiplied by ``weight``, checksummed and packed.

    >>> encode(np.array([-3.0, 3.0]), weight=2, clipping_range=3.0, encoding=Encoding(), n_nodes=2,
    ...        biprime=1 << 2047) == [(0 * 2) | (8191 * 2 << 32) | ((8191 * 2) << 64)]
    True
    """
    weighted = quantize(values, clipping_range, encoding.target_range) * np.uint64(weight)
    if encoding.checksum:
        p = np.uint64(checksum_modulus(encoding.value_bits))
        check = np.uint64(int(np.sum(weighted % p, dtype=np.uint64)) % int(p))
        weighted = np.append(weighted, check)
    return pack(weighted, encoding.slot_bits(n_nodes), encoding.slots(n_nodes, biprime))


@define
class JoyeLibertCrypter:
    """Joye-Libert encryption of flat updates, with masks precomputed by a worker pool.

    ``start_masks`` without a value count reuses the count of this key's previous round (the model
    does not change size between rounds). Call ``close`` to stop the workers.
    """

    encoding: Encoding = field(factory=Encoding)
    pool: MaskPool = field(factory=MaskPool)
    _planned: dict[str, tuple[int, int]] = field(factory=dict, init=False, repr=False)

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

    def _remember(self, key: ServerKeyShare, biprime: Biprime, round_number: int, n_values: int) -> None:
        last = self._planned.get(key.secagg_id)
        if last is not None and last[0] != round_number:
            # a new round of this key: the masks of the previous one will never be used again
            self.pool.forget(key.key, biprime.biprime, last[0])
        if last is None or last[0] != round_number or last[1] < n_values:
            self._planned[key.secagg_id] = (round_number, n_values)

    def start_masks(
        self, *, key: ServerKeyShare, biprime: Biprime, round_number: int, n_values: int | None
    ) -> None:
        """Start computing the masks of ``n_values`` values and of the one-value factor that follows them.

        The count is at least that of this key's previous round, which included the aux vars the
        parameter count does not show; ``None`` uses the previous count alone (nothing when unknown).
        """
        last = self._planned.get(key.secagg_id)
        known = [v for v in (n_values, None if last is None else last[1]) if v is not None and v >= 0]
        if not known or self._material_problem(key, biprime, round_number) is not None:
            return  # encrypt computes what is missing, and reports any problem
        count_values = max(known)
        self._remember(key, biprime, round_number, count_values)
        count = self.encoding.ciphertexts(count_values, key.num_nodes, biprime.biprime) + 1
        self.pool.start(key.key, biprime.biprime, round_number, count)

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

        Values beyond the clipping range are clipped (the caller counts and reports them).
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
        if first_index == 0:
            self._remember(key, biprime, round_number, arr.size)
        masks = self.pool.get(key.key, n, round_number, first_index, first_index + len(plaintexts))
        return Success(protect(plaintexts, masks, n))

    def close(self) -> None:
        """Stop the mask workers."""
        self.pool.close()
