"""Local data: load the dataset through the plan and split it, stably across the rounds of a job."""

import functools
import hashlib
import math
import random

from returns.result import Failure, Result

from fedpipe.compose import declare, require
from fedpipe.context import RoundContext
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.plan import DataSplit
from fedpipe.ports import SplitRecord
from fedpipe.steps._util import call_plan

__all__ = ["split_data", "split_indices", "split_seed"]


def split_seed(job_id: str, dataset_id: str, salt: str = "") -> int:
    """A seed that depends only on the job, the dataset and an optional salt.

    >>> split_seed("job", "ds") == split_seed("job", "ds")
    True
    """
    digest = hashlib.sha256(f"{job_id}\x00{dataset_id}\x00{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


@functools.lru_cache(maxsize=64)  # pure; the same job asks for the same split round after round
def split_indices(n_samples: int, test_ratio: float, seed: int) -> DataSplit:
    """Split ``range(n_samples)``: ``floor(n * ratio)`` test samples drawn with ``seed``, the rest train.

    >>> s = split_indices(10, 0.3, seed=1)
    >>> len(s.test_indices), len(s.train_indices), sorted(s.test_indices + s.train_indices) == list(range(10))
    (3, 7, True)
    """
    n_test = min(n_samples, math.floor(n_samples * test_ratio + 1e-9))
    test = sorted(random.Random(seed).sample(range(n_samples), n_test))
    test_set = set(test)
    train = tuple(i for i in range(n_samples) if i not in test_set)
    return DataSplit(train_indices=train, test_indices=tuple(test))


def _reuse(record: SplitRecord | None, dataset_id: str, n_samples: int, ratio: float) -> DataSplit | None:
    if record is None or record.dataset_id != dataset_id or record.n_samples != n_samples:
        return None
    if not math.isclose(record.test_ratio, ratio) or any(not 0 <= i < n_samples for i in record.test_indices):
        return None
    test = tuple(sorted(set(record.test_indices)))
    test_set = set(test)
    return DataSplit(train_indices=tuple(i for i in range(n_samples) if i not in test_set), test_indices=test)


def _data_failed(detail: str, public: str, code: ErrorCode = ErrorCode.DATA_FAILED) -> RoundError:
    return RoundError(code=code, step="split_data", detail=detail, public=public)


@declare(needs=("plan", "args", "dataset"), provides="split")
def split_data(ctx: RoundContext) -> Result[RoundContext, RoundError]:
    """Load the dataset and give the plan its train/test split.

    The test subset of the previous round of the same job is kept (so validation never scores
    samples trained on earlier: D14) unless ``shuffle_testing_dataset`` asks for a fresh draw or
    the dataset changed size. A training round whose training subset is empty fails here with a
    clear error (the reference crashed: D1).
    """
    plan = ctx.plan
    args = ctx.args
    dataset = ctx.dataset
    if plan is None or args is None or dataset is None:
        return require(None, step="split_data", what="plan, arguments and dataset")

    def split(n_samples: object) -> Result[RoundContext, RoundError]:
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 0:
            return Failure(
                _data_failed(
                    f"load_data returned {n_samples!r}, not a sample count",
                    "The local data could not be loaded.",
                )
            )
        previous = ctx.previous_state.split if ctx.previous_state is not None else None
        reused = (
            None
            if args.shuffle_testing_dataset
            else _reuse(previous, dataset.dataset_id, n_samples, args.test_ratio)
        )
        salt = str(ctx.request.round) if args.shuffle_testing_dataset else ""
        chosen = reused or split_indices(
            n_samples, args.test_ratio, split_seed(ctx.request.job_id, dataset.dataset_id, salt)
        )
        if ctx.request.training and not chosen.train_indices:
            return Failure(
                _data_failed(
                    f"{n_samples} samples with test_ratio {args.test_ratio} leave no training sample",
                    "No samples are left for training: lower `test_ratio` or use a larger dataset.",
                    ErrorCode.NO_TRAINING_DATA,
                )
            )
        notes: list[str] = []
        if args.test_ratio > 0 and not (args.test_on_global_updates or args.test_on_local_updates):
            notes.append("test_ratio > 0 but no validation requested: the testing subset is left unused")
        if args.test_ratio == 0 and (args.test_on_global_updates or args.test_on_local_updates):
            notes.append("validation requested but test_ratio is 0: no testing subset, validation skipped")
        applied = call_plan(
            "split_data",
            ErrorCode.DATA_FAILED,
            "Can not create validation/train data",
            lambda: plan.set_split(chosen),
        )
        return applied.map(lambda _: ctx.noted(*notes, split=chosen))

    return call_plan(
        "split_data", ErrorCode.DATA_FAILED, "Can not load the local dataset", lambda: plan.load_data(dataset)
    ).bind(split)
