"""Quantization of floats to integers in [0, T - 1] and back (vectorized with numpy)."""

import numpy as np
import numpy.typing as npt

__all__ = ["out_of_range", "quantize", "reverse_quantize", "step_size"]

FloatArray = npt.NDArray[np.float64]
UIntArray = npt.NDArray[np.uint64]


def step_size(clipping_range: float, target_range: int) -> float:
    """The distance between two quantization levels: ``2c / (T - 1)``.

    >>> step_size(3, 7)
    1.0
    """
    return 2.0 * clipping_range / (target_range - 1)


def out_of_range(values: FloatArray, clipping_range: float) -> int:
    """How many values lie outside ``[-c, c]`` (they are clipped, and the count is reported).

    >>> out_of_range(np.array([-4.0, 0.0, 3.0, 3.5]), 3.0)
    2
    """
    return int(np.count_nonzero(np.abs(values) > clipping_range))


def quantize(values: FloatArray, clipping_range: float, target_range: int) -> UIntArray:
    """Clip to ``[-c, c]`` and round to the nearest of the T levels ``-c + k * 2c / (T - 1)``.

    The levels are exactly those that the decoding (Fed-BioMed's reverse quantization too) maps
    back to, so rounding makes the error at most half a step and unbiased (Fed-BioMed truncates).

    >>> quantize(np.array([-3.0, -0.5, 0.0, 0.4, 3.0, 9.0]), 3.0, 7).tolist()
    [0, 2, 3, 3, 6, 6]
    """
    c = float(clipping_range)
    scaled = (np.clip(values, -c, c) + c) * ((target_range - 1) / (2.0 * c))
    return np.clip(np.rint(scaled), 0, target_range - 1).astype(np.uint64)


def reverse_quantize(levels: FloatArray, clipping_range: float, target_range: int) -> FloatArray:
    """Map (possibly fractional, e.g. averaged) levels back to values: ``-c + level * 2c / (T - 1)``.

    >>> reverse_quantize(np.array([0.0, 3.0, 6.0]), 3.0, 7).tolist()
    [-3.0, 0.0, 3.0]
    """
    c = float(clipping_range)
    return np.asarray(-c + levels * step_size(c, target_range), dtype=np.float64)
