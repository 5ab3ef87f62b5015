"""Training-argument parsing and dataset lookup: a request with invalid arguments never runs (D6)."""

from attrs import evolve
from returns.result import Failure, Result, Success

from fedpipe.args import parse_training_args_mapping
from fedpipe.compose import Step
from fedpipe.context import RoundContext
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.plan import DatasetRecord
from fedpipe.ports import DatasetRegistry

__all__ = ["find_dataset", "parse_training_args"]


def parse_training_args(ctx: RoundContext) -> Result[RoundContext, RoundError]:
    """Validate ``training_args`` into a TrainingArgs; an invalid field fails the round here."""
    return parse_training_args_mapping(ctx.request.training_args).map(lambda args: evolve(ctx, args=args))


def find_dataset(datasets: DatasetRegistry) -> Step:
    """Look the request's dataset up in the node's registry; an unknown id fails the round."""

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
