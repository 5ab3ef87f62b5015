"""Researcher side: combine the nodes' encrypted updates (Joye-Libert or LOM), check, decrypt, average.

Every check that can fail returns a ``SecaggMismatch`` instead of a number, so that a wrong key, a
wrong round, a missing or extra node, a layout disagreement or a corrupted update never yields a
silently wrong mean. Joye-Libert (``decrypt_sums``, ``aggregate_results``):

1. the number of vectors is the number of nodes expected, all of the expected length, each
   ciphertext in ``(0, N^2)``;
2. after unmasking, every ``v`` must be ``1 mod N`` (keys summing to zero, same round, same tau
   indices); otherwise ``v`` is a random unit;
3. no bit may be set above the last slot of a plaintext, nor in the unused slots of the last one;
4. every value slot is at most ``(T - 1) * total weight``;
5. with the checksum slot, the decrypted sums satisfy the node's congruence modulo P.

LOM (``aggregate_lom_results``): one uint64 per value, the sum modulo 2**64 (the masks cancel when
every party of the DH context contributed to the same round), then check 4: a missing or extra
node, another round, nonce or secret leaves a random sum, beyond the bound with overwhelming
probability. The mean is 6.4.1's, value for value (truncated level, then reverse quantization).

Where the layout comes from. A result with ``metadata.secagg`` (a fedpipe node) says what it
encrypted: value counts, aux-var layout, factor index (and its encoding when it records one; else
the researcher's ``encoding``). A result without it (a stock Fed-BioMed 6.4.1 reply, or a fedpipe
node speaking 6.4.1) is read from the request the researcher sent, as 6.4.1 reads it: exactly the
``n_params`` flat model weights (no aux vars), compatible packing with slots for the context's nodes
and no checksum slot, the ``encryption_factor`` at tau index 0. A mixed set decrypts when all the
layouts agree (the ciphertexts are combined index by index); otherwise one line says which differ.

Joye-Libert is malleable: a tamperer who knows this layout can shift a value and its checksum
together. The checks catch corruption and inconsistency, not a deliberate forgery; authenticity of
the uploads is the transport's job.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from attrs import evolve, field, frozen
from returns.result import Failure, Result, Success

from fedpipe.secagg.jl import Mask, aggregate, masks, unmask
from fedpipe.secagg.layout import LeafSpec, specs_from_data, unflatten_aux
from fedpipe.secagg.lom import TARGET_RANGE as LOM_TARGET_RANGE
from fedpipe.secagg.lom import LomInputError, lom_aggregate, lom_decrypt_mean
from fedpipe.secagg.masks import MaskPool
from fedpipe.secagg.pack import spare_bits_clear, unpack
from fedpipe.secagg.params import CLIPPING_RANGE, Encoding, PackingMode, checksum_modulus
from fedpipe.secagg.quantize import reverse_quantize, step_size

__all__ = [
    "FACTOR_TOLERANCE",
    "JL_SCHEME",
    "LOM_SCHEME",
    "PARALLEL_MASKS",
    "AggregatedUpdate",
    "SecaggMismatch",
    "aggregate_lom_results",
    "aggregate_results",
    "decrypt_sums",
    "stock_encoding",
    "weighted_mean",
]

UIntArray = npt.NDArray[np.uint64]
FloatArray = npt.NDArray[np.float64]

FACTOR_TOLERANCE = 0.03
"""6.4.1's check of the decrypted encryption factor: ``math.isclose(factor, secagg_random, abs_tol=0.03)``."""
PARALLEL_MASKS = 256
"""From this many server masks on, ``pool=None`` computes them in worker processes on every core,
below it inline: a mask costs ~9 ms at 6.4.1's 1024-bit N, starting the processes ~1 s. A mask
modulo a larger N counts ``(bits(N) / 1024) ** 2`` times (~60 ms at 2048 bits)."""
JL_SCHEME = "joye-libert"
"""``metadata.secagg.scheme`` of a fedpipe Joye-Libert update."""
LOM_SCHEME = "lom"
"""``metadata.secagg.scheme`` of a fedpipe LOM update."""
_LOM_NAMES = frozenset({LOM_SCHEME, "low-overhead-masking"})
_U64 = 1 << 64


@frozen(kw_only=True)
class SecaggMismatch:
    """Why encrypted updates could not be turned into a trustworthy sum (``reason``: one line)."""

    reason: str


def _mismatch(reason: str) -> Failure[SecaggMismatch]:
    return Failure(SecaggMismatch(reason=reason))


def stock_encoding(encoding: Encoding = Encoding()) -> Encoding:
    """The encoding of a stock 6.4.1 node: compatible packing, no checksum slot, ``encoding``'s ranges.

    >>> stock_encoding().describe()["checksum"], stock_encoding().mode.value
    (False, 'compatible')
    """
    return evolve(encoding, mode=PackingMode.COMPATIBLE, checksum=False)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _all_cores_pool(count: int, biprime: int) -> MaskPool | None:
    """A pool on every core for ``count`` server masks, or None where inline is as fast."""
    cores = _cores()
    if count * (biprime.bit_length() / 1024) ** 2 < PARALLEL_MASKS or cores < 2:
        return None
    # decryption is what the researcher waits for: the workers run at normal priority
    return MaskPool(workers=cores, nice=0)


def _server_masks(
    pool: MaskPool | None, key: int, biprime: int, round_number: int, start: int, stop: int
) -> list[Mask]:
    if pool is not None:
        return pool.get(key, biprime, round_number, start, stop)
    owned = _all_cores_pool(stop - start, biprime)
    if owned is None:
        return masks(start, stop, round_number, key, biprime)
    try:
        return owned.get(key, biprime, round_number, start, stop)
    finally:
        owned.close()


def decrypt_sums(
    vectors: Sequence[Sequence[int]],
    *,
    server_key: int,
    biprime: int,
    round_number: int,
    n_values: int,
    n_nodes: int,
    encoding: Encoding = Encoding(),
    total_weight: int | None = None,
    first_index: int = 0,
    pool: MaskPool | None = None,
) -> Result[UIntArray, SecaggMismatch]:
    """The per-value sums of the nodes' weighted quantized values (the Joye-Libert checks above, in order).

    ``n_nodes`` is the number of nodes the key material was made for; it also fixes the slot width.
    The server key's masks (one modular exponentiation per ciphertext, the cost of decryption) come
    from ``pool``; without one they are computed in worker processes on every core when there are
    enough of them to repay starting the processes (``PARALLEL_MASKS``), inline otherwise.
    ``pool.start(server_key, biprime, round_number, count)`` when the train requests go out
    computes them while the nodes train, leaving only the products and the checks for the
    decryption. For a stock 6.4.1 node pass ``stock_encoding()``.
    """
    if len(vectors) != n_nodes:
        return _mismatch(f"expected {n_nodes} encrypted updates, got {len(vectors)}")
    if n_values < 0:
        return _mismatch("negative value count")
    slots = encoding.slots(n_nodes, biprime)
    if slots < 2:
        return _mismatch("the biprime is too small for this packing")
    count = encoding.ciphertexts(n_values, n_nodes, biprime)
    n2 = biprime * biprime
    for u, vec in enumerate(vectors):
        if not isinstance(vec, list | tuple):
            return _mismatch(f"update {u} is not a list of ciphertexts")
        if len(vec) != count:
            return _mismatch(f"update {u} has {len(vec)} ciphertexts, expected {count} for {n_values} values")
        if not all(isinstance(c, int) and not isinstance(c, bool) and 0 < c < n2 for c in vec):
            return _mismatch(f"update {u} holds a value that is not a ciphertext modulo N^2")
    server_masks = _server_masks(pool, server_key, biprime, round_number, first_index, first_index + count)
    plaintexts, bad = unmask(aggregate(vectors, biprime), server_masks, biprime)
    if bad:
        return _mismatch(
            f"{bad} of {count} ciphertexts do not decrypt (wrong key, wrong round, missing or extra node, "
            "or a corrupted ciphertext)"
        )
    e = encoding.slot_bits(n_nodes)
    if not spare_bits_clear(plaintexts, e, slots):
        return _mismatch("a decrypted plaintext has bits beyond its slots (layout or party-count mismatch)")
    slots_all = unpack(plaintexts, e, slots)
    used = encoding.n_slots(n_values)
    if np.any(slots_all[used:]):
        return _mismatch("unused slots are not zero (layout or party-count mismatch)")
    sums = slots_all[:n_values]
    if total_weight is not None:
        bound = (encoding.target_range - 1) * total_weight
        if sums.size and int(sums.max()) > bound:
            return _mismatch("a decrypted sum exceeds what the total weight allows (wrong weights or layout)")
    if encoding.checksum:
        p = checksum_modulus(encoding.value_bits)
        got = int(slots_all[n_values]) % p
        want = int(np.sum(sums % np.uint64(p), dtype=np.uint64)) % p
        if got != want:
            return _mismatch(
                "the checksum slot does not match the decrypted sums (corrupted or inconsistent)"
            )
    return Success(sums)


def weighted_mean(
    sums: UIntArray, total_weight: int, clipping_range: float | None = None, encoding: Encoding = Encoding()
) -> FloatArray:
    """The sample-weighted mean from decrypted sums: reverse-quantize ``sums / total_weight``.

    Not truncated to a level first (6.4.1's researcher truncates): the mean of the nodes' levels
    itself, half a step closer on average. ``lom_reverse_quantize(sums / total_weight)`` is 6.4.1's.

    >>> weighted_mean(np.array([0, 8191 * 5], dtype=np.uint64), 5).tolist()
    [-3.0, 3.0]
    """
    c = float(CLIPPING_RANGE if clipping_range is None else clipping_range)
    return reverse_quantize(sums.astype(np.float64) / float(total_weight), c, encoding.target_range)


@frozen(kw_only=True)
class AggregatedUpdate:
    """The decrypted sample-weighted means of the weights and aux vars of one secure round.

    ``factor`` is the decrypted encryption factor (None when it was not checked); ``stock`` counts
    the updates read from the request's layout (no fedpipe metadata).
    """

    weights: FloatArray = field(eq=False, repr=False)
    aux_vars: Mapping[str, Any] = field(eq=False, repr=False)
    total_weight: int
    factor: float | None
    out_of_range: int
    stock: int = 0


# --- layouts --------------------------------------------------------------------------------------


@frozen(kw_only=True)
class _Layout:
    """What one encrypted update holds and how; updates combine only when their layouts are equal."""

    n_weights: int
    n_values: int
    aux: tuple[LeafSpec, ...]
    factor_index: int | None
    encoding: Encoding | None  # None for LOM: one uint64 per value
    fedpipe: bool = field(eq=False)

    def describe(self, with_factor: bool) -> str:
        what = f"{self.n_values} values"
        if self.n_values != self.n_weights:
            what += f" ({self.n_weights} weights, then aux vars)"
        parts = [what]
        if self.encoding is not None:
            parts.append("a checksum slot" if self.encoding.checksum else "no checksum slot")
            parts.append(f"{self.encoding.mode.value} packing")
        if with_factor:
            parts.append(f"factor at index {self.factor_index}")
        source = "fedpipe metadata" if self.fedpipe else "no fedpipe metadata: the request's layout"
        return f"{', '.join(parts)} ({source})"


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _secagg_meta(result: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = result.get("metadata")
    sec = meta.get("secagg") if isinstance(meta, Mapping) else None
    return sec if isinstance(sec, Mapping) else {}


def _encoding_of(data: Any, default: Encoding) -> Encoding | None:
    """The encoding a fedpipe node recorded (``Encoding.describe``), the default when none, None if malformed."""
    if data is None:
        return default
    if not isinstance(data, Mapping):
        return None
    checksum = data.get("checksum", default.checksum)
    target = data.get("target_range", default.target_range)
    weight = data.get("weight_range", default.weight_range)
    if not isinstance(checksum, bool) or _count(target) is None or _count(weight) is None:
        return None
    try:
        mode = PackingMode(data.get("mode", default.mode.value))
        return Encoding(mode=mode, checksum=checksum, target_range=target, weight_range=weight)
    except (ValueError, TypeError):
        return None


def _short(value: Any) -> str:
    """A value from a node, for a message: its repr, escaped onto one line and cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _scheme_problem(named: Any, scheme: str, u: int) -> str | None:
    if named is None:
        return None
    lom = isinstance(named, str) and named.lower() in _LOM_NAMES
    if scheme == LOM_SCHEME and not lom:
        return f"update {u} was encrypted with {_short(named)}, not LOM"
    if scheme == JL_SCHEME and named != JL_SCHEME:
        return f"update {u} was encrypted with {_short(named)}, not Joye-Libert"
    return None


def _layout_of(
    result: Mapping[str, Any],
    u: int,
    *,
    scheme: str,
    n_params: int | None,
    n_nodes: int,
    encoding: Encoding | None,
) -> Result[_Layout, SecaggMismatch]:
    meta = _secagg_meta(result)
    if not meta:
        if n_params is None:
            return _mismatch(
                f"update {u} does not say how many values it encrypts (no fedpipe metadata) "
                "and the parameter count the request sent was not given"
            )
        return Success(
            _Layout(
                n_weights=n_params,
                n_values=n_params,
                aux=(),
                factor_index=0,
                encoding=None if encoding is None else stock_encoding(encoding),
                fedpipe=False,
            )
        )
    problem = _scheme_problem(meta.get("scheme"), scheme, u)
    if problem is not None:
        return _mismatch(problem)
    n_weights, n_values = _count(meta.get("n_weights")), _count(meta.get("n_values"))
    if n_weights is None or n_values is None:
        return _mismatch(f"update {u} does not say how many values it encrypts")
    if n_params is not None and n_weights != n_params:
        return _mismatch(
            f"update {u} encrypts {n_weights} weights, but the model sent has {n_params} parameters"
        )
    try:
        aux = specs_from_data(meta.get("aux_layout") or [])
    except ValueError:
        return _mismatch(f"update {u} has a malformed aux-var layout")
    if n_weights + sum(s.size for s in aux) != n_values:
        return _mismatch(f"the aux-var layout of update {u} does not add up to its value count")
    packed_for = meta.get("num_nodes")
    if packed_for is not None and packed_for != n_nodes:
        return _mismatch(
            f"update {u} was encrypted for {_short(packed_for)} nodes, the secagg context has {n_nodes}"
        )
    enc = None if encoding is None else _encoding_of(meta.get("encoding"), encoding)
    if encoding is not None and enc is None:
        return _mismatch(f"update {u} has a malformed encoding description")
    return Success(
        _Layout(
            n_weights=n_weights,
            n_values=n_values,
            aux=aux,
            factor_index=_count(meta.get("factor_index")),
            encoding=enc,
            fedpipe=True,
        )
    )


def _common_layout(
    results: Sequence[Mapping[str, Any]],
    *,
    scheme: str,
    n_params: int | None,
    n_nodes: int,
    encoding: Encoding | None,
    with_factor: bool,
) -> Result[tuple[_Layout, int], SecaggMismatch]:
    """The layout every result shares, and how many were read from the request (no fedpipe metadata)."""
    layouts: list[_Layout] = []
    for u, item in enumerate(results):
        r: Any = item  # decoded from the wire: the type is a claim to check
        if not isinstance(r, Mapping):
            return _mismatch(f"update {u} is not a results mapping")
        got = _layout_of(r, u, scheme=scheme, n_params=n_params, n_nodes=n_nodes, encoding=encoding)
        if isinstance(got, Failure):
            return got
        layouts.append(got.unwrap())
    if not layouts:
        return _mismatch("there are no encrypted updates")

    def key(lay: _Layout) -> _Layout:
        # the factor's index matters only when the factors are combined
        return lay if with_factor else evolve(lay, factor_index=None)

    first = layouts[0]
    for u, lay in enumerate(layouts[1:], start=1):
        if key(lay) != key(first):
            return _mismatch(
                "the nodes disagree on the layout of their encrypted updates: "
                f"update 0 has {first.describe(with_factor)}; update {u} has {lay.describe(with_factor)}"
            )
    return Success((first, sum(1 for lay in layouts if not lay.fedpipe)))


def _total_weight(results: Sequence[Mapping[str, Any]]) -> Result[int, SecaggMismatch]:
    sizes = [_count(r.get("sample_size")) for r in results]
    if not all(sizes):
        return _mismatch("every result must carry a positive integer sample_size")
    return Success(sum(s or 0 for s in sizes))


def _vector(result: Mapping[str, Any]) -> Any:
    """The encrypted flat update: ``model_weights`` in a fedpipe results file, ``params`` in a 6.4.1 reply."""
    if result.get("encrypted") is not True:
        return None
    for name in ("model_weights", "params"):
        vec = result.get(name)
        if isinstance(vec, list | tuple | np.ndarray):
            return vec
    return None


def _factors(results: Sequence[Mapping[str, Any]], validating: bool) -> Result[list[Any], SecaggMismatch]:
    if not validating:
        return Success([])
    out = []
    for u, r in enumerate(results):
        f = r.get("encryption_factor")
        if f is None:
            return _mismatch(f"secagg_random was sent but update {u} has no encryption factor")
        if not isinstance(f, list | tuple | np.ndarray) or len(f) != 1:
            return _mismatch(f"the encryption factor of update {u} is not one encrypted value")
        out.append(f)
    return Success(out)


def _finish(
    results: Sequence[Mapping[str, Any]],
    layout: _Layout,
    means: FloatArray,
    *,
    total: int,
    factor: float | None,
    stock: int,
) -> Result[AggregatedUpdate, SecaggMismatch]:
    clear_aux: dict[str, Any] = {}
    for r in results:  # nodes send the same clear (non-numeric) aux parts; the first one is kept
        aux = r.get("optim_aux_var")
        if isinstance(aux, Mapping):
            clear_aux = dict(aux)
            break
    aux_vars = unflatten_aux(means[layout.n_weights :], layout.aux, clear_aux) if layout.aux else clear_aux
    out_of_range = sum(_count(_secagg_meta(r).get("out_of_range")) or 0 for r in results)
    return Success(
        AggregatedUpdate(
            weights=means[: layout.n_weights],
            aux_vars=aux_vars,
            total_weight=total,
            factor=factor,
            out_of_range=out_of_range,
            stock=stock,
        )
    )


def _factor_refused(factor: float, secagg_random: float) -> Failure[SecaggMismatch]:
    return _mismatch(f"the encryption factor decrypts to {factor}, not to secagg_random {secagg_random}")


# --- Joye-Libert ----------------------------------------------------------------------------------


def aggregate_results(
    results: Sequence[Mapping[str, Any]],
    *,
    server_key: int,
    biprime: int,
    round_number: int,
    n_nodes: int,
    secagg_random: float | None,
    clipping_range: float | None = None,
    encoding: Encoding = Encoding(),
    pool: MaskPool | None = None,
    n_params: int | None = None,
    factor_tolerance: float | None = None,
) -> Result[AggregatedUpdate, SecaggMismatch]:
    """Decrypt one Joye-Libert round's results (fedpipe results files or 6.4.1 replies) into weighted means.

    Reads each result's ciphertexts (``model_weights``, or a 6.4.1 reply's ``params``),
    ``sample_size``, ``encryption_factor`` and, from a fedpipe node, ``metadata.secagg``; results
    without it take the request's layout: ``n_params`` weights (the parameter count of the model
    the researcher sent), ``stock_encoding(encoding)``, factor at index 0. ``encoding`` is that of
    fedpipe nodes that do not record theirs. ``n_nodes`` counts the secagg context's node parties,
    ``round_number`` is tau. With ``secagg_random`` set every result must carry its factor, and
    the weighted mean of the factors must come back within ``factor_tolerance`` (default one
    quantization step: both fedpipe's rounding and 6.4.1's truncation stay within it).

    Server masks: ``pool`` when given (``SecureAggregation`` keeps one that starts them early), else
    worker processes on every core when there are enough of them (``PARALLEL_MASKS``).
    """
    if len(results) != n_nodes:
        return _mismatch(f"expected {n_nodes} encrypted updates, got {len(results)}")
    validating = secagg_random is not None
    common = _common_layout(
        results,
        scheme=JL_SCHEME,
        n_params=n_params,
        n_nodes=n_nodes,
        encoding=encoding,
        with_factor=validating,
    )
    if isinstance(common, Failure):
        return common
    layout, stock = common.unwrap()
    enc = layout.encoding or encoding
    total_r = _total_weight(results)
    if isinstance(total_r, Failure):
        return total_r
    total = total_r.unwrap()
    vectors = [_vector(r) for r in results]
    if any(v is None for v in vectors):
        return _mismatch(f"update {vectors.index(None)} is not an encrypted update")
    factors_r = _factors(results, validating)
    if isinstance(factors_r, Failure):
        return factors_r
    if validating and layout.factor_index is None:
        return _mismatch("secagg_random was sent but the results do not say where the factor is")
    if enc.slots(n_nodes, biprime) < 2:
        return _mismatch("the biprime is too small for this packing")
    count = enc.ciphertexts(layout.n_values, n_nodes, biprime)
    # one pool for the weights and the factor: a stock factor reuses the mask of index 0
    owned = None if pool is not None else _all_cores_pool(count + 1, biprime)
    masks_from = pool if pool is not None else owned if owned is not None else MaskPool(workers=0)
    try:

        def decrypt(
            vecs: Sequence[Any], n_values: int, first_index: int
        ) -> Result[UIntArray, SecaggMismatch]:
            return decrypt_sums(
                vecs,
                server_key=server_key,
                biprime=biprime,
                round_number=round_number,
                n_values=n_values,
                n_nodes=n_nodes,
                encoding=enc,
                total_weight=total,
                first_index=first_index,
                pool=masks_from,
            )

        sums = decrypt(vectors, layout.n_values, 0)
        if isinstance(sums, Failure):
            return sums
        factor: float | None = None
        if secagg_random is not None:
            fsums = decrypt(factors_r.unwrap(), 1, layout.factor_index or 0)
            if isinstance(fsums, Failure):
                return fsums
            factor = float(weighted_mean(fsums.unwrap(), total, clipping_range, enc)[0])
            c = float(CLIPPING_RANGE if clipping_range is None else clipping_range)
            tolerance = (
                step_size(c, enc.target_range) * 1.001 if factor_tolerance is None else factor_tolerance
            )
            if not abs(factor - secagg_random) <= tolerance:
                return _factor_refused(factor, secagg_random)
    finally:
        if owned is not None:
            owned.close()
    means = weighted_mean(sums.unwrap(), total, clipping_range, enc)
    return _finish(results, layout, means, total=total, factor=factor, stock=stock)


# --- LOM ------------------------------------------------------------------------------------------


def _uint64_vector(vec: Any) -> UIntArray | None:
    """``vec`` as uint64 words when every item is an integer in [0, 2**64) (no bool, no float), else None."""
    if isinstance(vec, np.ndarray):
        if vec.ndim != 1 or vec.dtype.kind not in "iu" or (vec.size and int(vec.min()) < 0):
            return None
        return vec.astype(np.uint64)
    items = vec
    if not all(type(v) is int for v in vec):  # the fast path: what a decoded reply holds
        if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in vec):
            return None  # bools and floats are not words
        items = [int(v) for v in vec]
    try:
        return np.array(items, dtype=np.uint64)
    except OverflowError:
        return None


def _lom_sums(vectors: Sequence[Any], n_values: int, what: str) -> Result[UIntArray, SecaggMismatch]:
    arrays = []
    for u, vec in enumerate(vectors):
        if len(vec) != n_values:
            return _mismatch(f"{what} {u} has {len(vec)} values, expected {n_values}")
        arr = _uint64_vector(vec)
        if arr is None:
            return _mismatch(f"{what} {u} holds a value that is not an integer in [0, 2**64)")
        arrays.append(arr)
    try:
        return Success(lom_aggregate(arrays))
    except LomInputError as e:
        return _mismatch(str(e))


def _lom_mean(
    sums: UIntArray, total: int, *, clipping_range: float, target_range: int
) -> Result[FloatArray, SecaggMismatch]:
    if sums.size and int(sums.max()) > (target_range - 1) * total:
        return _mismatch(
            "the LOM sums exceed what the total weight allows: the masks did not cancel (missing or extra "
            "node, wrong round, nonce or secrets, or a corrupted update)"
        )
    try:
        return Success(
            lom_decrypt_mean(
                [sums], total_sample_size=total, clipping_range=clipping_range, target_range=target_range
            )
        )
    except LomInputError as e:
        return _mismatch(str(e))


def aggregate_lom_results(
    results: Sequence[Mapping[str, Any]],
    *,
    n_nodes: int,
    secagg_random: float | None,
    n_params: int | None = None,
    clipping_range: float | None = None,
    target_range: int = LOM_TARGET_RANGE,
    factor_tolerance: float = FACTOR_TOLERANCE,
) -> Result[AggregatedUpdate, SecaggMismatch]:
    """Decrypt one LOM round's results (6.4.1 replies or fedpipe results files) into weighted means.

    The sum modulo 2**64 of the nodes' uint64 vectors (``params`` in a 6.4.1 reply, ``model_weights``
    in a fedpipe results file), checked against the total weight, then 6.4.1's mean: the level
    ``sum / total sample size`` truncated, reverse-quantized with ``clipping_range`` (None: 6.4.1's
    default 3). Results without fedpipe metadata hold the ``n_params`` flat weights of the model
    the researcher sent. ``n_nodes`` counts the DH context's node parties: LOM masks cancel only
    when all of them contributed. With ``secagg_random`` set every result must carry its
    ``encryption_factor`` (one masked value), whose mean must be within ``factor_tolerance``
    (6.4.1's 0.03) of it. No key is needed: the researcher holds none in LOM.
    """
    if len(results) != n_nodes:
        return _mismatch(f"expected {n_nodes} encrypted updates, got {len(results)}")
    common = _common_layout(
        results, scheme=LOM_SCHEME, n_params=n_params, n_nodes=n_nodes, encoding=None, with_factor=False
    )
    if isinstance(common, Failure):
        return common
    layout, stock = common.unwrap()
    total_r = _total_weight(results)
    if isinstance(total_r, Failure):
        return total_r
    total = total_r.unwrap()
    vectors = [_vector(r) for r in results]
    if any(v is None for v in vectors):
        return _mismatch(f"update {vectors.index(None)} is not an encrypted update")
    validating = secagg_random is not None
    factors_r = _factors(results, validating)
    if isinstance(factors_r, Failure):
        return factors_r
    c = CLIPPING_RANGE if clipping_range is None else clipping_range
    factor: float | None = None
    if secagg_random is not None:
        fsums = _lom_sums(factors_r.unwrap(), 1, "the encryption factor of update")
        if isinstance(fsums, Failure):
            return fsums
        fmean = _lom_mean(fsums.unwrap(), total, clipping_range=c, target_range=target_range)
        if isinstance(fmean, Failure):
            return fmean
        factor = float(fmean.unwrap()[0])
        if not abs(factor - secagg_random) <= factor_tolerance:
            return _factor_refused(factor, secagg_random)
    sums = _lom_sums(vectors, layout.n_values, "update")
    if isinstance(sums, Failure):
        return sums
    means = _lom_mean(sums.unwrap(), total, clipping_range=c, target_range=target_range)
    if isinstance(means, Failure):
        return means
    return _finish(results, layout, means.unwrap(), total=total, factor=factor, stock=stock)
