"""Ports: the Protocols through which a round touches the world, and the records that cross them.

Every port has an in-memory fake in ``fedpipe.testing`` and a real adapter wired by
``fedpipe.bootstrap``. Ports return ``Result[..., RoundError]`` for every expected failure and
translate their library's exceptions at the edge.
"""

import enum
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from attrs import field, frozen
from returns.result import Result

from fedpipe.approval import PendingPlan
from fedpipe.errors import RoundError
from fedpipe.plan import DatasetRecord, TrainingPlan

__all__ = [
    "URL_INVALID",
    "URL_NOT_ALLOWED",
    "Approval",
    "ApprovalRegistry",
    "Biprime",
    "Clock",
    "DatasetRecord",
    "DatasetRegistry",
    "FileExchange",
    "LomKeys",
    "LomPorts",
    "MetricEvent",
    "Monitor",
    "NodeIdentity",
    "NodeState",
    "PairwiseSecrets",
    "PendingOffer",
    "PlanLoader",
    "Ports",
    "SecaggCrypter",
    "SecaggKeys",
    "SecaggRelay",
    "ServerKeyShare",
    "SplitRecord",
    "StateStore",
]


URL_NOT_ALLOWED = "the URL is not on the node's allowed file exchanges"
"""The reason an exchange gives (in its public text) for a URL its owner's allow-list refuses."""
URL_INVALID = "the URL is not a valid http(s) URL"
"""The reason an exchange gives (in its public text) for a URL it cannot parse."""


class FileExchange(Protocol):
    """Moves files between the node and the researcher's file exchange.

    A transfer refused before any connection may name its reason in the error's public text
    (``URL_NOT_ALLOWED``, ``URL_INVALID``); any other failure says nothing of the network.
    """

    def download(self, url: str, dest: Path, *, max_bytes: int) -> Result[Path, RoundError]:
        """Fetch ``url`` into the file ``dest`` (complete or absent, never partial)."""
        ...

    def upload(self, path: Path) -> Result[str, RoundError]:
        """Send the file at ``path``; return the URL it can be downloaded from."""
        ...


class Approval(enum.StrEnum):
    """A training plan's status in the node owner's approval registry."""

    APPROVED = "Approved"
    REJECTED = "Rejected"
    PENDING = "Pending"
    NOT_REGISTERED = "Not Registered"


class ApprovalRegistry(Protocol):
    """The node owner's registry of approved training plans (hash of a canonical source form)."""

    def status(self, source: str) -> Result[Approval, RoundError]:
        """The approval status of the plan whose source text is ``source``."""
        ...

    def record_refused(
        self, source: str, *, plan_class: str, researcher_id: str | None
    ) -> Result[PendingPlan, RoundError]:
        """Keep the unknown plan ``source`` a round refused as pending, source and all, for the owner's
        review (once: a plan already recorded is returned as it is)."""
        ...


class DatasetRegistry(Protocol):
    """The node's registry of local datasets."""

    def get(self, dataset_id: str) -> Result[DatasetRecord | None, RoundError]:
        """The record for ``dataset_id``, or None when the node has no such dataset."""
        ...


@frozen(kw_only=True)
class SplitRecord:
    """The train/test split of one dataset for one job, kept so that it stays stable across rounds."""

    dataset_id: str
    n_samples: int
    test_ratio: float
    test_indices: tuple[int, ...]


@frozen(kw_only=True)
class NodeState:
    """What a node keeps between the rounds of a job (one record per saved round).

    ``plan_state`` is the codec encoding of the plan's ``save_state()`` mapping (optimizer state,
    non-trainable buffers, control variates ...); it is opaque to the store.
    """

    state_id: str
    job_id: str
    round: int
    previous_state_id: str | None = None
    plan_state: bytes = field(default=b"", repr=False)
    split: SplitRecord | None = None
    version: str = "1"


class StateStore(Protocol):
    """Durable node state, chained per job; a save is atomic (all or nothing)."""

    def load(self, job_id: str, state_id: str) -> Result[NodeState | None, RoundError]:
        """The state ``state_id`` of ``job_id``, or None when there is none."""
        ...

    def save(self, state: NodeState) -> Result[None, RoundError]:
        """Store ``state`` atomically (and prune old states of the same job)."""
        ...


@frozen(kw_only=True)
class ServerKeyShare:
    """This node's Joye-Libert user-key share for a secagg context (the reference's servkey entry)."""

    secagg_id: str
    job_id: str
    parties: tuple[str, ...]
    key: int = field(repr=False)

    @property
    def num_nodes(self) -> int:
        """Number of nodes in the context (the researcher, first party, is not a node)."""
        return len(self.parties) - 1


@frozen(kw_only=True)
class Biprime:
    """The public biprime N of a secagg context."""

    secagg_id: str
    biprime: int = field(repr=False)
    max_keysize: int = 2048


class SecaggKeys(Protocol):
    """The node's store of secure-aggregation key material."""

    def server_key(self, secagg_id: str, job_id: str) -> Result[ServerKeyShare | None, RoundError]:
        """The key share ``secagg_id`` of ``job_id``; None if absent; a failure if it is another job's."""
        ...

    def biprime(self, secagg_id: str) -> Result[Biprime | None, RoundError]:
        """The biprime ``secagg_id``, or None if absent."""
        ...

    def claim_tau(self, secagg_id: str, round_number: int) -> Result[None, RoundError]:
        """Record that (key, round) is used; a failure if it was already used (tau reuse breaks JL)."""
        ...


class SecaggCrypter(Protocol):
    """Joye-Libert encryption of a flat update (node side)."""

    def encrypt(
        self,
        values: Sequence[float],
        *,
        key: ServerKeyShare,
        biprime: Biprime,
        round_number: int,
        weight: int,
        clipping_range: float | None,
        first_index: int = 0,
    ) -> Result[list[int], RoundError]:
        """Encrypt ``values`` weighted by ``weight`` (the sample size) for ``round_number``.

        Ciphertext k uses the tau index ``first_index + k``: two vectors of one round must use
        disjoint index ranges (an index used twice reveals the difference of the plaintexts).
        """
        ...

    def start_masks(
        self, *, key: ServerKeyShare, biprime: Biprime, round_number: int, n_values: int | None
    ) -> None:
        """Start computing, in the background, the masks that encrypting ``n_values`` values (and the
        one-value encryption factor after them) will need; ``None``: as many as this key's last round.

        Never raises and never blocks; a crypter without precomputation does nothing.
        """
        ...


def _read_only(secrets: Mapping[str, bytes]) -> Mapping[str, bytes]:
    return MappingProxyType(dict(secrets))


@frozen(kw_only=True)
class PairwiseSecrets:
    """The agreed LOM context ``secagg_id`` of job ``job_id``: one 32-byte secret per peer.

    ``parties`` are the node ids of the context (this node included), in the request's order;
    ``pairwise`` maps every other party to the secret this node shares with it. The secrets are
    left out of the repr and the hash.
    """

    secagg_id: str
    job_id: str
    parties: tuple[str, ...]
    pairwise: Mapping[str, bytes] = field(converter=_read_only, repr=False, hash=False)


@frozen(kw_only=True)
class PendingOffer:
    """This node's side of a LOM agreement not yet complete: its ephemeral X25519 key and signed offer.

    Kept until the context is agreed, so that a retried round offers the very same key again (the
    relay keeps a node's first offer, and the peers may already have read it).
    """

    secagg_id: str
    job_id: str
    parties: tuple[str, ...]
    ephemeral_key: bytes = field(repr=False)
    offer: bytes = field(repr=False)


class LomKeys(Protocol):
    """The node's LOM key store: the peer keys its owner pinned, the contexts it agreed, its pending offers."""

    def pinned_key(self, node_id: str) -> Result[bytes | None, RoundError]:
        """The public identity key (PEM) the owner pinned for ``node_id``; None when none is pinned."""
        ...

    def pairwise(self, secagg_id: str, job_id: str) -> Result[PairwiseSecrets | None, RoundError]:
        """The agreed context ``secagg_id`` of ``job_id``; None if absent; a failure if another job's."""
        ...

    def store_pairwise(self, secrets: PairwiseSecrets) -> Result[None, RoundError]:
        """Store an agreed context durably (replacing one of the same id) and drop its pending offer."""
        ...

    def pending_offer(self, secagg_id: str) -> Result[PendingOffer | None, RoundError]:
        """This node's pending offer for ``secagg_id``, or None."""
        ...

    def keep_pending_offer(self, offer: PendingOffer) -> Result[None, RoundError]:
        """Store this node's offer durably before it is published (replacing one of the same id)."""
        ...


class NodeIdentity(Protocol):
    """This node's identity key (P-256), which never leaves its adapter: it only signs."""

    def sign(self, message: bytes) -> Result[bytes, RoundError]:
        """The ECDSA-P256-SHA256 signature (DER) of ``message``."""
        ...


class SecaggRelay(Protocol):
    """Carries the nodes' signed key offers of a LOM set-up between them (it holds no secret).

    Offers are opaque bytes to the relay; a node publishes its own and collects everyone's.
    """

    def publish(self, secagg_id: str, node_id: str, blob: bytes) -> Result[None, RoundError]:
        """Post ``node_id``'s offer for set-up ``secagg_id`` (posting the same offer again is harmless)."""
        ...

    def collect(self, secagg_id: str, *, count: int, wait: float) -> Result[Mapping[str, bytes], RoundError]:
        """The offers posted for ``secagg_id`` (node id -> offer), once there are ``count`` of them or
        after about ``wait`` seconds, whichever comes first (then possibly fewer)."""
        ...


@frozen(kw_only=True)
class LomPorts:
    """What LOM key agreement in fedpipe's own federations needs; ``agreement_seconds`` bounds its wait."""

    relay: SecaggRelay
    keys: LomKeys
    identity: NodeIdentity
    agreement_seconds: float = 60.0


class PlanLoader(Protocol):
    """Imports a downloaded plan source and instantiates its class, leaving no trace behind."""

    def load(self, source_path: Path, class_name: str) -> Result[TrainingPlan, RoundError]:
        """Instantiate ``class_name`` from the source at ``source_path``."""
        ...


@frozen(kw_only=True)
class MetricEvent:
    """One training-loss or validation-metric report, as the researcher's monitor receives it."""

    node_id: str
    job_id: str
    researcher_id: str
    round: int
    metric: Mapping[str, float]
    iteration: int
    epoch: int | None = None
    train: bool = False
    test: bool = False
    test_on_global_updates: bool = False
    test_on_local_updates: bool = False
    num_samples_trained: int | None = None
    total_samples: int | None = None
    batch_samples: int | None = None
    num_batches: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The reference's AddScalarReply fields (``command`` included)."""
        return {
            "node_id": self.node_id,
            "job_id": self.job_id,
            "researcher_id": self.researcher_id,
            "round": self.round,
            "train": self.train,
            "test": self.test,
            "test_on_global_updates": self.test_on_global_updates,
            "test_on_local_updates": self.test_on_local_updates,
            "metric": dict(self.metric),
            "iteration": self.iteration,
            "epoch": self.epoch,
            "num_samples_trained": self.num_samples_trained,
            "total_samples": self.total_samples,
            "batch_samples": self.batch_samples,
            "num_batches": self.num_batches,
            "command": "add_scalar",
        }


class Monitor(Protocol):
    """Forwards training and validation scalars to the researcher; must never block for long."""

    def report(self, event: MetricEvent) -> None:
        """Send (or queue) one event; never raises."""
        ...


class Clock(Protocol):
    """Time, behind a port so that steps stay deterministic under test."""

    def perf_counter(self) -> float:
        """Wall-clock seconds from an arbitrary origin (for durations)."""
        ...

    def process_time(self) -> float:
        """CPU seconds of this process (for durations)."""
        ...


@frozen(kw_only=True)
class Ports:
    """Every port a standard round needs, bundled for ``standard_round(ports)``."""

    exchange: FileExchange
    approvals: ApprovalRegistry
    datasets: DatasetRegistry
    states: StateStore
    plans: PlanLoader
    monitor: Monitor
    clock: Clock
    secagg_keys: SecaggKeys
    crypter: SecaggCrypter
    new_id: Callable[[], str] = field(eq=False)
    lom: LomPorts | None = None
    """LOM key agreement and its key store; None on a node that cannot agree LOM contexts."""
