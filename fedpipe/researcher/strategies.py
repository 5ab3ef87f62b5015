"""Aggregation strategies of the minimal researcher: FedAvg, SCAFFOLD, and their secure variant."""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from attrs import define, field

from fedpipe.researcher.aggregation import fedavg, scaffold_update
from fedpipe.researcher.experiment import NodeResult

__all__ = ["FedAvg", "ScaffoldStrategy", "make_strategy"]

Params = Mapping[str, torch.Tensor]


def _updates(results: Sequence[NodeResult]) -> list[tuple[Params, int]]:
    return [(r.results["model_weights"], r.sample_size) for r in results]


@define
class FedAvg:
    """Sample-weighted federated averaging of the nodes' parameters."""

    def aggregator_args(self) -> dict[str, Any]:
        """FedAvg sends nothing to the nodes' optimizers."""
        return {"aggregator_name": "fedavg"}

    def aux_vars_for(self, node_id: str) -> Mapping[str, Any] | None:
        """No auxiliary variables."""
        return None

    def aggregate(
        self, params: Params, results: Sequence[NodeResult], round_number: int
    ) -> dict[str, torch.Tensor]:
        """``sum(n_i * w_i) / sum(n_i)`` over the nodes that answered."""
        return fedavg(_updates(results))


@define
class ScaffoldStrategy:
    """SCAFFOLD: the server control variate travels to the nodes as aux vars; their deltas come back."""

    n_nodes: int
    control: dict[str, torch.Tensor] = field(factory=dict)
    server_lr: float = 1.0

    @classmethod
    def starting_from(cls, params: Params, n_nodes: int) -> "ScaffoldStrategy":
        """A zero control variate shaped like ``params``."""
        return cls(
            n_nodes=n_nodes,
            control={k: torch.zeros_like(v) for k, v in params.items() if v.is_floating_point()},
        )

    def aggregator_args(self) -> dict[str, Any]:
        """Tells the nodes' plans to train with the SCAFFOLD optimizer."""
        return {"aggregator_name": "scaffold"}

    def aux_vars_for(self, node_id: str) -> Mapping[str, Any] | None:
        """The server control variate."""
        return {"scaffold": {"global_state": self.control}}

    def aggregate(
        self, params: Params, results: Sequence[NodeResult], round_number: int
    ) -> dict[str, torch.Tensor]:
        """The SCAFFOLD server step; updates the control variate."""
        deltas = [r.results["optim_aux_var"]["scaffold"]["delta"] for r in results]
        new_params, self.control = scaffold_update(
            params, _updates(results), self.control, deltas, n_nodes=self.n_nodes, server_lr=self.server_lr
        )
        return new_params


def make_strategy(options: Any, initial: Params, *, node_ids: Sequence[str], job_id: str) -> tuple[Any, Any]:
    """The strategy (and secure-aggregation context, or None) for the demo's options."""
    n_nodes = len(node_ids)
    inner: Any = ScaffoldStrategy.starting_from(initial, n_nodes) if options.scaffold else FedAvg()
    if not options.secagg:
        return inner, None
    from fedpipe.researcher.secure import SecureAggregation

    secagg = SecureAggregation.for_nodes(node_ids, job_id=job_id, seed=options.seed)
    return secagg.wrap(inner, initial), secagg
