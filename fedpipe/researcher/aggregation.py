"""Researcher-side aggregation: sample-weighted FedAvg and the SCAFFOLD server update, over name -> tensor maps."""

from collections.abc import Mapping, Sequence

import torch

__all__ = ["fedavg", "scaffold_update", "unflatten"]

Params = Mapping[str, torch.Tensor]


def fedavg(updates: Sequence[tuple[Params, int]]) -> dict[str, torch.Tensor]:
    """The sample-weighted mean of the nodes' parameters: ``sum(n_i * w_i) / sum(n_i)``.

    Every update must have the same names and shapes; integer tensors (e.g. BatchNorm's
    ``num_batches_tracked``) are averaged in float and rounded back.

    >>> avg = fedavg([({"w": torch.tensor([0.0, 2.0])}, 1), ({"w": torch.tensor([3.0, 5.0])}, 2)])
    >>> avg["w"].tolist()
    [2.0, 4.0]
    """
    if not updates:
        raise ValueError("fedavg needs at least one update")
    total = sum(n for _, n in updates)
    if total <= 0 or any(n < 0 for _, n in updates):
        raise ValueError("sample sizes must be non-negative with a positive total")
    names = list(updates[0][0])
    for params, _ in updates:
        if list(params) != names:
            raise ValueError("updates name different parameters")
    result: dict[str, torch.Tensor] = {}
    for name in names:
        acc = sum((params[name].double() * (n / total) for params, n in updates), torch.zeros(()))
        reference = updates[0][0][name]
        result[name] = (
            acc.round().to(reference.dtype) if not reference.is_floating_point() else acc.to(reference.dtype)
        )
    return result


def scaffold_update(
    global_params: Params,
    updates: Sequence[tuple[Params, int]],
    global_control: Params,
    control_deltas: Sequence[Params],
    *,
    n_nodes: int,
    server_lr: float = 1.0,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One SCAFFOLD server step: new global parameters and new server control variate ``c``.

    ``x <- x + server_lr * (fedavg(updates) - x)`` and ``c <- c + sum(delta_i) / n_nodes`` where
    ``delta_i`` is the ``"delta"`` of node i's ``scaffold`` aux vars and ``n_nodes`` counts every
    node of the federation (sampled this round or not). Parameters absent from ``global_control``
    (buffers) are simply averaged.

    >>> x, c = {"w": torch.tensor([0.0])}, {"w": torch.tensor([0.0])}
    >>> new_x, new_c = scaffold_update(x, [({"w": torch.tensor([1.0])}, 1), ({"w": torch.tensor([3.0])}, 1)],
    ...                                c, [{"w": torch.tensor([2.0])}, {"w": torch.tensor([4.0])}], n_nodes=3)
    >>> new_x["w"].tolist(), new_c["w"].tolist()
    ([2.0], [2.0])
    """
    if n_nodes < len(control_deltas) or n_nodes < 1:
        raise ValueError("n_nodes must count every node, at least those that sent a delta")
    averaged = fedavg(updates)
    new_params: dict[str, torch.Tensor] = {}
    for name, value in averaged.items():
        if name in global_params and value.is_floating_point():
            base = global_params[name].to(value.dtype)
            new_params[name] = base + server_lr * (value - base)
        else:
            new_params[name] = value
    new_control = {
        name: c + sum((d[name].to(c.dtype) for d in control_deltas), torch.zeros_like(c)) / n_nodes
        for name, c in global_control.items()
    }
    return new_params, new_control


def unflatten(flat: Sequence[float], template: Params) -> dict[str, torch.Tensor]:
    """Cut a flat update (``after_training_params(flatten=True)``) back into tensors shaped like ``template``.

    >>> unflatten([1.0, 2.0, 3.0], {"w": torch.zeros(1, 2), "b": torch.zeros(1)})["w"].tolist()
    [[1.0, 2.0]]
    """
    expected = sum(t.numel() for t in template.values())
    if len(flat) != expected:
        raise ValueError(f"flat update has {len(flat)} values, the template {expected}")
    values = torch.as_tensor(list(flat), dtype=torch.float64)
    out: dict[str, torch.Tensor] = {}
    start = 0
    for name, tensor in template.items():
        n = tensor.numel()
        out[name] = values[start : start + n].reshape(tensor.shape).to(tensor.dtype)
        start += n
    return out
