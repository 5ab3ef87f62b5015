"""SCAFFOLD in pure torch: SGD corrected by control variates that travel as auxiliary variables.

Notation of Karimireddy et al. (2020): the node keeps its control variate ``c_i`` across rounds
(in the node state), receives the server's ``c`` as an aux var, and steps with ``g - c_i + c``.
After a round ``c_i`` becomes the mean raw gradient of the round (the paper's option II for plain
SGD) and the node sends ``c_i`` and ``delta = c_i(new) - c_i(old)``; the server adds
``sum(delta) / n_nodes`` to ``c`` (``fedpipe.researcher.aggregation.scaffold_update``).
"""

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["Scaffold"]


class Scaffold(Optimizer):
    """SGD (with optional momentum and weight decay) plus the SCAFFOLD correction ``c - c_i``.

    Per-parameter state: ``c_local`` (``c_i``, kept between rounds), ``correction`` (``c - c_i``,
    refreshed when the server's ``c`` arrives) and ``grad_sum`` (this round's raw gradients).
    All of it is in ``state_dict()``, so it is saved and restored with the node state.

    >>> p = torch.nn.Parameter(torch.zeros(2))
    >>> opt = Scaffold([p], lr=0.5)
    >>> opt.set_server_control({p: torch.tensor([1.0, 0.0])})
    >>> p.grad = torch.tensor([1.0, 1.0]); opt.step(); p.tolist()
    [-1.0, -0.5]
    >>> deltas = opt.finish_round(); opt.state[p]["c_local"].tolist()
    [1.0, 1.0]
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
        lr: float = 0.01,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("Scaffold needs lr > 0, momentum >= 0 and weight_decay >= 0")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.steps_this_round = 0
        for p in self.parameters():
            self.state[p].update(
                c_local=torch.zeros_like(p, memory_format=torch.preserve_format).detach(),
                correction=torch.zeros_like(p).detach(),
                grad_sum=torch.zeros_like(p).detach(),
            )

    def parameters(self) -> list[torch.Tensor]:
        """Every parameter the optimizer updates, in group order."""
        return [p for group in self.param_groups for p in group["params"]]

    def start_round(self) -> None:
        """Forget the previous round's gradient sum (called before local training)."""
        self.steps_this_round = 0
        for p in self.parameters():
            self.state[p]["grad_sum"].zero_()

    def set_server_control(self, control: Mapping[torch.Tensor, torch.Tensor]) -> None:
        """Take the server's control variate ``c`` (one tensor per parameter, same shapes)."""
        for p in self.parameters():
            state = self.state[p]
            c = control[p].to(device=p.device, dtype=p.dtype)
            state["correction"] = (c - state["c_local"]).detach()
            state["c_server"] = c.detach().clone()

    def finish_round(self) -> dict[torch.Tensor, torch.Tensor]:
        """Set ``c_i`` to this round's mean gradient; return ``delta = c_i(new) - c_i(old)`` per parameter.

        Without any step the control variate is kept and every delta is zero.
        """
        deltas: dict[torch.Tensor, torch.Tensor] = {}
        for p in self.parameters():
            state = self.state[p]
            if self.steps_this_round == 0:
                deltas[p] = torch.zeros_like(p).detach()
                continue
            new = state["grad_sum"] / self.steps_this_round
            deltas[p] = (new - state["c_local"]).detach()
            state["c_local"] = new.detach()
            server = state.get("c_server")
            state["correction"] = (
                (server - new).detach() if server is not None else torch.zeros_like(p).detach()
            )
        return deltas

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One corrected SGD step: ``p -= lr * (g + c - c_i + weight_decay * p)`` (through momentum)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.steps_this_round += 1
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                state = self.state[p]
                state["grad_sum"].add_(grad)
                direction = grad + state["correction"]
                if decay:
                    direction.add_(p, alpha=decay)
                if momentum:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = direction.clone()
                    else:
                        buf.mul_(momentum).add_(direction)
                    direction = buf
                p.add_(direction, alpha=-lr)
        return loss
