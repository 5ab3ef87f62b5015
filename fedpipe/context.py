"""The immutable RoundContext that flows through the steps, and its phase sub-records (no I/O)."""

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from attrs import evolve, field, frozen

from fedpipe.args import TrainingArgs
from fedpipe.plan import DatasetRecord, DataSplit, TrainingPlan
from fedpipe.ports import Biprime, NodeState, ServerKeyShare
from fedpipe.request import JsonMap, TrainRequest
from fedpipe.settings import NodeSettings

__all__ = [
    "Downloads",
    "LomSetup",
    "PlanSource",
    "RoundContext",
    "SecaggSetup",
    "TrainingOutcome",
    "Update",
    "Validation",
    "new_context",
]

_EMPTY: JsonMap = MappingProxyType({})


@frozen(kw_only=True)
class SecaggSetup:
    """The secure-aggregation material of this round (written by check_secagg)."""

    key: ServerKeyShare
    biprime: Biprime
    random: float
    clipping_range: float | None


@frozen(kw_only=True)
class LomSetup:
    """A LOM round of fedpipe's own federation (written by check_secagg; no secret in it).

    ``secagg_id`` names the context the nodes agree on (``agree_keys``), ``parties`` its node ids
    in the request's order; the pairwise secrets stay in the node's key store.
    """

    secagg_id: str
    parties: tuple[str, ...]
    random: float
    clipping_range: int | None


@frozen(kw_only=True)
class PlanSource:
    """The downloaded training-plan source (written by fetch_plan)."""

    path: Path
    source: str = field(repr=False)
    sha256: str


@frozen(kw_only=True)
class Downloads:
    """Files and values fetched from the exchange (written by the fetch_* steps).

    ``params`` holds global parameters that arrived already decoded, inline in the request (a
    transport without a file exchange, such as a Fed-BioMed 6.x federation): the ``model_weights``
    map itself. When it is set, ``set_params`` uses it and ``params_path`` is not read.
    """

    params_path: Path | None = None
    params: Mapping[str, Any] | None = field(default=None, eq=False, repr=False)
    aggregator_args: JsonMap = _EMPTY
    aux_vars: Mapping[str, Any] = field(default=_EMPTY, eq=False)


@frozen(kw_only=True)
class Validation:
    """Metric values on the testing subset before (global params) and after (local params) training."""

    before: Mapping[str, float] | None = None
    after: Mapping[str, float] | None = None


@frozen(kw_only=True)
class TrainingOutcome:
    """What training produced besides the parameters (written by train_model)."""

    samples_seen: int
    sample_size: int
    rtime_training: float
    ptime_training: float
    aux_vars: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class Update:
    """The local update as it will be uploaded (written by make_update, encrypt_update)."""

    model_weights: Any = field(eq=False, repr=False)
    aux_vars: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)
    optimizer_args: Mapping[str, Any] = field(default=_EMPTY, eq=False)
    encrypted: bool = False
    encryption_factor: tuple[int, ...] | None = field(default=None, repr=False)
    metadata: Mapping[str, Any] = field(default=_EMPTY, eq=False)


@frozen(kw_only=True)
class RoundContext:
    """Everything a round knows, grown one sub-record per step; never mutated, only evolved.

    ``state_id`` is the id the round will save its new node state under (training rounds only),
    fixed before the first step so that even a failure reply can carry it. ``notes`` collects
    warnings for the node log (failed validation, ignored state parts); they never fail a round.

    ``deadline`` is the reading of the round's clock (``ports.clock.perf_counter()``) past which
    the round must stop: the round's start plus the owner's ``max_round_seconds``, or None when
    there is no limit. The runner stops the round between steps once it has passed, and steps
    that run long user code (training, validation) pass the plan a ``stop`` check built from it.
    It is a plain number rather than a callable so that the context stays a comparable value.
    """

    request: TrainRequest
    settings: NodeSettings
    workdir: Path
    state_id: str | None = None
    deadline: float | None = None
    args: TrainingArgs | None = None
    secagg: SecaggSetup | None = None
    lom: LomSetup | None = None
    dataset: DatasetRecord | None = None
    plan_source: PlanSource | None = None
    downloads: Downloads = Downloads()
    plan: TrainingPlan | None = field(default=None, eq=False, repr=False)
    previous_state: NodeState | None = None
    split: DataSplit | None = None
    validation: Validation = Validation()
    training: TrainingOutcome | None = None
    update: Update | None = None
    saved_state: NodeState | None = None
    params_url: str = ""
    notes: tuple[str, ...] = ()

    def noted(self, *notes: str, **changes: Any) -> "RoundContext":
        """Evolve with ``changes`` and append ``notes`` in the same single evolve."""
        return evolve(self, notes=self.notes + notes, **changes)


def new_context(
    request: TrainRequest,
    settings: NodeSettings,
    workdir: Path,
    state_id: str | None,
    *,
    deadline: float | None = None,
) -> RoundContext:
    """The context a round starts from: the request, the node's settings and a fresh workspace.

    ``deadline`` (a clock reading, see ``RoundContext``) is set by the runner from the round's
    start and ``settings.max_round_seconds``; None means the round has no time limit.
    """
    return RoundContext(
        request=request,
        settings=settings,
        workdir=workdir,
        state_id=state_id if request.training else None,
        deadline=deadline,
    )
