"""The split step of a Fed-BioMed round: the test split drawn and kept as Fed-BioMed 6.4.1 does it.

The standard ``split_data`` draws the test subset from a seed of the job and dataset ids. A stock
6.4.1 node draws it from torch's global generator (seeded by ``random_seed`` in ``post_init``)
right after the dataset is loaded, in an order that is also the training data order, and keeps
it for the next rounds. ``split_data_fedbiomed`` does the same through the plan's
``fedbiomed_split``, so that a seeded round trains on the same batches as on a stock node. For a
plan that is not a Fed-BioMed one it is the standard step.
"""

import math
from collections.abc import Callable
from typing import TypeVar

from returns.result import Failure, Result, Success

from fedpipe.context import RoundContext
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.fedbiomed.compat.plan import TorchTrainingPlan
from fedpipe.plan import DataSplit
from fedpipe.ports import SplitRecord
from fedpipe.steps import split_data

__all__ = ["split_data_fedbiomed"]

T = TypeVar("T")

_STEP = "split_data"


def _call(what: str, fn: Callable[[], T]) -> Result[T, RoundError]:
    try:
        return Success(fn())
    except Exception as exc:  # plan code is foreign: every exception is expected here
        return Failure(
            RoundError(
                code=ErrorCode.DATA_FAILED,
                step=_STEP,
                detail=f"{what}: {type(exc).__name__}: {exc}",
                public=f"{what}.",
                cause=exc,
            )
        )


def _kept_test(
    record: SplitRecord | None, dataset_id: str, n_samples: int, ratio: float
) -> tuple[int, ...] | None:
    """The previous round's test indices when 6.4.1 would reuse them (same data, same ratio, not empty)."""
    if record is None or record.dataset_id != dataset_id or record.n_samples != n_samples:
        return None
    if not math.isclose(record.test_ratio, ratio) or not record.test_indices:
        return None
    if any(not 0 <= i < n_samples for i in record.test_indices) or len(set(record.test_indices)) != len(
        record.test_indices
    ):
        return None
    return tuple(record.test_indices)


def split_data_fedbiomed(ctx: RoundContext) -> Result[RoundContext, RoundError]:
    """Load the dataset through a Fed-BioMed plan and split it as 6.4.1 does (standard step otherwise).

    The previous round's test subset is kept unless ``shuffle_testing_dataset`` is set, the ratio
    or the dataset size changed, or it was empty (``test_ratio`` 0), in which cases a new split is
    drawn; as in the standard step, a training round with no training sample fails with
    ``no_training_data``.
    """
    plan, args, dataset = ctx.plan, ctx.args, ctx.dataset
    if not isinstance(plan, TorchTrainingPlan) or args is None or dataset is None:
        return split_data(ctx)

    def split(n_samples: int) -> Result[RoundContext, RoundError]:
        previous = ctx.previous_state.split if ctx.previous_state is not None else None
        kept = (
            None
            if args.shuffle_testing_dataset
            else _kept_test(previous, dataset.dataset_id, n_samples, args.test_ratio)
        )
        return _call(
            "Can not create validation/train data",
            lambda: plan.fedbiomed_split(n_samples, args.test_ratio, kept),
        ).bind(lambda chosen: apply(chosen))

    def apply(chosen: DataSplit) -> Result[RoundContext, RoundError]:
        if ctx.request.training and not chosen.train_indices:
            return Failure(
                RoundError(
                    code=ErrorCode.NO_TRAINING_DATA,
                    step=_STEP,
                    detail=f"{chosen.n_samples} samples with test_ratio {args.test_ratio} leave no training sample",
                    public="No samples are left for training: lower `test_ratio` or use a larger dataset.",
                )
            )
        notes: list[str] = []
        if args.test_ratio > 0 and not (args.test_on_global_updates or args.test_on_local_updates):
            notes.append("test_ratio > 0 but no validation requested: the testing subset is left unused")
        if args.test_ratio == 0 and (args.test_on_global_updates or args.test_on_local_updates):
            notes.append("validation requested but test_ratio is 0: no testing subset, validation skipped")
        return _call("Can not create validation/train data", lambda: plan.set_split(chosen)).map(
            lambda _: ctx.noted(*notes, split=chosen)
        )

    def counted(n_samples: object) -> Result[RoundContext, RoundError]:
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 0:
            return Failure(
                RoundError(
                    code=ErrorCode.DATA_FAILED,
                    step=_STEP,
                    detail=f"load_data returned {n_samples!r}, not a sample count",
                    public="The local data could not be loaded.",
                )
            )
        return split(n_samples)

    return _call("Can not load the local dataset", lambda: plan.load_data(dataset)).bind(counted)
