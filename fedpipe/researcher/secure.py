"""Secure aggregation on the researcher's side: key material for the nodes, request fields, decryption.

The researcher never sees a node's update: it multiplies the nodes' ciphertexts, removes the masks
with the server key and gets the sample-weighted mean of the weights (and of numeric aux vars).
"""

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from attrs import define, field
from returns.result import Failure

from fedpipe.researcher.aggregation import unflatten
from fedpipe.researcher.experiment import ExperimentStopped, NodeResult, Strategy
from fedpipe.researcher.strategies import ScaffoldStrategy
from fedpipe.secagg import KeyMaterial, aggregate_results, make_key_material

__all__ = ["SecureAggregation", "SecureStrategy"]

Params = Mapping[str, torch.Tensor]


@define
class SecureAggregation:
    """One secagg context: a biprime, a key share per node, and the server key the researcher keeps."""

    material: KeyMaterial
    node_ids: tuple[str, ...]
    job_id: str
    researcher_id: str = "researcher"
    secagg_id: str = "servkey-demo"
    biprime_id: str = "biprime-demo"
    clipping_range: int = 3
    randoms: dict[int, float] = field(factory=dict)
    _rng: random.Random = field(factory=lambda: random.Random(0))

    @classmethod
    def for_nodes(
        cls, node_ids: Sequence[str], *, job_id: str, seed: int = 0, bits: int = 2048
    ) -> "SecureAggregation":
        """Fresh test key material for ``node_ids`` (production keys come from a key-setup protocol)."""
        material = make_key_material(len(node_ids), bits=bits, seed=seed)
        return cls(material=material, node_ids=tuple(node_ids), job_id=job_id, rng=random.Random(seed))

    @property
    def parties(self) -> tuple[str, ...]:
        """The researcher first, then the nodes."""
        return (self.researcher_id, *self.node_ids)

    def install(self, owner: Any, node_id: str) -> None:
        """What a node owner stores: this node's key share and the biprime (through the owner API)."""
        index = self.node_ids.index(node_id)
        share, biprime = self.material.node_records(
            index,
            secagg_id=self.secagg_id,
            biprime_id=self.biprime_id,
            job_id=self.job_id,
            parties=self.parties,
        )
        owner.secagg_keys.add_server_key(share)
        owner.secagg_keys.add_biprime(biprime, parties=self.parties)

    def request_fields(self, round_number: int) -> dict[str, Any]:
        """The secagg fields of this round's train requests (a fresh ``secagg_random`` per round)."""
        value = self.randoms.setdefault(round_number, round(self._rng.uniform(0, 1), 3))
        return {
            "secagg_servkey_id": self.secagg_id,
            "secagg_biprime_id": self.biprime_id,
            "secagg_random": value,
            "secagg_clipping_range": self.clipping_range,
        }

    def decrypt(self, results: Sequence[NodeResult], round_number: int) -> tuple[Any, Mapping[str, Any]]:
        """The weighted means (flat weights, aux vars) of one secure round; raises ExperimentStopped on mismatch."""
        outcome = aggregate_results(
            [r.results for r in results],
            server_key=self.material.server_key,
            biprime=self.material.biprime,
            round_number=round_number,
            n_nodes=len(self.node_ids),
            secagg_random=self.randoms.get(round_number),
            clipping_range=self.clipping_range,
        )
        if isinstance(outcome, Failure):
            raise ExperimentStopped(
                f"secure aggregation of round {round_number} failed: {outcome.failure().reason}"
            )
        update = outcome.unwrap()
        return update.weights, update.aux_vars

    def wrap(self, inner: Strategy, template: Params) -> "SecureStrategy":
        """A strategy that decrypts before ``inner``'s kind of update (FedAvg or SCAFFOLD)."""
        return SecureStrategy(secagg=self, inner=inner, template={k: v.clone() for k, v in template.items()})


@define
class SecureStrategy:
    """FedAvg or SCAFFOLD over decrypted sample-weighted means."""

    secagg: SecureAggregation
    inner: Strategy
    template: dict[str, torch.Tensor]

    def aggregator_args(self) -> dict[str, Any]:
        """As the inner strategy."""
        return self.inner.aggregator_args()

    def aux_vars_for(self, node_id: str) -> Mapping[str, Any] | None:
        """As the inner strategy."""
        return self.inner.aux_vars_for(node_id)

    def aggregate(
        self, params: Params, results: Sequence[NodeResult], round_number: int
    ) -> dict[str, torch.Tensor]:
        """Decrypt the weighted mean; with SCAFFOLD, move the control variate by the mean delta."""
        weights, aux = self.secagg.decrypt(results, round_number)
        new_params = unflatten([float(x) for x in weights], self.template)
        if isinstance(self.inner, ScaffoldStrategy):
            delta = aux.get("scaffold", {}).get("delta", {})
            # the researcher only learns the weighted mean of the deltas, which stands for sum / n_nodes
            self.inner.control = {
                k: c + torch.as_tensor(delta[k], dtype=c.dtype).reshape(c.shape) if k in delta else c
                for k, c in self.inner.control.items()
            }
        return new_params
