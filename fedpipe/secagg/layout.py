"""Flattening of optimizer auxiliary variables for encryption, and their rebuilding after decryption.

Numeric leaves (floats, ints, arrays, tensors, lists of numbers) of the nested aux-var mapping are
flattened in a stable order and encrypted together with the model weights; each leaf's path, shape
and container kind is recorded so that the researcher rebuilds the same structure from the
decrypted weighted means. Other leaves (strings, flags, None) stay in clear.
"""

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from attrs import frozen

__all__ = ["LeafSpec", "flatten_aux", "specs_from_data", "specs_to_data", "unflatten_aux"]

FloatArray = npt.NDArray[np.float64]


@frozen(kw_only=True)
class LeafSpec:
    """Where a numeric leaf lives in the aux-var mapping, its shape and what it was (to rebuild it)."""

    path: tuple[str, ...]
    shape: tuple[int, ...]
    kind: str  # "scalar", "list" or "array" (numpy arrays and tensors come back as numpy arrays)

    @property
    def size(self) -> int:
        """Number of values the leaf contributes."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


def _numeric(leaf: Any) -> tuple[str, FloatArray] | None:
    if isinstance(leaf, bool | np.bool_):
        return None
    if isinstance(leaf, numbers.Real):
        return "scalar", np.asarray([float(leaf)], dtype=np.float64)
    kind = "list" if isinstance(leaf, list | tuple) else "array"
    obj = leaf
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # a tensor, duck-typed: secagg does not import torch
        obj = obj.detach().cpu()
    if kind == "array" and not hasattr(obj, "__array__"):
        return None
    try:
        arr = np.asarray(obj)
    except (TypeError, ValueError):
        return None
    if arr.dtype.kind not in "iuf" or arr.dtype == np.bool_:
        return None
    return kind, arr.astype(np.float64)


def flatten_aux(aux: Mapping[str, Any]) -> tuple[FloatArray, tuple[LeafSpec, ...], dict[str, Any]]:
    """The numeric leaves of ``aux`` as one flat vector, their specs, and the remaining clear part.

    >>> values, specs, clear = flatten_aux({"scaffold": {"delta": np.ones((2, 2)), "name": "x", "n": 3}})
    >>> values.tolist(), [s.path for s in specs], clear
    ([1.0, 1.0, 1.0, 1.0, 3.0], [('scaffold', 'delta'), ('scaffold', 'n')], {'scaffold': {'name': 'x'}})
    """
    parts: list[FloatArray] = []
    specs: list[LeafSpec] = []

    def walk(node: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
        clear: dict[str, Any] = {}
        for k, v in node.items():
            if isinstance(v, Mapping) and all(isinstance(kk, str) for kk in v):
                clear[k] = walk(v, (*path, k))
                continue
            found = _numeric(v) if isinstance(k, str) else None
            if found is None:
                clear[k] = v
                continue
            kind, arr = found
            specs.append(
                LeafSpec(
                    path=(*path, k),
                    shape=tuple(int(d) for d in arr.shape) if kind != "scalar" else (),
                    kind=kind,
                )
            )
            parts.append(arr.reshape(-1))
        return clear

    clear = walk(aux, ())
    values = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)
    return values, tuple(specs), clear


def unflatten_aux(values: FloatArray, specs: Sequence[LeafSpec], clear: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild the aux-var mapping from the flat ``values`` (same order as ``flatten_aux``) and ``clear``.

    >>> v, s, c = flatten_aux({"m": {"a": [1.0, 2.0], "b": 4, "t": "keep"}})
    >>> unflatten_aux(v * 2, s, c)
    {'m': {'t': 'keep', 'a': [2.0, 4.0], 'b': 8.0}}
    """
    expected = sum(s.size for s in specs)
    if len(values) != expected:
        raise ValueError(f"{len(values)} values for aux-var leaves of {expected} values")

    def copy(node: Mapping[str, Any]) -> dict[str, Any]:
        return {k: copy(v) if isinstance(v, Mapping) else v for k, v in node.items()}

    out = copy(clear)
    at = 0
    for spec in specs:
        chunk = np.asarray(values[at : at + spec.size], dtype=np.float64)
        at += spec.size
        leaf: Any
        if spec.kind == "scalar":
            leaf = float(chunk[0])
        elif spec.kind == "list":
            leaf = chunk.reshape(spec.shape).tolist()
        else:
            leaf = chunk.reshape(spec.shape)
        target = out
        for key in spec.path[:-1]:
            target = target.setdefault(key, {})
        target[spec.path[-1]] = leaf
    return out


def specs_to_data(specs: Sequence[LeafSpec]) -> list[dict[str, Any]]:
    """Specs as plain data for the reply metadata.

    >>> specs_to_data([LeafSpec(path=("m", "a"), shape=(2,), kind="list")])
    [{'path': ['m', 'a'], 'shape': [2], 'kind': 'list'}]
    """
    return [{"path": list(s.path), "shape": list(s.shape), "kind": s.kind} for s in specs]


def specs_from_data(data: Any) -> tuple[LeafSpec, ...]:
    """Parse specs written by ``specs_to_data`` (ValueError on anything else).

    >>> specs_from_data([{"path": ["m", "a"], "shape": [2], "kind": "list"}])[0].size
    2
    """
    if not isinstance(data, list | tuple):
        raise ValueError("aux-var layout must be a list")
    out: list[LeafSpec] = []
    for item in data:
        if not isinstance(item, Mapping):
            raise ValueError("aux-var layout entries must be maps")
        path, shape, kind = item.get("path"), item.get("shape"), item.get("kind")
        if (
            not isinstance(path, list | tuple)
            or not path
            or not all(isinstance(p, str) for p in path)
            or not isinstance(shape, list | tuple)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or kind not in ("scalar", "list", "array")
        ):
            raise ValueError(f"bad aux-var layout entry: {item!r}")
        out.append(LeafSpec(path=tuple(path), shape=tuple(shape), kind=str(kind)))
    return tuple(out)
