"""Uploading the results file (reference layout) to the file exchange."""

from typing import Any

from attrs import evolve
from returns.result import Failure, Result

from fedpipe.codec import CodecError, dumps
from fedpipe.compose import Step, declare, require
from fedpipe.context import RoundContext, Update
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import FileExchange

__all__ = ["results_payload", "upload_results"]


def results_payload(ctx: RoundContext, update: Update) -> dict[str, Any]:
    """The results file content: the reference's keys, plus ``metadata`` (validation, notes).

    ``metadata["notes"]`` holds every note of the round so far, from ``ctx``: those of the
    steps between ``make_update`` and the upload (encryption, one's own) included.
    """
    payload: dict[str, Any] = {
        "researcher_id": ctx.request.researcher_id,
        "job_id": ctx.request.job_id,
        "state_id": ctx.state_id,
        "model_weights": update.model_weights,
        "node_id": ctx.settings.node_id,
        "optimizer_args": dict(update.optimizer_args),
        "encrypted": update.encrypted,
        "optim_aux_var": dict(update.aux_vars),
        "sample_size": ctx.training.sample_size if ctx.training else None,
        "metadata": {**update.metadata, "notes": list(ctx.notes)},
    }
    if update.encryption_factor is not None:
        payload["encryption_factor"] = list(update.encryption_factor)
    return payload


def upload_results(exchange: FileExchange) -> Step:
    """Write the results file in the round workspace and upload it; keep the download URL."""

    @declare(needs="update", provides="params_url")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        def write(update: Update) -> Result[RoundContext, RoundError]:
            path = ctx.workdir / "node_params.mpk"
            try:
                path.write_bytes(dumps(results_payload(ctx, update)))  # private workspace: no rename needed
            except (CodecError, OSError) as err:
                return Failure(
                    RoundError(
                        code=ErrorCode.UPLOAD_FAILED,
                        step="upload_results",
                        detail=f"cannot write the results file: {type(err).__name__}: {err}",
                        public="Cannot upload results: the results could not be written.",
                        cause=err,
                    )
                )
            return exchange.upload(path).map(lambda url: evolve(ctx, params_url=url))

        return require(ctx.update, step="upload_results", what="update").bind(write)

    return step
