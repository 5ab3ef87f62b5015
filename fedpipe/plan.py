"""The training-plan interface the round drives: framework-neutral, so the core never imports torch.

``fedpipe.training.TorchTrainingPlan`` implements it for PyTorch; ``fedpipe.testing`` has a
scripted fake. Plan methods are user code: they may raise anything, and the step that calls
one turns the exception into a ``RoundError``.

The routines take a cooperative ``stop`` check (``StopCheck``): the round passes one that turns
true once the node owner's wall-time limit has passed, and a plan polls it between batches and
returns early when it is true (the round then answers ``round_timeout``). Plans written before
the keyword existed still run: the round passes ``stop`` only to a routine that declares it (or
``**kwargs``), and such a plan is stopped between steps only.
"""

import inspect
import weakref
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol

from attrs import field, frozen

from fedpipe.args import Metric, TrainingArgs
from fedpipe.request import JsonMap
from fedpipe.settings import GpuPolicy

__all__ = [
    "REQUEST_LOADER_ARGS",
    "DataSplit",
    "DatasetRecord",
    "MetricSink",
    "PlanFactory",
    "Scalars",
    "StopCheck",
    "TrainingPlan",
    "accepts_stop",
    "never_stop",
    "request_loader_arg_problem",
]


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# key -> (what its value must be, the rule that says so)
_LOADER_ARG_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "batch_size": (lambda v: _whole(v) and v >= 1, "must be a positive integer"),
    "drop_last": (lambda v: isinstance(v, bool), "must be a boolean"),
    "num_workers": (lambda v: _whole(v) and v >= 0, "must be a non-negative integer"),
    "shuffle": (lambda v: isinstance(v, bool), "must be a boolean"),
}

REQUEST_LOADER_ARGS: frozenset[str] = frozenset(_LOADER_ARG_RULES)
"""The data-loader arguments a request's ``loader_args`` may set; any other key is refused.

The others start processes or threads, name code to run or objects to build (``sampler``,
``collate_fn``, ``worker_init_fn``, ``multiprocessing_context``, ``generator`` ...), or tune
resources (``prefetch_factor``, ``pin_memory_device``, ``timeout``): they are the plan's choice
(approved code), never the researcher's. ``num_workers`` is further capped by the node owner.
"""

_NOT_ALLOWED = (
    f"is not a data-loader argument a request may set (allowed: {', '.join(sorted(REQUEST_LOADER_ARGS))})"
)


def request_loader_arg_problem(key: str, value: Any) -> str | None:
    """Why a request's ``loader_args`` may not set ``key`` to ``value``, or None when it may.

    The one rule for what a request may hand the data loader (``REQUEST_LOADER_ARGS`` with plain
    values), applied by the round (``parse_training_args``, which adds the owner's caps) and by
    the training layer (``fedpipe.training.merge_loader_args``, for a plan driven outside it).

    >>> request_loader_arg_problem("batch_size", 8), request_loader_arg_problem("shuffle", 1)
    (None, 'must be a boolean')
    >>> request_loader_arg_problem("worker_init_fn", "os.system")
    'is not a data-loader argument a request may set (allowed: batch_size, drop_last, num_workers, shuffle)'
    """
    rule = _LOADER_ARG_RULES.get(key)
    if rule is None:
        return _NOT_ALLOWED
    allowed, text = rule
    return None if allowed(value) else text


@frozen(kw_only=True)
class DatasetRecord:
    """A dataset the node owner registered: where it is and how to load it."""

    dataset_id: str
    name: str = ""
    path: str = ""
    data_type: str = ""
    shape: tuple[int, ...] = ()
    description: str = ""
    tags: tuple[str, ...] = ()
    dataset_parameters: JsonMap = field(factory=lambda: MappingProxyType({}))
    data_loading_plan: JsonMap | None = None


@frozen(kw_only=True)
class DataSplit:
    """Sample indices of the training and testing subsets of the local dataset."""

    train_indices: tuple[int, ...] = field(repr=lambda t: f"<{len(t)} indices>")
    test_indices: tuple[int, ...] = field(repr=lambda t: f"<{len(t)} indices>")

    @property
    def n_samples(self) -> int:
        """Size of the whole dataset."""
        return len(self.train_indices) + len(self.test_indices)


@frozen(kw_only=True)
class Scalars:
    """One report from a plan's training or testing routine (ids are added by the round)."""

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


MetricSink = Callable[[Scalars], None]
"""Where a plan sends its scalars; bound by the round to the job, researcher and node."""

StopCheck = Callable[[], bool]
"""Polled by a plan's routines between batches: true means stop now and return what was done."""


def never_stop() -> bool:
    """The ``stop`` check of a round without a wall-time limit: never true.

    >>> never_stop()
    False
    """
    return False


def _declares_stop(fn: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins and odd callables without a signature
        return False
    return any(
        p.kind is p.VAR_KEYWORD or (p.name == "stop" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        for p in parameters
    )


# Weak keys: a plan loaded from source is a fresh class each round, and a strong cache would keep
# its functions, and through them its whole throw-away module, alive after the round.
_DECLARES_STOP: weakref.WeakKeyDictionary[Callable[..., Any], bool] = weakref.WeakKeyDictionary()


def accepts_stop(routine: Callable[..., Any]) -> bool:
    """Whether a plan routine takes the ``stop`` keyword (by name or through ``**kwargs``).

    Plans written before ``stop`` was added do not; the round calls them without it. The answer
    is cached per function (for as long as the function lives), so asking again costs a
    dictionary lookup instead of an ``inspect.signature``.

    >>> accepts_stop(lambda *, report, gpu: 0), accepts_stop(lambda *, report, gpu, stop: 0)
    (False, True)
    >>> accepts_stop(lambda **kwargs: 0)
    True
    """
    fn = getattr(routine, "__func__", routine)
    try:
        return _DECLARES_STOP[fn]
    except KeyError:
        pass
    except TypeError:  # not weakly referenceable, or unhashable: ask without the cache
        return _declares_stop(fn)
    answer = _DECLARES_STOP[fn] = _declares_stop(fn)
    return answer


class TrainingPlan(Protocol):
    """What a round needs from a training plan, in the order the standard round calls it."""

    def post_init(
        self,
        *,
        model_args: Mapping[str, Any],
        training_args: TrainingArgs,
        aggregator_args: Mapping[str, Any],
    ) -> None:
        """Build the model and optimizer from the researcher's arguments."""
        ...

    def load_state(self, state: Mapping[str, Any]) -> Sequence[str]:
        """Restore what ``save_state`` returned in an earlier round; return warnings (e.g. skipped parts)."""
        ...

    def set_model_params(self, params: Mapping[str, Any]) -> None:
        """Load the global parameters (a name -> tensor mapping)."""
        ...

    def set_aux_vars(self, aux_vars: Mapping[str, Any]) -> None:
        """Ingest optimizer auxiliary variables sent by the researcher (e.g. SCAFFOLD corrections)."""
        ...

    def load_data(self, dataset: DatasetRecord) -> int:
        """Load the local dataset (applying its parameters and loading plan); return its size."""
        ...

    def set_split(self, split: DataSplit) -> None:
        """Build the training and testing loaders over these indices (honouring loader args)."""
        ...

    def testing_routine(
        self,
        *,
        metric: Metric | None,
        metric_args: Mapping[str, Any],
        report: MetricSink,
        before_train: bool,
        stop: StopCheck = never_stop,
    ) -> Mapping[str, float]:
        """Validate the current model on the testing subset; return the metric values.

        ``stop`` is polled between batches; once it is true the routine returns at once (what
        it returns then is discarded: the round is answered ``round_timeout``).
        """
        ...

    def training_routine(self, *, report: MetricSink, gpu: GpuPolicy, stop: StopCheck = never_stop) -> int:
        """Train on the training subset; return the number of samples seen.

        ``stop`` is polled before each batch; once it is true the routine returns early with the
        samples seen so far (the round is then answered ``round_timeout``, nothing is saved).
        """
        ...

    def collect_aux_vars(self) -> Mapping[str, Any]:
        """Auxiliary variables to send back after training (empty when the optimizer has none)."""
        ...

    def after_training_params(self, *, flatten: bool) -> Any:
        """The update: a name -> tensor mapping, or with ``flatten`` a flat list of floats.

        Both forms carry the same post-processing (user ``postprocess``, central DP noise).
        """
        ...

    def save_state(self) -> Mapping[str, Any]:
        """What to keep for the next round of this job (optimizer state, buffers ...)."""
        ...

    def optimizer_args(self) -> Mapping[str, Any]:
        """The optimizer arguments to report back to the researcher."""
        ...


PlanFactory = Callable[[], TrainingPlan]
"""A zero-argument constructor of a plan (the class named by ``training_plan_class``)."""
