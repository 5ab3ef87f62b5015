"""Read-only views of decoded values: made in O(1), never copying; nested containers are wrapped as read.

A decoded payload can be large (a state dict, or ten million small values within the codec's
memory bound), so freezing it by deep copy would multiply its memory. ``frozen_view`` instead
wraps the decoded mapping as it is: reading an entry gives a scalar, an array or a tensor as it
is, and a map, list or tuple as another view of it, made then and not kept (each read makes a new
one, of constant size). Nothing is copied, so the views show whatever the wrapped containers hold;
the node keeps no other reference to them, which makes them read-only for whoever holds the view.

- ``MapView`` is a ``Mapping``; ``ListView`` and ``TupleView`` are each a ``Sequence`` over the
  items of a list or a tuple, not a ``list`` or ``tuple`` instance (one would have to copy them).
  Slicing one gives a view of a shallow copy of the slice.
- Equality is that of the values shown: a view equals the plain value it wraps and any value
  equal to that (``MapView({"a": [1]}) == {"a": [1]}``, ``ListView([1]) != (1,)``, as ``[1] != (1,)``).
- Hashing follows the plain types: map and list views are unhashable, a tuple view hashes as its
  tuple (and fails as it does when the tuple holds a map or a list).
- ``dict(view)`` is a shallow, mutable copy (its values views); ``fedpipe.request.thaw`` is a
  deep one, into plain dicts, lists and tuples.
- Arrays and tensors are returned as they are: they are the values' memory, and the plan that
  reads them may use it in place (it is fresh memory of the decode).
"""

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = ["ListView", "MapView", "TupleView", "frozen_view", "view_of"]


def frozen_view(value: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only view of the mapping ``value``, made in O(1) without copying anything.

    >>> args = frozen_view({"lr": 0.1, "layers": [{"n": 8}], "pair": (1, 2)})
    >>> args["layers"][0]["n"], args["pair"], args == {"lr": 0.1, "layers": [{"n": 8}], "pair": (1, 2)}
    (8, TupleView((1, 2)), True)
    >>> args["layers"].append({})
    Traceback (most recent call last):
    AttributeError: 'ListView' object has no attribute 'append'
    """
    return value if isinstance(value, MapView) else MapView(value)


def view_of(value: Any) -> Any:
    """``value`` itself when it is not a container, else a read-only view of it (a view stays one).

    >>> view_of(3), view_of("s"), type(view_of({})).__name__, type(view_of([])).__name__
    (3, 's', 'MapView', 'ListView')
    """
    kind = type(value)
    if kind is dict:  # the exact types first: the abstract-class checks below are slower
        return MapView(value)
    if kind is list:
        return ListView(value)
    if kind is tuple:
        return TupleView(value)
    if kind in _LEAVES or isinstance(value, _View):
        return value
    if isinstance(value, Mapping):
        return MapView(value)
    if isinstance(value, list):
        return ListView(value)
    if isinstance(value, tuple):
        return TupleView(value)
    return value


_LEAVES = frozenset({str, int, float, bool, bytes, type(None)})


class _View:
    __slots__ = ("_target",)

    def __init__(self, target: Any) -> None:
        self._target = target

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._target!r})"

    def __eq__(self, other: object) -> Any:
        # the wrapped value decides, as it would against ``other`` (views on the other side are
        # unwrapped; the views nested in either side compare through this same method)
        if isinstance(other, _View):
            other = other._target
        return self._target == other


class MapView(_View, Mapping[Any, Any]):
    """A read-only view of a mapping; its values are read through ``view_of``."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]  # unhashable, like the dict it shows

    def __getitem__(self, key: Any) -> Any:
        return view_of(self._target[key])

    def __iter__(self) -> Iterator[Any]:
        return iter(self._target)

    def __len__(self) -> int:
        return len(self._target)

    def __contains__(self, key: object) -> bool:
        return key in self._target


class _SequenceView(_View, Sequence[Any]):
    __slots__ = ()

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return type(self)(self._target[index])
        return view_of(self._target[index])

    def __iter__(self) -> Iterator[Any]:
        return map(view_of, self._target)

    def __reversed__(self) -> Iterator[Any]:
        return map(view_of, reversed(self._target))

    def __len__(self) -> int:
        return len(self._target)

    def __contains__(self, item: object) -> bool:
        return item in self._target


class ListView(_SequenceView):
    """A read-only view of a list; its items are read through ``view_of``."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]  # unhashable, like the list it shows


class TupleView(_SequenceView):
    """A read-only view of a tuple; its items are read through ``view_of``. Hashes as the tuple."""

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(self._target)
