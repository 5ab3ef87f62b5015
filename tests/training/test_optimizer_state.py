"""The optimizer state's re-cast around training: done when needed, skipped when the state is in place."""

import torch

from fedpipe.training.plan import _positional, _state_in_place, _sync_optimizer_state


def _stepped(lr: float = 0.1) -> torch.optim.Adam:
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    return optimizer


def test_a_state_in_place_is_left_as_it_is() -> None:
    optimizer = _stepped()
    groups = optimizer.param_groups
    exp_avg = next(iter(optimizer.state.values()))["exp_avg"]
    assert _state_in_place(optimizer)
    _sync_optimizer_state(optimizer)
    assert optimizer.param_groups is groups
    assert next(iter(optimizer.state.values()))["exp_avg"] is exp_avg


def test_a_state_of_another_dtype_is_cast_to_its_parameters() -> None:
    optimizer = _stepped()
    for state in optimizer.state.values():
        state["exp_avg"] = state["exp_avg"].double()
    assert not _state_in_place(optimizer)
    _sync_optimizer_state(optimizer)
    assert all(s["exp_avg"].dtype == torch.float32 for s in optimizer.state.values())
    assert _state_in_place(optimizer)


def test_an_unknown_state_value_is_re_cast_to_be_safe() -> None:
    optimizer = _stepped()
    next(iter(optimizer.state.values()))["history"] = [torch.zeros(1, dtype=torch.float64)]
    assert not _state_in_place(optimizer)


def test_hook_arity_is_counted_per_function_bound_or_not() -> None:
    class Plan:
        def one(self, arg: object) -> None: ...

        def none(self) -> None: ...

    plan = Plan()
    # the cache holds the function's own count: bound and unbound views stay apart
    assert (_positional(plan.one), _positional(Plan.one), _positional(plan.one)) == (1, 2, 1)
    assert (_positional(plan.none), _positional(Plan.none)) == (0, 1)
    assert _positional(print) == 0  # not weakly referenceable: counted, not cached
