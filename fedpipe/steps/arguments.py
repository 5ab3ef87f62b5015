"""Training-argument parsing, the owner's caps, and dataset lookup: a request asking too much never runs (D6)."""

from collections.abc import Mapping
from typing import Any

from attrs import evolve
from returns.result import Failure, Result, Success

from fedpipe.args import TrainingArgs, parse_training_args_mapping
from fedpipe.compose import Step, declare
from fedpipe.context import RoundContext
from fedpipe.errors import ErrorCode, RoundError, printable
from fedpipe.plan import REQUEST_LOADER_ARGS, DatasetRecord, request_loader_arg_problem
from fedpipe.ports import DatasetRegistry
from fedpipe.settings import NodeSettings

__all__ = ["check_caps", "find_dataset", "parse_training_args"]

STEP = "parse_training_args"


@declare(provides="args")
def parse_training_args(ctx: RoundContext) -> Result[RoundContext, RoundError]:
    """Validate ``training_args`` into a TrainingArgs within the owner's caps; else fail the round here.

    What the node owner allows (``NodeSettings``) a request may ask for less of, never more. A
    value over a cap is **refused**, never clamped: the round fails with ``bad_training_args``
    and a message naming the argument and the cap, so the researcher knows the run they asked
    for did not happen. The caps:

    - ``loader_args`` may set only ``batch_size``, ``drop_last``, ``num_workers`` and ``shuffle``
      (``fedpipe.plan.REQUEST_LOADER_ARGS``); any other key (samplers, collate functions,
      worker hooks, multiprocessing contexts, prefetching, timeouts ...) is refused.
    - ``loader_args.num_workers``: a non-negative integer, at most ``max_loader_workers``
      (0 by default: a request starts no data-loader process).
    - ``loader_args.batch_size``: a positive integer, at most ``max_batch_size``.
    - ``epochs`` at most ``max_epochs``, ``num_updates`` at most ``max_updates``.
    - ``shuffle`` and ``drop_last``: booleans.

    The plan's own loader arguments (its ``DataManager`` keywords) are approved code, not the
    researcher's: they win over the request's and are not capped.
    """
    # parse_training_args_mapping checks for plain JSON again, after parse_request did: a
    # TrainRequest built in-process (execute_round takes one) reaches here unchecked
    return (
        parse_training_args_mapping(ctx.request.training_args, STEP)
        .bind(lambda args: check_caps(args, ctx.settings))
        .map(lambda args: evolve(ctx, args=args))
    )


class _Refused(Exception):
    """Internal signal of a value the node does not allow; never escapes this module."""


def _amount(value: int) -> str:
    return str(value) if value < 10**18 else "more than 10^18"


def _refuse(key: str, rule: str) -> _Refused:
    return _Refused(f"training argument `{key}` {rule}")


def _capped(key: str, value: int | None, cap: int | None, what: str) -> None:
    if value is not None and cap is not None and value > cap:
        raise _refuse(key, f"asks for {_amount(value)} {what}; this node allows at most {cap}")


def _loader_args(loader_args: Mapping[str, Any], settings: NodeSettings) -> None:
    # a key a request may not set is named first, then a value of the wrong kind, then a cap
    for key in sorted(loader_args, key=lambda k: (k in REQUEST_LOADER_ARGS, k)):
        problem = request_loader_arg_problem(key, loader_args[key])
        if problem is not None:
            raise _refuse(f"loader_args.{printable(key)}", problem)
    workers = loader_args.get("num_workers", 0)
    _capped("loader_args.num_workers", workers, settings.max_loader_workers, "data-loader worker processes")
    size = loader_args.get("batch_size")
    if size is not None and settings.max_batch_size is not None and size > settings.max_batch_size:
        raise _refuse(
            "loader_args.batch_size",
            f"asks for batches of {_amount(size)} samples; this node allows at most {settings.max_batch_size}",
        )


def check_caps(args: TrainingArgs, settings: NodeSettings) -> Result[TrainingArgs, RoundError]:
    """``args`` when they stay within the owner's caps, else a BAD_TRAINING_ARGS failure naming arg and cap.

    >>> from fedpipe.settings import NodeSettings
    >>> owner = NodeSettings(node_id="n", root="/nonexistent", max_epochs=5)
    >>> check_caps(TrainingArgs(epochs=3), owner).unwrap().epochs
    3
    >>> check_caps(TrainingArgs(epochs=50), owner).failure().public
    'Invalid training arguments: training argument `epochs` asks for 50 epochs; this node allows at most 5.'
    >>> print(check_caps(TrainingArgs(loader_args={"num_workers": 4}), owner).failure().public)
    Invalid training arguments: training argument `loader_args.num_workers` asks for 4 data-loader worker processes; this node allows at most 0.
    """
    try:
        _loader_args(args.loader_args, settings)
        _capped("epochs", args.epochs, settings.max_epochs, "epochs")
        _capped("num_updates", args.num_updates, settings.max_updates, "updates")
    except _Refused as err:
        return Failure(
            RoundError(
                code=ErrorCode.BAD_TRAINING_ARGS,
                step=STEP,
                detail=str(err),
                public=f"Invalid training arguments: {err}.",
            )
        )
    return Success(args)


def find_dataset(datasets: DatasetRegistry) -> Step:
    """Look the request's dataset up in the node's registry; an unknown id fails the round."""

    @declare(provides="dataset")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        def found(record: DatasetRecord | None) -> Result[RoundContext, RoundError]:
            if record is None:
                return Failure(
                    RoundError(
                        code=ErrorCode.DATASET_NOT_FOUND,
                        step="find_dataset",
                        detail=f"no dataset with id {ctx.request.dataset_id!r}",
                        public="The requested dataset is not available on this node.",
                    )
                )
            return Success(evolve(ctx, dataset=record))

        return datasets.get(ctx.request.dataset_id).bind(found)

    return step
