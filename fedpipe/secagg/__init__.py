"""Joye-Libert secure aggregation: pure math (quantize, pack, hash, protect, decrypt) and its adapters.

Wire compatibility with Fed-BioMed 6.x (checked against fedbiomed 6.4.1: ``common/constants.py``
``SAParameters``, ``common/secagg/_jls.py``, ``common/secagg/_secagg_crypter.py``,
``common/utils/_secagg_utils.py``):

| item                  | value                                                                    | where            |
|-----------------------|--------------------------------------------------------------------------|------------------|
| clipping range c      | 3 by default (request ``secagg_clipping_range``)                         | params           |
| target range T        | 2**13 levels: a value becomes an integer in [0, T - 1]                   | params, quantize |
| weight range W        | 2**17: weight = sample size, 1 <= weight < W                             | params, crypter  |
| KEY_SIZE              | 2048 (the bit size of N^2 for Fed-BioMed's shipped 1024-bit N)           | params           |
| value bits            | ceil(log2(T) + log2(W)) = 30                                             | params           |
| slot bits e           | value bits + ceil(log2(n_nodes + 1)) (32 for 2 or 3 nodes)               | params           |
| plaintext             | floor(1024 / e) slots, value i at bits [i e, (i + 1) e), little end first | params, pack     |
| tau_j                 | (j << 512) | round, j = ciphertext index from 0                          | jl               |
| hash H                | SHA-256(tau as 1024 big-endian bytes || counter byte from 1); 256 bits,   | jl               |
|                       | more digests appended while not coprime with N                           |                  |
| encryption            | y = (1 + x N) * H(tau)^sk mod N^2                                        | jl               |
| aggregation           | product of the nodes' y per index, times H(tau)^sk0, x = (v - 1) / N     | jl, researcher   |
| weighting             | node multiplies levels by its sample size; mean = sum / total sample size | crypter          |
| decoding              | the expected number of values (trailing zeros kept)                      | pack, researcher |
| reverse quantization  | -c + level * 2c / (T - 1)                                                | quantize         |
| encryption factor     | ``secagg_random`` encrypted like a one-value update                      | steps.encrypt    |

fedpipe differences, all invisible to a Fed-BioMed researcher decrypting ``model_weights``:

- quantization rounds to the nearest decoding level (Fed-BioMed truncates onto a slightly different
  grid): half the error, no bias; the integers have the same range and meaning;
- a checksum slot follows the values (``Encoding.checksum``), and numeric aux vars follow the
  weights in the same vector (D2); Fed-BioMed decodes the number of values it expects and ignores them;
- the factor is encrypted at the index after the update (Fed-BioMed reuses index 0, which it calls
  insecure validation); ``encrypt_update(..., fedbiomed_factor=True)`` restores that for a Fed-BioMed
  researcher that checks the factor;
- ``PackingMode.DENSE`` (fedpipe only) fills plaintexts up to the size of N: half the ciphertexts
  with a 2048-bit N.
"""

from fedpipe.secagg.crypter import JoyeLibertCrypter, encode
from fedpipe.secagg.keys import KeyMaterial, make_biprime, make_key_material
from fedpipe.secagg.masks import MaskPool, MaskStats
from fedpipe.secagg.params import CLIPPING_RANGE, KEY_SIZE, TARGET_RANGE, WEIGHT_RANGE, Encoding, PackingMode
from fedpipe.secagg.researcher import (
    AggregatedUpdate,
    SecaggMismatch,
    aggregate_results,
    decrypt_sums,
    weighted_mean,
)

__all__ = [
    "CLIPPING_RANGE",
    "KEY_SIZE",
    "TARGET_RANGE",
    "WEIGHT_RANGE",
    "AggregatedUpdate",
    "Encoding",
    "JoyeLibertCrypter",
    "KeyMaterial",
    "MaskPool",
    "MaskStats",
    "PackingMode",
    "SecaggMismatch",
    "aggregate_results",
    "decrypt_sums",
    "encode",
    "make_biprime",
    "make_key_material",
    "weighted_mean",
]
