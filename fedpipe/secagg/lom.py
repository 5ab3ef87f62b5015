"""LOM secure aggregation, bit-for-bit Fed-BioMed 6.4.1's SecaggLomCrypter, at the ChaCha20 keystream floor.

What 6.4.1 does (``common/secagg/_lom.py``, ``_secagg_crypter.py``, ``utils/_secagg_utils.py``,
``node/secagg/_secagg_round.py``), and this module reproduces with numpy instead of per-value Python:

| item            | value                                                                                |
|-----------------|--------------------------------------------------------------------------------------|
| nonce           | ``secagg_dh_id.encode().zfill(16)[:16]`` (``bytes.zfill``: ASCII ``0`` on the left,   |
|                 | after a leading ``+``/``-``); the same for every round of the DH context             |
| ChaCha20        | ``cryptography``'s: 32-byte key, the 16-byte nonce is a little-endian 32-bit block     |
|                 | counter then 12 nonce bytes; OpenSSL carries the counter into the next 32-bit word     |
|                 | (a 64-bit counter), which newer ``cryptography`` refuses: we carry it ourselves       |
| round seed      | ``ChaCha20(pairwise_secret, nonce)`` over ``tau.to_bytes(16, "big")``, then 16 zeros  |
| tau             | the TrainRequest ``round`` number, as is                                             |
| mask of a peer  | ``ChaCha20(seed, nonce)`` over the big-endian 8-byte words ``tau, tau + 1, ...``,     |
|                 | read as native (little-endian) uint64: keystream XOR byte-swapped ``tau + i``         |
| sign            | ``+`` when ``peer_id < own_id`` (str order), else ``-``; all arithmetic mod 2**64     |
| parties         | the DH context's ``parties`` (node ids only), the node itself skipped                 |
| overflow guard  | refused when a value has ``>= 64 - ceil(log2(len(parties)))`` bits                    |
| quantization    | ``min(T - 1, (clip(x, -c, c) + c) * T / (2c))`` in float64, truncated to an integer;  |
|                 | c = 3 and T = 2**13 by default (``SAParameters``)                                     |
| weighting       | levels times the sample size, ``2 ** weight.bit_length() <= 2**17``                   |
| factor          | ``secagg_random`` encrypted like a one-value update, same round, same weight: its     |
|                 | mask is the update's first mask (6.4.1 calls this insecure validation)                |
| aggregation     | uint64 sum mod 2**64; ``sum / total_sample_size`` (Python true division), that float  |
|                 | truncated to uint64, then ``-c + level * (2c / (T - 1))``                             |

Errors: every function here raises :class:`LomInputError` (a ``ValueError``) with a one-line message
that names no secret and no path, safe as ``RoundError.public``; :meth:`LomCrypter.encrypt` wraps that
into ``Failure(RoundError(ENCRYPTION_FAILED))`` for the node's steps, :meth:`LomCrypter.decrypt_mean`
into ``Failure(LomInputError)`` for the researcher. Where 6.4.1 would accept a bad input and return
nonsense (non-finite values, duplicate parties, an empty nonce) we refuse it instead.

Fedpipe mode (the last section; fedpipe's own federations, never a Fed-BioMed researcher): the same
quantization and weighting, masks from a cryptographic PRG instead (``fedpipe_round_key``: one
HKDF-SHA256 key per peer, round and context; ``fedpipe_lom_masks``: its ChaCha20 keystream as
uint64 words, word ``i`` for value index ``i``), and ``FedpipeLomCrypter`` that encrypts a vector
from any value index, so that the encryption factor uses words of its own.
"""

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
from attrs import field, frozen
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from returns.result import Failure, Result, Success

from fedpipe.errors import ErrorCode, RoundError

__all__ = [
    "CLIPPING_RANGE",
    "FEDPIPE_LOM_INFO",
    "FEDPIPE_TARGET_RANGE",
    "MAX_ROUND",
    "NONCE_BYTES",
    "SECRET_BYTES",
    "TARGET_RANGE",
    "WEIGHT_RANGE",
    "FedpipeLomCrypter",
    "LomCrypter",
    "LomInputError",
    "fedpipe_lom_masks",
    "fedpipe_round_key",
    "lom_aggregate",
    "lom_decrypt_mean",
    "lom_masks",
    "lom_nonce",
    "lom_protect",
    "lom_quantize",
    "lom_reverse_quantize",
    "round_seed",
]

UInt64Array = npt.NDArray[np.uint64]
FloatArray = npt.NDArray[np.float64]

CLIPPING_RANGE = 3
TARGET_RANGE = 2**13
WEIGHT_RANGE = 2**17
MAX_ROUND = 1000
"""6.4.1 refuses vectors with ``size + MAX_ROUND > 2**61``."""
NONCE_BYTES = 16
SECRET_BYTES = 32

_BLOCK = 64
_COUNTER_BLOCKS = 1 << 32
_CHUNK = 1 << 17
"""Values per chunk: every pass over a chunk stays in cache (a few 256 KiB buffers)."""
_MIN_PART = 1 << 17
"""Below this many values per thread, threads cost more than they save."""
_SWAPPED_INDEX = np.arange(_CHUNK, dtype=np.uint64).byteswap()
_SWAPPED_INDEX.flags.writeable = False
_MAGIC = 2.0**52
"""A float in [2**52, 2**53) holds the integer ``v - 2**52`` in its low mantissa bits."""
_MAGIC_BITS = np.uint64(0x4330000000000000)
_U64 = 1 << 64


class LomInputError(ValueError):
    """An input LOM cannot encrypt or decrypt; the message is one line, without secrets or paths."""


def lom_nonce(secagg_id: str) -> bytes:
    """The 16-byte nonce 6.4.1 derives from the DH context id (``SecaggLomCrypter(nonce=secagg_id)``).

    >>> lom_nonce("secagg_0123456789abcdef")
    b'secagg_012345678'
    >>> lom_nonce("-ab")
    b'-0000000000000ab'
    """
    if not isinstance(secagg_id, str) or not secagg_id:
        # 6.4.1 draws a random nonce then: the parties' masks would not cancel
        raise LomInputError("the LOM nonce (secagg id) must be a non-empty string")
    return secagg_id.encode().zfill(NONCE_BYTES)[:NONCE_BYTES]


class _Keystream:
    """ChaCha20 over a stream longer than one 32-bit counter allows, carried as OpenSSL 3 does.

    OpenSSL (``cryptography`` <= 4x) increments the first 64 bits of the 16-byte nonce as one
    little-endian counter; newer ``cryptography`` raises when the low 32 bits would wrap. Each segment
    therefore gets its own encryptor, started at the carried counter.
    """

    def __init__(self, key: bytes, nonce: bytes, *, skip_blocks: int = 0) -> None:
        self._key = key
        self._counter = (int.from_bytes(nonce[:8], "little") + skip_blocks) % _U64
        self._tail = nonce[8:]
        self._enc, self._left = self._segment()

    def _segment(self) -> tuple[CipherContext, int]:
        # an encryptor at the current counter, and the bytes it may produce before its 32 bits wrap
        nonce = self._counter.to_bytes(8, "little") + self._tail
        enc = Cipher(algorithms.ChaCha20(self._key, nonce), mode=None).encryptor()
        return enc, (_COUNTER_BLOCKS - (self._counter & 0xFFFFFFFF)) * _BLOCK

    def xor_into(self, data: memoryview, out: memoryview) -> None:
        """Write ``data`` XOR the next ``len(data)`` keystream bytes into ``out``."""
        done = 0
        while done < len(data):
            if self._left == 0:
                self._counter = (self._counter + _COUNTER_BLOCKS - (self._counter & 0xFFFFFFFF)) % _U64
                self._enc, self._left = self._segment()
            n = min(len(data) - done, self._left)
            self._enc.update_into(data[done : done + n], out[done : done + n])
            done += n
            self._left -= n


def _workers(workers: int) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise LomInputError("the number of LOM worker threads must be a positive integer")
    return workers


def _check_nonce(nonce: bytes) -> None:
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise LomInputError(f"the LOM nonce must be {NONCE_BYTES} bytes")


def _check_tau(tau: int, size: int) -> None:
    if not isinstance(tau, int) or isinstance(tau, bool) or tau < 0:
        raise LomInputError("the LOM round (tau) must be a non-negative integer")
    if size + MAX_ROUND > 1 << 61:
        raise LomInputError(f"cannot mask {size} values: size + {MAX_ROUND} must not exceed 2**61")
    if tau + size > _U64:
        raise LomInputError("the LOM round (tau) plus the vector length must not exceed 2**64")


def round_seed(pairwise_secret: bytes, *, tau: int, nonce: bytes) -> bytes:
    """The 32-byte ChaCha20 key of one peer for round ``tau`` (6.4.1's ``PRF.eval_key``).

    >>> len(round_seed(bytes(32), tau=1, nonce=bytes(16)))
    32
    """
    _check_nonce(nonce)
    _check_tau(tau, 0)
    if not isinstance(pairwise_secret, bytes) or len(pairwise_secret) != SECRET_BYTES:
        raise LomInputError(f"a LOM pairwise secret must be {SECRET_BYTES} bytes")
    head = bytearray(16)
    _Keystream(pairwise_secret, nonce).xor_into(memoryview(tau.to_bytes(16, "big")), memoryview(head))
    return bytes(head) + bytes(16)


def _peers(
    pairwise_secrets: Mapping[str, bytes], own_id: str, parties: Sequence[str] | None
) -> tuple[list[tuple[str, bytes]], int]:
    """(peer id, secret) in 6.4.1's iteration order, and the number of parties."""
    if not isinstance(own_id, str) or not own_id:
        raise LomInputError("the node id must be a non-empty string")
    if parties is None:
        if own_id in pairwise_secrets:
            raise LomInputError("the pairwise secrets must not include the node itself")
        names = list(pairwise_secrets)
        n_parties = len(names) + 1
    else:
        plist = list(parties)
        if len(set(plist)) != len(plist):
            raise LomInputError("the LOM parties list has duplicates")
        if own_id not in plist:
            raise LomInputError("the node is not among the LOM parties")
        names = [p for p in plist if p != own_id]
        n_parties = len(plist)
        missing = [p for p in names if p not in pairwise_secrets]
        if missing:
            raise LomInputError(f"no pairwise secret for {len(missing)} of the {len(names)} peers")
    if not names:
        raise LomInputError("LOM needs at least one peer (pairwise secrets are empty)")
    for name in names:
        if not isinstance(name, str):
            raise LomInputError("LOM party ids must be strings")
        secret = pairwise_secrets[name]
        if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
            raise LomInputError(f"a LOM pairwise secret must be {SECRET_BYTES} bytes")
    return [(name, pairwise_secrets[name]) for name in names], n_parties


def _value_limit(n_parties: int) -> int:
    # 6.4.1 refuses bit_length(v) >= 64 - ceil(log2(n)), i.e. v >= 2 ** (63 - ceil(log2(n)))
    return 1 << max(0, 63 - (n_parties - 1).bit_length())


Fill = Callable[[int, int, UInt64Array], None]


def _chunks(tau: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) value ranges whose counters ``tau + i`` stay inside one aligned block of _CHUNK."""
    out = []
    start = 0
    while start < size:
        stop = min(size, start + _CHUNK - ((tau + start) & (_CHUNK - 1)))
        out.append((start, stop))
        start = stop
    return out


def _masked(
    size: int,
    peers: list[tuple[str, bytes]],
    *,
    own_id: str,
    tau: int,
    nonce: bytes,
    fill: Fill | None,
    workers: int = 1,
) -> UInt64Array:
    """``fill``'s values plus the signed masks of ``peers`` (the masks alone when None), in ``workers`` threads.

    ChaCha20 (``cryptography``) and numpy release the GIL, so threads over disjoint ranges of the
    vector scale; each range starts its keystreams at its own block, and the output does not depend
    on ``workers``.
    """
    seeds = [(round_seed(secret, tau=tau, nonce=nonce), peer < own_id) for peer, secret in peers]
    out = np.empty(size, dtype=np.uint64)
    _in_parts(size, workers, lambda lo, hi: _mask_range(out, lo, hi, seeds, tau=tau, nonce=nonce, fill=fill))
    return out


def _in_parts(size: int, workers: int, work: Callable[[int, int], None]) -> None:
    """Run ``work(lo, hi)`` over disjoint ranges covering ``[0, size)``, in up to ``workers`` threads.

    Boundaries fall on whole ChaCha20 blocks (8 values), so that each part can seek its
    keystreams; a failure of any part (a fill's ``LomInputError``) is re-raised.
    """
    parts = max(1, min(workers, size // _MIN_PART))
    bounds = [0] + [(size * i // parts) & ~7 for i in range(1, parts)] + [size]
    ranges = [(lo, hi) for lo, hi in itertools.pairwise(bounds) if hi > lo]
    if len(ranges) == 1:
        work(0, size)
        return
    with ThreadPoolExecutor(max_workers=len(ranges)) as pool:
        for future in [pool.submit(work, lo, hi) for lo, hi in ranges]:
            future.result()


def _add_masks(
    view: UInt64Array,
    mask: UInt64Array,
    streams: list[tuple["_Keystream", bool]],
    plain: memoryview,
    mask_bytes: memoryview,
) -> None:
    """Add (or subtract) to ``view`` each stream's encryption of ``plain``, read as uint64 into ``mask``."""
    for stream, add in streams:
        stream.xor_into(plain, mask_bytes)
        if add:
            np.add(view, mask, out=view)
        else:
            np.subtract(view, mask, out=view)


def _mask_range(
    out: UInt64Array,
    lo: int,
    hi: int,
    seeds: list[tuple[bytes, bool]],
    *,
    tau: int,
    nonce: bytes,
    fill: Fill | None,
) -> None:
    """Fill ``out[lo:hi]`` and add the masks there, chunk by chunk (every pass stays in cache)."""
    streams = [(_Keystream(seed, nonce, skip_blocks=lo // 8), add) for seed, add in seeds]
    with np.errstate(over="ignore"):
        _mask_chunks(out, lo, hi, streams, tau=tau, fill=fill)


def _mask_chunks(
    out: UInt64Array, lo: int, hi: int, streams: list[tuple[_Keystream, bool]], *, tau: int, fill: Fill | None
) -> None:
    counter = np.empty(_CHUNK, dtype=np.uint64)
    mask = np.empty(_CHUNK, dtype=np.uint64)
    counter_bytes = counter.data.cast("B")
    mask_bytes = mask.data.cast("B")
    for rel_start, rel_stop in _chunks(tau + lo, hi - lo):
        start, stop = lo + rel_start, lo + rel_stop
        m = stop - start
        view = out[start:stop]
        if fill is not None:
            fill(start, stop, view)
        # the plaintext 6.4.1 encrypts: (tau + i).to_bytes(8, "big"). Within an aligned block the
        # counter is base | offset, and a byte swap maps | to |: one OR with a swapped table
        first = tau + start
        offset = first & (_CHUNK - 1)
        high = np.uint64(int.from_bytes((first - offset).to_bytes(8, "big"), "little"))
        c = counter[:m]
        np.bitwise_or(_SWAPPED_INDEX[offset : offset + m], high, out=c)
        rest = streams
        if fill is None:
            # masks alone: the first peer's mask is written in place, not added to zeros
            (stream, add), rest = streams[0], streams[1:]
            stream.xor_into(counter_bytes[: 8 * m], view.data.cast("B"))
            if not add:
                np.negative(view, out=view)
        _add_masks(view, mask[:m], rest, counter_bytes[: 8 * m], mask_bytes[: 8 * m])


def _as_uint64(values: Sequence[int] | npt.NDArray[np.generic], what: str) -> UInt64Array:
    if isinstance(values, np.ndarray):
        if values.dtype == np.uint64:
            arr = np.asarray(values, dtype=np.uint64)
        elif values.dtype.kind in "iu" and (values.size == 0 or int(values.min()) >= 0):
            arr = values.astype(np.uint64)
        else:
            raise LomInputError(f"{what} must be unsigned 64-bit integers")
    else:
        items = list(values)
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _U64 for v in items):
            raise LomInputError(f"{what} must be integers in [0, 2**64)")
        arr = np.array(items, dtype=np.uint64)
    if arr.ndim != 1:
        raise LomInputError(f"{what} must be a flat vector")
    return arr


def lom_masks(
    pairwise_secrets: Mapping[str, bytes],
    *,
    own_id: str,
    tau: int,
    size: int,
    nonce: bytes,
    parties: Sequence[str] | None = None,
    workers: int = 1,
) -> UInt64Array:
    """The LOM mask of ``own_id`` for round ``tau``: ``size`` uint64 words, summing to 0 over all parties.

    ``parties`` (6.4.1's ``node_ids``, with the node itself) fixes the peers; without it the peers
    are the keys of ``pairwise_secrets``. The mask of a peer is added when its id sorts before
    ``own_id`` and subtracted otherwise, mod 2**64. ``workers`` threads share the work (same output).
    """
    _check_nonce(nonce)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise LomInputError("the LOM vector length must be a positive integer")
    _check_tau(tau, size)
    peers, _ = _peers(pairwise_secrets, own_id, parties)
    return _masked(size, peers, own_id=own_id, tau=tau, nonce=nonce, fill=None, workers=_workers(workers))


def lom_protect(
    values: Sequence[int] | npt.NDArray[np.generic],
    *,
    pairwise_secrets: Mapping[str, bytes],
    own_id: str,
    tau: int,
    nonce: bytes,
    parties: Sequence[str] | None = None,
    workers: int = 1,
) -> UInt64Array:
    """``values + mask`` mod 2**64 (6.4.1's ``LOM.protect``), with its overflow guard.

    Each value must have fewer than ``64 - ceil(log2(n_parties))`` bits, so that the sum of all the
    parties' values cannot wrap.
    """
    x = _as_uint64(values, "LOM values")
    _check_nonce(nonce)
    if x.size == 0:
        raise LomInputError("there are no values to protect")
    _check_tau(tau, x.size)
    peers, n_parties = _peers(pairwise_secrets, own_id, parties)
    if int(x.max()) >= _value_limit(n_parties):
        raise LomInputError(f"a value is too large for LOM with {n_parties} parties (overflow of the sum)")

    def fill(start: int, stop: int, view: UInt64Array) -> None:
        view[...] = x[start:stop]

    return _masked(x.size, peers, own_id=own_id, tau=tau, nonce=nonce, fill=fill, workers=_workers(workers))


def lom_aggregate(updates: Sequence[Sequence[int] | npt.NDArray[np.generic]]) -> UInt64Array:
    """The sum mod 2**64 of the parties' protected vectors: the masks cancel (6.4.1's ``LOM.aggregate``)."""
    arrays = [_as_uint64(u, "LOM updates") for u in updates]
    if not arrays:
        raise LomInputError("there are no LOM updates to aggregate")
    size = arrays[0].size
    if size == 0 or any(a.size != size for a in arrays):
        raise LomInputError("the LOM updates must have the same positive length")
    total = arrays[0].copy()
    for a in arrays[1:]:
        np.add(total, a, out=total)
    return total


def _check_quantization(clipping_range: float, target_range: int) -> tuple[float, float, float]:
    """(c, T, 2c) as the floats 6.4.1's Python arithmetic converts them to, refused where inexact."""
    if isinstance(clipping_range, bool) or not isinstance(clipping_range, (int, float)):
        raise LomInputError("the clipping range must be a number")
    if not (math.isfinite(clipping_range) and clipping_range > 0):
        raise LomInputError("the clipping range must be positive and finite")
    if isinstance(clipping_range, int) and float(2 * clipping_range) != 2 * clipping_range:
        raise LomInputError("the clipping range is too large")
    if (
        isinstance(target_range, bool)
        or not isinstance(target_range, int)
        or not 2 <= target_range <= 1 << 63
    ):
        raise LomInputError("the target range must be an integer in [2, 2**63]")
    if float(target_range) != target_range:
        # 6.4.1 multiplies a float by T: an inexact T makes that product differ from ours
        raise LomInputError("the target range must be exactly representable as a float")
    return float(clipping_range), float(target_range), float(2 * clipping_range)


def _as_floats(values: Sequence[float] | npt.NDArray[np.generic]) -> FloatArray:
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise LomInputError("the values to encrypt must be numbers") from e
    if x.ndim != 1:
        raise LomInputError("the values to encrypt must be a flat vector")
    if x.size == 0:
        raise LomInputError("there are no values to encrypt")
    # the sum is finite only when every value is (NaN and infinities carry into it); only where it
    # is not, e.g. for huge values, does it need the full check. Not np.dot: BLAS would wake its
    # thread pool, whose threads spin on the cores for a while after and slow the masking threads
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.add.reduce(x))
    if not (math.isfinite(total) or np.isfinite(x).all()):
        # 6.4.1 clips an infinity and turns NaN into an arbitrary level; neither is a model weight
        raise LomInputError("the values to encrypt must be finite")
    return x


def _quantize_into(
    x: FloatArray, out: UInt64Array, scratch: FloatArray, c: float, t: float, two_c: float, top: np.uint64
) -> None:
    # (clip(x) + c) * T / (2c), evaluated in the order and precision of 6.4.1's Python floats
    np.clip(x, -c, c, out=scratch)
    np.add(scratch, c, out=scratch)
    np.multiply(scratch, t, out=scratch)
    np.divide(scratch, two_c, out=scratch)
    # int(q) truncates; min(T - 1, q) in integers, as T - 1 may not be a float
    np.copyto(out, scratch, casting="unsafe")
    np.minimum(out, top, out=out)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


_TINY = 2.0**-1074
"""The smallest subnormal double: ``k * _TINY`` has the bit pattern ``k`` for integers ``0 <= k < 2**52``."""


def _subnormals_work() -> bool:
    """Whether this thread's floating point keeps subnormals (no flush-to-zero / denormals-are-zero).

    ``torch.set_flush_denormal(True)`` (or a library's fast-math start-up) sets FTZ/DAZ per thread; the
    subnormal trick of :func:`_fast_fill` is exact only without them, so it checks each time.
    """
    tiny = _TINY
    return tiny * 2.0 != 0.0


def _fast_fill(x: FloatArray, c: float, d: float, top: float, weight: float | None) -> Fill:
    """Quantize and weight in place in the output words, for T a power of two and levels x weight < 2**52.

    Equal to 6.4.1 value for value: ``(x + c) * T`` is exact (T is a power of two), so dividing by
    the exact ``d = 2c / T`` rounds the same quotient once; without the clip of x, ``x + c`` is
    <= 0 below the range and >= 2c above it (rounding is monotonic), so clamping the quotient to
    [0, T - 1] gives 6.4.1's 0 and T - 1 there. The integers come without a float-to-integer
    conversion: the truncated level times ``weight * 2**-1074`` is the subnormal whose bit pattern
    is ``level * weight`` (exact: both are integers and the product is below 2**52), so the words
    hold the weighted levels after five vector passes. Where this thread flushes subnormals to zero,
    the level is shifted into [2**52, 2**53) instead (two more passes), whose low bits are the same.
    """
    scale = _TINY * (1.0 if weight is None else weight)  # exact: weight < 2**52

    def fill(start: int, stop: int, view: UInt64Array) -> None:
        f = view.view(np.float64)
        np.add(x[start:stop], c, out=f)
        np.divide(f, d, out=f)  # far beyond the range: inf (warning off in _mask_range), clamped below
        np.clip(f, 0.0, top, out=f)
        np.trunc(f, out=f)
        if _subnormals_work():
            np.multiply(f, scale, out=f)
            return
        if weight is not None:
            np.multiply(f, weight, out=f)
        np.add(f, _MAGIC, out=f)
        np.subtract(view, _MAGIC_BITS, out=view)

    return fill


def lom_quantize(
    values: Sequence[float] | npt.NDArray[np.generic],
    *,
    clipping_range: float = CLIPPING_RANGE,
    target_range: int = TARGET_RANGE,
) -> UInt64Array:
    """6.4.1's ``quantize``: ``min(T - 1, (clip(x, -c, c) + c) * T / (2c))`` truncated to uint64.

    >>> lom_quantize([-3.0, -1e-9, 0.0, 2.999, 3.0, 7.5]).tolist()
    [0, 4095, 4096, 8190, 8191, 8191]
    """
    c, t, two_c = _check_quantization(clipping_range, target_range)
    x = _as_floats(values)
    out = np.empty(x.size, dtype=np.uint64)
    _quantize_into(x, out, np.empty(x.size, dtype=np.float64), c, t, two_c, np.uint64(target_range - 1))
    return out


def lom_reverse_quantize(
    levels: npt.NDArray[np.generic],
    *,
    clipping_range: float = CLIPPING_RANGE,
    target_range: int = TARGET_RANGE,
) -> FloatArray:
    """6.4.1's ``reverse_quantize``: ``-c + level * (2c / (T - 1))``, levels truncated to uint64 first.

    >>> [round(v, 6) for v in lom_reverse_quantize(np.array([0.0, 4095.5, 4095.9, 8191.0])).tolist()]
    [-3.0, -0.000366, -0.000366, 3.0]
    """
    c, _, _ = _check_quantization(clipping_range, target_range)
    arr = np.asarray(levels)
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr >= 0).all() and (arr < 2.0**64).all()):
        raise LomInputError("cannot reverse quantize: levels outside [0, 2**64)")
    step = (clipping_range - (-clipping_range)) / (target_range - 1)
    as_int = arr.astype(np.uint64)
    return np.asarray(-c + step * as_int.astype(np.float64), dtype=np.float64)


def _true_divide(sums: UInt64Array, total: int) -> FloatArray:
    """``[int(s) / total for s in sums]``: Python's correctly rounded int division."""
    if total < 1 << 53 and (sums.size == 0 or int(sums.max()) < 1 << 53):
        # both exact as floats: one IEEE division is the correctly rounded quotient
        return np.asarray(sums.astype(np.float64) / float(total), dtype=np.float64)
    # huge sums (a target range beyond training's): the exact path, per value
    return np.array([int(s) / total for s in sums.tolist()], dtype=np.float64)


def lom_decrypt_mean(
    updates: Sequence[Sequence[int] | npt.NDArray[np.generic]],
    *,
    total_sample_size: int,
    clipping_range: float = CLIPPING_RANGE,
    target_range: int = TARGET_RANGE,
) -> FloatArray:
    """The weighted mean of the parties' values from their protected vectors (6.4.1's ``aggregate``).

    Sum mod 2**64, divide by ``total_sample_size`` (the sum of the weights the nodes used), truncate
    to a level and reverse-quantize.
    """
    if isinstance(total_sample_size, bool) or not isinstance(total_sample_size, int) or total_sample_size < 1:
        raise LomInputError("the total sample size must be a positive integer")
    _check_quantization(clipping_range, target_range)
    means = _true_divide(lom_aggregate(updates), total_sample_size)
    return lom_reverse_quantize(means, clipping_range=clipping_range, target_range=target_range)


def _check_weight(weight: int | None) -> None:
    if weight is None:
        return
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
        raise LomInputError("the weight (sample size) must be a non-negative integer")
    if 2 ** weight.bit_length() > WEIGHT_RANGE:
        raise LomInputError(f"the weight (sample size) must be less than {WEIGHT_RANGE}")


def _encryption(protect: Callable[[], UInt64Array]) -> Result[UInt64Array, RoundError]:
    """``protect()`` as a Result: a ``LomInputError`` becomes ``Failure(RoundError(ENCRYPTION_FAILED))``."""
    try:
        return Success(protect())
    except LomInputError as e:
        msg = f"LOM encryption refused: {e}"
        return Failure(RoundError(code=ErrorCode.ENCRYPTION_FAILED, step="", detail=msg, public=msg))


@frozen(kw_only=True)
class LomCrypter:
    """A node's (or researcher's) LOM crypter: 6.4.1's ``SecaggLomCrypter`` with explicit settings.

    ``nonce`` is the 16-byte value shared by the parties (:func:`lom_nonce` of the DH context id in a
    Fed-BioMed federation; public, must not be reused with the same secrets and rounds). ``workers``
    threads share the masking of long vectors (1 by default: at 1M values one thread takes ~6 ms,
    and a node's torch threads may hold the cores); the output does not depend on it.
    """

    nonce: bytes = field(repr=False)
    clipping_range: float = CLIPPING_RANGE
    target_range: int = TARGET_RANGE
    workers: int = 1

    @classmethod
    def for_secagg_id(
        cls,
        secagg_id: str,
        *,
        clipping_range: float | None = None,
        target_range: int | None = None,
        workers: int = 1,
    ) -> "LomCrypter":
        """The crypter of a Fed-BioMed DH context; ``None`` settings take 6.4.1's defaults (c=3, T=2**13)."""
        return cls(
            nonce=lom_nonce(secagg_id),
            clipping_range=CLIPPING_RANGE if clipping_range is None else clipping_range,
            target_range=target_range or TARGET_RANGE,
            workers=workers,
        )

    def protect(
        self,
        values: Sequence[float] | npt.NDArray[np.generic],
        *,
        pairwise_secrets: Mapping[str, bytes],
        own_id: str,
        round_number: int,
        weight: int | None,
        parties: Sequence[str] | None = None,
    ) -> UInt64Array:
        """Quantize, weight and mask ``values`` (6.4.1's ``SecaggLomCrypter.encrypt``); raises LomInputError.

        ``weight`` is the node's sample size (``None``: unweighted, as 6.4.1 allows); the researcher
        divides the sum by the total sample size.
        """
        _check_nonce(self.nonce)
        workers = _workers(self.workers)
        c, t, two_c = _check_quantization(self.clipping_range, self.target_range)
        x = _as_floats(values)
        _check_tau(round_number, x.size)
        peers, n_parties = _peers(pairwise_secrets, own_id, parties)
        _check_weight(weight)
        w = 1 if weight is None else weight
        limit = _value_limit(n_parties)
        top = np.uint64(self.target_range - 1)
        d = two_c / t
        if (
            _is_power_of_two(self.target_range)
            and d * t == two_c
            and (self.target_range - 1) * w < min(1 << 52, limit)
        ):
            return _masked(
                x.size,
                peers,
                own_id=own_id,
                tau=round_number,
                nonce=self.nonce,
                fill=_fast_fill(x, c, d, float(self.target_range - 1), None if weight is None else float(w)),
                workers=workers,
            )
        check = (self.target_range - 1) * w >= limit  # only then can a real value overflow

        def fill(start: int, stop: int, view: UInt64Array) -> None:
            scratch = np.empty(stop - start, dtype=np.float64)  # one per call: fills run in threads
            _quantize_into(x[start:stop], view, scratch, c, t, two_c, top)
            if check and int(view.max()) * w >= limit:
                raise LomInputError(
                    f"a weighted value is too large for LOM with {n_parties} parties (overflow of the sum)"
                )
            if weight is not None:
                np.multiply(view, np.uint64(w), out=view)

        return _masked(
            x.size, peers, own_id=own_id, tau=round_number, nonce=self.nonce, fill=fill, workers=workers
        )

    def encrypt(
        self,
        values: Sequence[float] | npt.NDArray[np.generic],
        *,
        pairwise_secrets: Mapping[str, bytes],
        own_id: str,
        round_number: int,
        weight: int | None,
        parties: Sequence[str] | None = None,
    ) -> Result[UInt64Array, RoundError]:
        """:meth:`protect` as a Result: bad input is ``Failure(RoundError(ENCRYPTION_FAILED))``."""
        return _encryption(
            lambda: self.protect(
                values,
                pairwise_secrets=pairwise_secrets,
                own_id=own_id,
                round_number=round_number,
                weight=weight,
                parties=parties,
            )
        )

    def encryption_factor(
        self,
        secagg_random: float,
        *,
        pairwise_secrets: Mapping[str, bytes],
        own_id: str,
        round_number: int,
        weight: int | None,
        parties: Sequence[str] | None = None,
    ) -> Result[UInt64Array, RoundError]:
        """6.4.1's ``encryption_factor``: ``[secagg_random]`` encrypted like an update, same round and weight."""
        return self.encrypt(
            [secagg_random],
            pairwise_secrets=pairwise_secrets,
            own_id=own_id,
            round_number=round_number,
            weight=weight,
            parties=parties,
        )

    def decrypt_mean(
        self,
        updates: Sequence[Sequence[int] | npt.NDArray[np.generic]],
        *,
        total_sample_size: int,
    ) -> Result[FloatArray, LomInputError]:
        """The weighted mean of the nodes' values (6.4.1's ``SecaggLomCrypter.aggregate``) as a Result."""
        try:
            return Success(
                lom_decrypt_mean(
                    updates,
                    total_sample_size=total_sample_size,
                    clipping_range=self.clipping_range,
                    target_range=self.target_range,
                )
            )
        except LomInputError as e:
            return Failure(e)


# --- fedpipe mode: masks from a cryptographic PRG, for fedpipe's own federations ------------------
#
# 6.4.1's round seed is ChaCha20 of the round number under the pairwise secret, padded with 16
# zero bytes (a 128-bit key), and its masks XOR a public counter into the keystream. Between
# fedpipe nodes nothing needs that: each peer's mask of a round is the plain ChaCha20 keystream
# under a 256-bit key derived with HKDF-SHA256 from the pairwise secret, the round and the
# context id, read as little-endian uint64 words. Word ``i`` of the stream masks value index
# ``i``, so a vector encrypted from ``first_index`` (the encryption factor after the update)
# uses words no other vector of the round uses. Nothing above this section changes.

FEDPIPE_LOM_INFO = b"fedpipe-lom-v1"
"""The HKDF ``info`` prefix of fedpipe-mode round keys (and the name of the mode in metadata)."""
FEDPIPE_TARGET_RANGE = 2**20
"""Quantization levels of fedpipe-mode LOM: the words are 64 bits wide anyway, so 128 times
6.4.1's 2**13 costs nothing (weighted values stay below 2**37) and the mean is that much closer."""
_ZERO_NONCE = bytes(NONCE_BYTES)  # every round key is used for one stream only
_ZEROS = np.zeros(_CHUNK, dtype=np.uint64)
_ZEROS.flags.writeable = False


def _check_context_id(secagg_id: str) -> bytes:
    if not isinstance(secagg_id, str) or not secagg_id:
        raise LomInputError("the LOM context id must be a non-empty string")
    try:
        return secagg_id.encode("utf-8")
    except UnicodeEncodeError:
        raise LomInputError("the LOM context id must be valid Unicode text") from None


def fedpipe_round_key(pairwise_secret: bytes, *, secagg_id: str, tau: int) -> bytes:
    """The 32-byte ChaCha20 key of one peer for round ``tau``: HKDF-SHA256 of the pairwise secret.

    ``info`` is ``FEDPIPE_LOM_INFO`` + ``tau`` (8 bytes, big-endian) + the UTF-8 context id; no
    salt (the secret is already uniform). Distinct rounds and contexts give independent keys.

    >>> k = fedpipe_round_key(bytes(32), secagg_id="lom-1", tau=0)
    >>> len(k), k == fedpipe_round_key(bytes(32), secagg_id="lom-1", tau=1)
    (32, False)
    """
    context = _check_context_id(secagg_id)
    if not isinstance(tau, int) or isinstance(tau, bool) or not 0 <= tau < _U64:
        raise LomInputError("the LOM round (tau) must be an integer in [0, 2**64)")
    if not isinstance(pairwise_secret, bytes) or len(pairwise_secret) != SECRET_BYTES:
        raise LomInputError(f"a LOM pairwise secret must be {SECRET_BYTES} bytes")
    info = FEDPIPE_LOM_INFO + tau.to_bytes(8, "big") + context
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(pairwise_secret)


def _check_first_index(first_index: int, size: int) -> None:
    if not isinstance(first_index, int) or isinstance(first_index, bool) or first_index < 0:
        raise LomInputError("the first value index must be a non-negative integer")
    if first_index + size > 1 << 61:
        raise LomInputError("the value indices of a LOM vector must stay below 2**61")


def _stream_range(
    out: UInt64Array,
    lo: int,
    hi: int,
    keys: list[tuple[bytes, bool]],
    *,
    first_index: int,
    fill: Fill | None,
) -> None:
    """Fill ``out[lo:hi]`` and add (or subtract) each key's keystream words ``first_index + lo ...``."""
    start_word = first_index + lo
    streams = []
    for key, add in keys:
        stream = _Keystream(key, _ZERO_NONCE, skip_blocks=start_word // 8)
        skip = (start_word % 8) * 8
        if skip:  # the words of the first block that belong to earlier indices
            scratch = bytearray(skip)
            stream.xor_into(memoryview(bytes(skip)), memoryview(scratch))
        streams.append((stream, add))
    mask = np.empty(_CHUNK, dtype=np.uint64)
    mask_bytes = mask.data.cast("B")
    zero_bytes = _ZEROS.data.cast("B")
    with np.errstate(over="ignore"):
        for start in range(lo, hi, _CHUNK):
            stop = min(hi, start + _CHUNK)
            m = stop - start
            view = out[start:stop]
            rest = streams
            if fill is not None:
                fill(start, stop, view)
            else:
                # masks alone (``out`` is not initialised): the first peer's keystream is written in place
                (stream, add), rest = streams[0], streams[1:]
                stream.xor_into(zero_bytes[: 8 * m], view.data.cast("B"))
                if not add:
                    np.negative(view, out=view)
            _add_masks(view, mask[:m], rest, zero_bytes[: 8 * m], mask_bytes[: 8 * m])


def _stream_masked(
    size: int,
    peers: list[tuple[str, bytes]],
    *,
    own_id: str,
    secagg_id: str,
    tau: int,
    first_index: int,
    fill: Fill | None,
    workers: int,
) -> UInt64Array:
    """``fill``'s values plus the signed fedpipe-mode masks of ``peers`` (the masks alone when None)."""
    keys = [
        (fedpipe_round_key(secret, secagg_id=secagg_id, tau=tau), peer < own_id) for peer, secret in peers
    ]
    out = np.empty(size, dtype=np.uint64)
    _in_parts(
        size, workers, lambda lo, hi: _stream_range(out, lo, hi, keys, first_index=first_index, fill=fill)
    )
    return out


def fedpipe_lom_masks(
    pairwise_secrets: Mapping[str, bytes],
    *,
    own_id: str,
    secagg_id: str,
    tau: int,
    size: int,
    parties: Sequence[str] | None = None,
    first_index: int = 0,
    workers: int = 1,
) -> UInt64Array:
    """The fedpipe-mode mask of ``own_id`` for round ``tau``: words ``first_index .. + size - 1``.

    Per peer, the keystream of ``ChaCha20(fedpipe_round_key(secret, secagg_id, tau))`` read as
    little-endian uint64, added when the peer's id sorts before ``own_id`` and subtracted
    otherwise (as LOM does), so the masks of all the parties sum to zero mod 2**64 word by word.
    ``parties`` and ``workers`` as for :func:`lom_masks`.

    >>> s = {"a": bytes(32)}
    >>> m_b = fedpipe_lom_masks(s, own_id="b", secagg_id="x", tau=3, size=4)
    >>> m_a = fedpipe_lom_masks({"b": bytes(32)}, own_id="a", secagg_id="x", tau=3, size=4)
    >>> (m_a + m_b).tolist()
    [0, 0, 0, 0]
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise LomInputError("the LOM vector length must be a positive integer")
    _check_context_id(secagg_id)
    _check_tau(tau, size)
    _check_first_index(first_index, size)
    peers, _ = _peers(pairwise_secrets, own_id, parties)
    return _stream_masked(
        size,
        peers,
        own_id=own_id,
        secagg_id=secagg_id,
        tau=tau,
        first_index=first_index,
        fill=None,
        workers=_workers(workers),
    )


def _quantizing_fill(
    x: FloatArray, *, clipping_range: float, target_range: int, weight: int | None, n_parties: int
) -> Fill:
    """The fill that quantizes and weights ``x`` as :meth:`LomCrypter.protect` does (same levels)."""
    c, t, two_c = _check_quantization(clipping_range, target_range)
    _check_weight(weight)
    w = 1 if weight is None else weight
    limit = _value_limit(n_parties)
    d = two_c / t
    if _is_power_of_two(target_range) and d * t == two_c and (target_range - 1) * w < min(1 << 52, limit):
        return _fast_fill(x, c, d, float(target_range - 1), None if weight is None else float(w))
    top = np.uint64(target_range - 1)
    check = (target_range - 1) * w >= limit

    def fill(start: int, stop: int, view: UInt64Array) -> None:
        scratch = np.empty(stop - start, dtype=np.float64)
        _quantize_into(x[start:stop], view, scratch, c, t, two_c, top)
        if check and int(view.max()) * w >= limit:
            raise LomInputError(
                f"a weighted value is too large for LOM with {n_parties} parties (overflow of the sum)"
            )
        if weight is not None:
            np.multiply(view, np.uint64(w), out=view)

    return fill


@frozen(kw_only=True)
class FedpipeLomCrypter:
    """A fedpipe node's LOM crypter: 6.4.1's quantization and weighting, fedpipe-mode masks.

    ``target_range`` defaults to ``FEDPIPE_TARGET_RANGE``; the researcher decodes with the same
    range (recorded in the update's metadata). ``workers`` as for :class:`LomCrypter`.
    """

    clipping_range: float = CLIPPING_RANGE
    target_range: int = FEDPIPE_TARGET_RANGE
    workers: int = 1

    def protect(
        self,
        values: Sequence[float] | npt.NDArray[np.generic],
        *,
        pairwise_secrets: Mapping[str, bytes],
        own_id: str,
        secagg_id: str,
        round_number: int,
        weight: int | None,
        parties: Sequence[str] | None = None,
        first_index: int = 0,
    ) -> UInt64Array:
        """Quantize, weight and mask ``values`` from value index ``first_index``; raises LomInputError.

        Two vectors of one round must use disjoint index ranges (the update from 0, its factor
        after it): a mask word used twice reveals the difference of the two values it masks.
        """
        workers = _workers(self.workers)
        _check_context_id(secagg_id)
        x = _as_floats(values)
        _check_tau(round_number, x.size)
        _check_first_index(first_index, x.size)
        peers, n_parties = _peers(pairwise_secrets, own_id, parties)
        fill = _quantizing_fill(
            x,
            clipping_range=self.clipping_range,
            target_range=self.target_range,
            weight=weight,
            n_parties=n_parties,
        )
        return _stream_masked(
            x.size,
            peers,
            own_id=own_id,
            secagg_id=secagg_id,
            tau=round_number,
            first_index=first_index,
            fill=fill,
            workers=workers,
        )

    def encrypt(
        self,
        values: Sequence[float] | npt.NDArray[np.generic],
        *,
        pairwise_secrets: Mapping[str, bytes],
        own_id: str,
        secagg_id: str,
        round_number: int,
        weight: int | None,
        parties: Sequence[str] | None = None,
        first_index: int = 0,
    ) -> Result[UInt64Array, RoundError]:
        """:meth:`protect` as a Result: bad input is ``Failure(RoundError(ENCRYPTION_FAILED))``."""
        return _encryption(
            lambda: self.protect(
                values,
                pairwise_secrets=pairwise_secrets,
                own_id=own_id,
                secagg_id=secagg_id,
                round_number=round_number,
                weight=weight,
                parties=parties,
                first_index=first_index,
            )
        )
