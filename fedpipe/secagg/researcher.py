"""Researcher side: multiply the nodes' ciphertexts, decrypt with the server key, check, average.

Every check that can fail returns a ``SecaggMismatch`` instead of a number, so that a wrong key, a
wrong round, a missing or extra node, a layout disagreement or a corrupted ciphertext never yields
a silently wrong mean:

1. the number of vectors is the number of nodes expected, all of the expected length, each
   ciphertext in ``(0, N^2)``;
2. after unmasking, every ``v`` must be ``1 mod N`` (keys summing to zero, same round, same tau
   indices); otherwise ``v`` is a random unit;
3. no bit may be set above the last slot of a plaintext, nor in the unused slots of the last one;
4. every value slot is at most ``(T - 1) * total weight``;
5. with the checksum slot, the decrypted sums satisfy the node's congruence modulo P.

Joye-Libert is malleable: a tamperer who knows this layout can shift a value and its checksum
together. The checks catch corruption and inconsistency, not a deliberate forgery; authenticity of
the uploads is the transport's job.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from attrs import field, frozen
from returns.result import Failure, Result, Success

from fedpipe.secagg.jl import aggregate, unmask
from fedpipe.secagg.layout import specs_from_data, unflatten_aux
from fedpipe.secagg.masks import MaskPool
from fedpipe.secagg.pack import spare_bits_clear, unpack
from fedpipe.secagg.params import CLIPPING_RANGE, Encoding, checksum_modulus
from fedpipe.secagg.quantize import reverse_quantize, step_size

__all__ = [
    "AggregatedUpdate",
    "SecaggMismatch",
    "aggregate_results",
    "decrypt_sums",
    "weighted_mean",
]

UIntArray = npt.NDArray[np.uint64]
FloatArray = npt.NDArray[np.float64]


@frozen(kw_only=True)
class SecaggMismatch:
    """Why encrypted updates could not be turned into a trustworthy sum."""

    reason: str


def _mismatch(reason: str) -> Failure[SecaggMismatch]:
    return Failure(SecaggMismatch(reason=reason))


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
    """The per-value sums of the nodes' weighted quantized values (the checks above, in order).

    ``n_nodes`` is the number of nodes the key material was made for; it also fixes the slot width.
    The server key's masks come from ``pool`` (all cores; a fresh inline computation without one);
    ``pool.start(server_key, biprime, round_number, count)`` when the train requests go out computes
    them while the nodes train, leaving only the products and the checks for the decryption.
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
        if len(vec) != count:
            return _mismatch(f"update {u} has {len(vec)} ciphertexts, expected {count} for {n_values} values")
        if not all(isinstance(c, int) and not isinstance(c, bool) and 0 < c < n2 for c in vec):
            return _mismatch(f"update {u} holds a value that is not a ciphertext modulo N^2")
    masks = (pool or MaskPool(workers=0)).get(
        server_key, biprime, round_number, first_index, first_index + count
    )
    plaintexts, bad = unmask(aggregate(vectors, biprime), masks, biprime)
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

    >>> weighted_mean(np.array([0, 8191 * 5], dtype=np.uint64), 5).tolist()
    [-3.0, 3.0]
    """
    c = float(CLIPPING_RANGE if clipping_range is None else clipping_range)
    return reverse_quantize(sums.astype(np.float64) / float(total_weight), c, encoding.target_range)


@frozen(kw_only=True)
class AggregatedUpdate:
    """The decrypted sample-weighted means of the weights and aux vars of one secure round."""

    weights: FloatArray = field(eq=False, repr=False)
    aux_vars: Mapping[str, Any] = field(eq=False, repr=False)
    total_weight: int
    factor: float | None
    out_of_range: int


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _secagg_meta(result: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = result.get("metadata")
    sec = meta.get("secagg") if isinstance(meta, Mapping) else None
    return sec if isinstance(sec, Mapping) else {}


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
) -> Result[AggregatedUpdate, SecaggMismatch]:
    """Decrypt the uploaded results files of one secure round into weighted means of weights and aux vars.

    Reads each node's ``model_weights`` (ciphertexts), ``sample_size``, ``encryption_factor`` and
    ``metadata.secagg`` (value counts, aux layout, factor index), checks that the nodes agree, decrypts,
    and checks the factor: the weighted mean of ``secagg_random`` must come back within one step.
    """
    if len(results) != n_nodes:
        return _mismatch(f"expected {n_nodes} encrypted updates, got {len(results)}")
    metas = [_secagg_meta(r) for r in results]
    keys = ("n_weights", "n_values", "factor_index", "aux_layout")
    first = {k: metas[0].get(k) for k in keys}
    if any({k: m.get(k) for k in keys} != first for m in metas[1:]):
        return _mismatch("the nodes disagree on the layout of their encrypted updates")
    n_weights, n_values, factor_index = (
        _count(first["n_weights"]),
        _count(first["n_values"]),
        first["factor_index"],
    )
    if n_weights is None or n_values is None:
        return _mismatch("the results do not say how many values they encrypt")
    try:
        specs = specs_from_data(first["aux_layout"] or [])
    except ValueError as err:
        return _mismatch(f"bad aux-var layout: {err}")
    if n_weights + sum(s.size for s in specs) != n_values:
        return _mismatch("the aux-var layout does not add up to the encrypted value count")
    sizes = [_count(r.get("sample_size")) for r in results]
    if not all(w for w in sizes):
        return _mismatch("every result must carry a positive integer sample_size")
    total = sum(w or 0 for w in sizes)
    if not all(r.get("encrypted") is True and isinstance(r.get("model_weights"), list) for r in results):
        return _mismatch("a result is not an encrypted update")

    def decrypt(
        vectors: Sequence[Sequence[int]], count: int, first_index: int
    ) -> Result[UIntArray, SecaggMismatch]:
        return decrypt_sums(
            vectors,
            server_key=server_key,
            biprime=biprime,
            round_number=round_number,
            n_values=count,
            n_nodes=n_nodes,
            encoding=encoding,
            total_weight=total,
            first_index=first_index,
            pool=pool,
        )

    sums = decrypt([r["model_weights"] for r in results], n_values, 0)
    if isinstance(sums, Failure):
        return sums
    factor: float | None = None
    if secagg_random is not None:
        factors = [r.get("encryption_factor") for r in results]
        index = _count(factor_index)
        if index is None or not all(isinstance(f, list) for f in factors):
            return _mismatch("secagg_random was sent but a result has no encryption factor")
        fsums = decrypt([f for f in factors if isinstance(f, list)], 1, index)
        if isinstance(fsums, Failure):
            return fsums
        factor = float(weighted_mean(fsums.unwrap(), total, clipping_range, encoding)[0])
        c = float(CLIPPING_RANGE if clipping_range is None else clipping_range)
        if abs(factor - secagg_random) > step_size(c, encoding.target_range) * 1.001:
            return _mismatch(
                f"the encryption factor decrypts to {factor}, not to secagg_random {secagg_random}"
            )
    means = weighted_mean(sums.unwrap(), total, clipping_range, encoding)
    clear_aux = {}
    for r in results:  # nodes send the same clear (non-numeric) aux parts; the first one is kept
        aux = r.get("optim_aux_var")
        if isinstance(aux, Mapping):
            clear_aux = dict(aux)
            break
    aux_vars = unflatten_aux(means[n_weights:], specs, clear_aux) if specs else clear_aux
    out_of_range = sum(int(m.get("out_of_range", 0) or 0) for m in metas)
    return Success(
        AggregatedUpdate(
            weights=means[:n_weights],
            aux_vars=aux_vars,
            total_weight=total,
            factor=factor,
            out_of_range=out_of_range,
        )
    )
