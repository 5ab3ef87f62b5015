"""Read-only views of decoded values: they show, equal, hash and encode as what they wrap, copy nothing."""

import operator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpipe import execute_round
from fedpipe.codec import dumps, loads
from fedpipe.request import thaw
from fedpipe.testing import FakeNode, ScriptedPlan
from fedpipe.views import ListView, MapView, TupleView, frozen_view, view_of

json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)
mappings = st.dictionaries(st.text(max_size=4), json_like, max_size=5)


def plain(value: Any) -> Any:
    """What a view shows, rebuilt with the plain types (a list view gives a list, and so on)."""
    if isinstance(value, MapView):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, ListView):
        return [plain(item) for item in value]
    if isinstance(value, TupleView):
        return tuple(plain(item) for item in value)
    assert not isinstance(value, dict | list | tuple), "a container read through a view is a view"
    return value


def same_types(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (a view equals its value, but is not one)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_types(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_types(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(max_examples=100, deadline=None)
@given(mappings)
def test_a_view_shows_its_value_and_equals_it(value: dict[str, Any]) -> None:
    view = frozen_view(value)
    assert same_types(plain(view), value)
    assert view == value and value == view and operator.ne(view, value) is False
    assert frozen_view(view) is view
    assert same_types(thaw(view), value)  # plain dicts, lists and tuples again, all the way down


@settings(max_examples=50, deadline=None)
@given(mappings)
def test_a_view_encodes_as_its_value(value: dict[str, Any]) -> None:
    assert dumps(frozen_view(value)) == dumps(value)


def test_a_view_copies_nothing_and_shows_what_it_wraps() -> None:
    inner: list[Any] = [{"a": 1}]
    value = {"list": inner, "tensor": torch.zeros(3), "array": np.zeros(2)}
    view = frozen_view(value)
    inner.append({"b": 2})  # the view has no copy of its own
    assert view["list"] == [{"a": 1}, {"b": 2}] and len(view["list"]) == 2
    assert view["tensor"] is value["tensor"] and view["array"] is value["array"]  # as they are
    assert view["list"][-1]["b"] == 2 and next(reversed(view["list"])) == {"b": 2}
    assert view["list"][:1] == [{"a": 1}] and isinstance(view["list"][:1], ListView)
    assert {"a": 1} in view["list"] and "list" in view and "other" not in view
    assert view.get("other") is None and dict(view).keys() == value.keys()


def test_a_view_cannot_change_what_it_shows() -> None:
    view: Any = frozen_view({"m": {"k": [1, (2, {"x": 3})]}})
    with pytest.raises(TypeError):
        view["new"] = 1
    with pytest.raises(TypeError):
        view["m"]["k"][0] = 5
    with pytest.raises(TypeError):
        view["m"]["k"][1][1]["x"] = 4
    for container, method in ((view, "update"), (view["m"]["k"], "append"), (view["m"]["k"], "sort")):
        assert not hasattr(container, method)
    assert view == {"m": {"k": [1, (2, {"x": 3})]}}


def test_views_hash_as_the_plain_types() -> None:
    assert hash(view_of((1, "a"))) == hash((1, "a"))
    assert view_of((1, "a")) == (1, "a") and view_of([1, "a"]) != (1, "a")
    for unhashable in (view_of({}), view_of([1]), view_of((1, [2]))):
        with pytest.raises(TypeError):
            hash(unhashable)


def test_a_round_hands_the_plan_views_of_the_decoded_arguments(node: FakeNode) -> None:
    url = node.exchange.publish_object("arg", {"layers": [{"n": 8}], "pair": (1, 2), "w": torch.ones(2)})
    aux = node.exchange.publish_object("aux", {"scaffold": {"global_state": {"w": torch.ones(3)}}})
    request = node.request(aggregator_args={"arg": {"url": url}, "name": "fedavg"}, aux_var_urls=[aux])
    assert execute_round(request, node.ports, node.settings).reply.success
    plan = node.plans.instances[-1]
    assert isinstance(plan, ScriptedPlan)
    args, aux_in = plan.aggregator_args, plan.aux_in
    assert isinstance(args, MapView) and isinstance(aux_in, MapView)
    assert isinstance(args["arg"]["layers"], ListView) and isinstance(args["arg"]["pair"], TupleView)
    assert args["name"] == "fedavg" and args["arg"]["layers"][0]["n"] == 8
    assert torch.equal(args["arg"]["w"], torch.ones(2))
    assert torch.equal(aux_in["scaffold"]["global_state"]["w"], torch.ones(3))
    assert loads(dumps(args["arg"])).unwrap()["pair"] == (1, 2)
