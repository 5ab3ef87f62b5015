"""Secure aggregation on the researcher's side: key material for the nodes, request fields, decryption.

The researcher never sees a node's update: it combines the nodes' encrypted vectors and gets the
sample-weighted mean of the weights (and of numeric aux vars). Joye-Libert (``SecureAggregation``):
multiply the ciphertexts, remove the masks with the server key. LOM (``LomAggregation``): sum the
masked words, the pairwise masks cancel; the researcher holds no key. Both decrypt fedpipe nodes'
results and stock Fed-BioMed 6.4.1 replies alike: the layout of a reply without fedpipe metadata
is the request's (the parameter count of the model sent). ``FedpipeLomAggregation`` is LOM in
fedpipe's own federations: the nodes agree their keys through the server, checking each other's
pinned identity keys, and mask with a cryptographic PRG.
"""

import random
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from attrs import define, field
from returns.result import Failure, Result

from fedpipe.researcher.aggregation import unflatten
from fedpipe.researcher.experiment import ExperimentStopped, NodeResult, Strategy
from fedpipe.researcher.strategies import ScaffoldStrategy
from fedpipe.secagg import Encoding, KeyMaterial, MaskPool, make_key_material
from fedpipe.secagg.lom import FEDPIPE_LOM_INFO, FEDPIPE_TARGET_RANGE
from fedpipe.secagg.researcher import (
    FACTOR_TOLERANCE,
    LOM_SCHEME,
    AggregatedUpdate,
    SecaggMismatch,
    aggregate_lom_results,
    aggregate_results,
)

__all__ = [
    "FedpipeLomAggregation",
    "LomAggregation",
    "SecureAggregation",
    "SecureStrategy",
    "UpdateDecrypter",
]

Params = Mapping[str, torch.Tensor]
LOM_MODE = FEDPIPE_LOM_INFO.decode("ascii")
"""``metadata.secagg.mode`` of an update masked in fedpipe's LOM mode (``fedpipe.steps.encrypt.LOM_MODE``)."""


class UpdateDecrypter(Protocol):
    """A secagg context that turns one round's encrypted results into weighted means."""

    def decrypt(
        self, results: Sequence[NodeResult], round_number: int, n_params: int | None = None
    ) -> tuple[Any, Mapping[str, Any]]:
        """The weighted means (flat weights, aux vars); raises ExperimentStopped on a mismatch."""
        ...


def _unwrap(
    outcome: Result[AggregatedUpdate, SecaggMismatch], round_number: int
) -> tuple[Any, Mapping[str, Any]]:
    if isinstance(outcome, Failure):
        raise ExperimentStopped(
            f"secure aggregation of round {round_number} failed: {outcome.failure().reason}"
        )
    update = outcome.unwrap()
    return update.weights, update.aux_vars


def _draw_random(randoms: dict[int, float], rng: random.Random, round_number: int) -> float:
    # as 6.4.1: a fresh value in [0, 1] with 3 decimals each round
    return randoms.setdefault(round_number, round(rng.uniform(0, 1), 3))


@define
class SecureAggregation:
    """One Joye-Libert secagg context: a biprime, a key share per node, and the server key the researcher keeps.

    ``encoding`` is that of fedpipe nodes whose results do not record theirs (replies without
    fedpipe metadata are read as 6.4.1 nodes encrypt). ``pool`` (optional, closed by ``close``)
    computes the server masks: with ``n_params`` known (``wrap`` sets it), ``request_fields``
    starts them while the nodes train. Without a pool, decryption uses every core for large models.
    """

    material: KeyMaterial
    node_ids: tuple[str, ...]
    job_id: str
    researcher_id: str = "researcher"
    secagg_id: str = "servkey-demo"
    biprime_id: str = "biprime-demo"
    clipping_range: int = 3
    encoding: Encoding = field(factory=Encoding)
    pool: MaskPool | None = None
    n_params: int | None = None
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
        """The secagg fields of this round's train requests (a fresh ``secagg_random`` per round).

        With a pool and a known parameter count, the server masks of the round start computing now.
        """
        if self.pool is not None and self.n_params:
            count = self.encoding.ciphertexts(self.n_params, len(self.node_ids), self.material.biprime)
            # and the factor, after the update (fedpipe) or at index 0 (6.4.1: already among them)
            self.pool.start(self.material.server_key, self.material.biprime, round_number, count + 1)
        return {
            "secagg_servkey_id": self.secagg_id,
            "secagg_biprime_id": self.biprime_id,
            "secagg_random": _draw_random(self.randoms, self._rng, round_number),
            "secagg_clipping_range": self.clipping_range,
        }

    def decrypt(
        self, results: Sequence[NodeResult], round_number: int, n_params: int | None = None
    ) -> tuple[Any, Mapping[str, Any]]:
        """The weighted means (flat weights, aux vars) of one secure round; raises ExperimentStopped on mismatch.

        ``n_params`` (default: the count ``wrap`` recorded) is the parameter count of the model
        the requests carried: the layout of results without fedpipe metadata.
        """
        outcome = aggregate_results(
            [r.results for r in results],
            server_key=self.material.server_key,
            biprime=self.material.biprime,
            round_number=round_number,
            n_nodes=len(self.node_ids),
            secagg_random=self.randoms.get(round_number),
            clipping_range=self.clipping_range,
            encoding=self.encoding,
            pool=self.pool,
            n_params=self.n_params if n_params is None else n_params,
        )
        if self.pool is not None:
            self.pool.forget(self.material.server_key, self.material.biprime, round_number)
        return _unwrap(outcome, round_number)

    def wrap(self, inner: Strategy, template: Params) -> "SecureStrategy":
        """A strategy that decrypts before ``inner``'s kind of update (FedAvg or SCAFFOLD)."""
        self.n_params = sum(t.numel() for t in template.values())
        return SecureStrategy(secagg=self, inner=inner, template={k: v.clone() for k, v in template.items()})

    def close(self) -> None:
        """Stop the mask workers, if any."""
        if self.pool is not None:
            self.pool.close()


@define
class LomAggregation:
    """One LOM secagg context on the researcher's side: the node parties of a DH context, and its id.

    The nodes agree on pairwise secrets among themselves (relayed by the researcher); the
    researcher holds no key: it sums the nodes' masked words and checks the factor within
    ``factor_tolerance`` (6.4.1's 0.03). ``clipping_range`` None is 6.4.1's node default (3).
    """

    node_ids: tuple[str, ...]
    secagg_id: str
    clipping_range: int | None = None
    factor_tolerance: float = FACTOR_TOLERANCE
    n_params: int | None = None
    randoms: dict[int, float] = field(factory=dict)
    _rng: random.Random = field(factory=lambda: random.Random(0))

    def secagg_arguments(self, round_number: int) -> dict[str, Any]:
        """This round's ``TrainRequest.secagg_arguments`` as 6.4.1's researcher sends them for LOM."""
        return {
            "secagg_random": _draw_random(self.randoms, self._rng, round_number),
            "secagg_clipping_range": self.clipping_range,
            "secagg_scheme": 2,
            "parties": list(self.node_ids),
            "secagg_dh_id": self.secagg_id,
        }

    def decrypt(
        self, results: Sequence[NodeResult], round_number: int, n_params: int | None = None
    ) -> tuple[Any, Mapping[str, Any]]:
        """The weighted means (flat weights, aux vars) of one LOM round; raises ExperimentStopped on mismatch."""
        outcome = aggregate_lom_results(
            [r.results for r in results],
            n_nodes=len(self.node_ids),
            secagg_random=self.randoms.get(round_number),
            n_params=self.n_params if n_params is None else n_params,
            clipping_range=self.clipping_range,
            factor_tolerance=self.factor_tolerance,
        )
        return _unwrap(outcome, round_number)

    def wrap(self, inner: Strategy, template: Params) -> "SecureStrategy":
        """A strategy that decrypts before ``inner``'s kind of update (FedAvg or SCAFFOLD)."""
        self.n_params = sum(t.numel() for t in template.values())
        return SecureStrategy(secagg=self, inner=inner, template={k: v.clone() for k, v in template.items()})


@define
class FedpipeLomAggregation:
    """One LOM context of fedpipe's own federation, on the researcher's side: its id and node parties.

    The nodes agree the context's pairwise secrets among themselves through the server's key
    relay on its first round, each checking the others' offers under the identity keys its owner
    pinned; the researcher holds no key. It sums the nodes' masked words mod 2**64 (the masks
    cancel when every party contributed to the same round), checks that each update was masked
    in fedpipe mode with the encryption factor at its own index (after the values, never over
    one of them), decodes the weighted mean at the fedpipe-mode target range and checks the factor
    within ``factor_tolerance`` (default: two quantization steps, the decoding's bound).
    Use it as ``SecureAggregation``: ``request_fields`` for the requests, ``wrap`` for the strategy.
    """

    node_ids: tuple[str, ...]
    secagg_id: str = field(factory=lambda: f"lom-{uuid.uuid4().hex}")
    clipping_range: int = 3
    factor_tolerance: float | None = None
    n_params: int | None = None
    randoms: dict[int, float] = field(factory=dict)
    _rng: random.Random = field(factory=lambda: random.Random(0))

    @property
    def tolerance(self) -> float:
        """How far the decrypted factor may be from ``secagg_random``."""
        if self.factor_tolerance is not None:
            return self.factor_tolerance
        return 2 * 2 * self.clipping_range / (FEDPIPE_TARGET_RANGE - 1) * 1.001

    def request_fields(self, round_number: int) -> dict[str, Any]:
        """The secagg fields of this round's train requests (a fresh ``secagg_random`` per round)."""
        return {
            "secagg_scheme": LOM_SCHEME,
            "secagg_dh_id": self.secagg_id,
            "secagg_parties": list(self.node_ids),
            "secagg_random": _draw_random(self.randoms, self._rng, round_number),
            "secagg_clipping_range": self.clipping_range,
        }

    def decrypt(
        self, results: Sequence[NodeResult], round_number: int, n_params: int | None = None
    ) -> tuple[Any, Mapping[str, Any]]:
        """The weighted means (flat weights, aux vars) of one LOM round; raises ExperimentStopped on mismatch."""
        for r in results:
            problem = _fedpipe_lom_problem(r, self.secagg_id)
            if problem is not None:
                raise ExperimentStopped(f"secure aggregation of round {round_number} failed: {problem}")
        outcome = aggregate_lom_results(
            [r.results for r in results],
            n_nodes=len(self.node_ids),
            secagg_random=self.randoms.get(round_number),
            n_params=self.n_params if n_params is None else n_params,
            clipping_range=self.clipping_range,
            target_range=FEDPIPE_TARGET_RANGE,
            factor_tolerance=self.tolerance,
        )
        return _unwrap(outcome, round_number)

    def wrap(self, inner: Strategy, template: Params) -> "SecureStrategy":
        """A strategy that decrypts before ``inner``'s kind of update (FedAvg or SCAFFOLD)."""
        self.n_params = sum(t.numel() for t in template.values())
        return SecureStrategy(secagg=self, inner=inner, template={k: v.clone() for k, v in template.items()})


def _fedpipe_lom_problem(result: NodeResult, secagg_id: str) -> str | None:
    """Why ``result`` is not a fedpipe-mode LOM update of ``secagg_id`` with its factor at its own index."""
    meta = result.results.get("metadata")
    sec = meta.get("secagg") if isinstance(meta, Mapping) else None
    if not isinstance(sec, Mapping) or sec.get("mode") != LOM_MODE:
        return f"the update of {result.node_id} is not masked in fedpipe's LOM mode"
    if sec.get("context_id") != secagg_id:
        return f"the update of {result.node_id} was masked for another LOM context"
    if sec.get("target_range") != FEDPIPE_TARGET_RANGE:
        return f"the update of {result.node_id} was quantized at another target range"
    n_values, index = sec.get("n_values"), sec.get("factor_index")
    if type(n_values) is not int or index != n_values:
        return (
            f"the encryption factor of {result.node_id} is not at its own index (after the {n_values} values)"
        )
    return None


@define
class SecureStrategy:
    """FedAvg or SCAFFOLD over decrypted sample-weighted means."""

    secagg: UpdateDecrypter
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
        n_params = sum(t.numel() for t in self.template.values())
        weights, aux = self.secagg.decrypt(results, round_number, n_params)
        new_params = unflatten([float(x) for x in weights], self.template)
        if isinstance(self.inner, ScaffoldStrategy):
            delta = aux.get("scaffold", {}).get("delta", {})
            # the researcher only learns the weighted mean of the deltas, which stands for sum / n_nodes
            self.inner.control = {
                k: c + torch.as_tensor(delta[k], dtype=c.dtype).reshape(c.shape) if k in delta else c
                for k, c in self.inner.control.items()
            }
        return new_params
