"""Downloads from the file exchange: plan source, global parameters, aggregator args, aux vars."""

import functools
import hashlib
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from attrs import evolve
from returns.result import Failure, Result, Success

from fedpipe.codec import Limits, load_file
from fedpipe.compose import Step, declare
from fedpipe.context import PlanSource, RoundContext
from fedpipe.errors import ErrorCode, RoundError, is_public_safe, printable
from fedpipe.ports import URL_INVALID, URL_NOT_ALLOWED, FileExchange
from fedpipe.views import frozen_view

__all__ = [
    "MAX_PLAN_SOURCE_BYTES",
    "fetch_aggregator_args",
    "fetch_aux_vars",
    "fetch_params",
    "fetch_plan",
]

MAX_PLAN_SOURCE_BYTES = 4 * 1024 * 1024

# Refusals decided from the URL alone, before any connection: they reveal nothing about the
# node's network, so the researcher may read them. Every other download failure reads the same.
_PRE_CONNECTION_REASONS = (URL_NOT_ALLOWED, URL_INVALID)


def _download_failed(what: str) -> Callable[[RoundError], RoundError]:
    """Give a download failure one public text whatever its network cause; the detail is kept."""

    def public(error: RoundError) -> RoundError:
        if error.code is not ErrorCode.DOWNLOAD_FAILED:
            return error
        reason = next((r for r in _PRE_CONNECTION_REASONS if r in error.public), None)
        text = f"Could not download the {what}: {reason}." if reason else f"Could not download the {what}."
        return evolve(error, public=text)

    return public


def _argument(name: str) -> str:
    r"""How public texts name an aggregator argument: escaped and cut, or unnamed when the name
    looks like a path or code (the public-text filter would replace the whole message).

    >>> _argument("lr\nmu"), _argument("a\nb\nc"), _argument("model.py")
    ('aggregator argument `lr\\nmu`', 'aggregator argument', 'aggregator argument')
    """
    what = f"aggregator argument `{printable(name)}`"
    return what if is_public_safe(what) else "aggregator argument"


def _bad_payload(step: str, what: str, reason: str) -> RoundError:
    return RoundError(
        code=ErrorCode.BAD_PAYLOAD,
        step=step,
        detail=f"{what}: {reason}",
        public=f"The {what} is not a valid payload.",
    )


@functools.lru_cache(maxsize=8)
def _limits(max_bytes: int) -> Limits:
    # one Limits per download limit, not one per payload: its validators run once
    return Limits(max_bytes=max_bytes)


def decode_payload(path: Path, ctx: RoundContext, step: str, what: str) -> Result[Any, RoundError]:
    """Decode a downloaded payload file within the node's limits; bad bytes become BAD_PAYLOAD."""
    limits = _limits(ctx.settings.max_download_bytes)
    return load_file(path, limits).alt(lambda err: _bad_payload(step, what, err.reason))


def _decode_into(path: Path, *, ctx: RoundContext, what: str) -> Result[Any, RoundError]:
    return decode_payload(path, ctx, "fetch_aggregator_args", what)


def fetch_plan(exchange: FileExchange) -> Step:
    """Download the training-plan source into the round workspace and keep its text and digest."""

    @declare(provides="plan_source")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        dest = ctx.workdir / "training_plan.py"

        def read(path: Path) -> Result[RoundContext, RoundError]:
            try:
                raw = path.read_bytes()
                source = raw.decode("utf-8")
            except (OSError, UnicodeDecodeError) as err:
                return Failure(
                    _bad_payload("fetch_plan", "training plan source", f"{type(err).__name__}: {err}")
                )
            digest = hashlib.sha256(raw).hexdigest()
            return Success(evolve(ctx, plan_source=PlanSource(path=path, source=source, sha256=digest)))

        return (
            exchange.download(ctx.request.training_plan_url, dest, max_bytes=MAX_PLAN_SOURCE_BYTES)
            .alt(_download_failed("training plan"))
            .bind(read)
        )

    return step


def fetch_params(exchange: FileExchange) -> Step:
    """Download the global model parameters file (decoded once, later, by set_params)."""

    @declare(provides="params")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        dest = ctx.workdir / "global_params.mpk"
        return (
            exchange.download(ctx.request.params_url, dest, max_bytes=ctx.settings.max_download_bytes)
            .alt(_download_failed("model parameters"))
            .map(lambda path: evolve(ctx, downloads=evolve(ctx.downloads, params_path=path)))
        )

    return step


def fetch_aggregator_args(exchange: FileExchange) -> Step:
    """Replace each aggregator argument that is an object with a ``url`` by the decoded file content.

    Other entries are kept as sent (the reference downloaded every object-valued entry: D7).
    """

    @declare(provides="aggregator_args")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        resolved: dict[str, Any] = {}
        for i, (name, value) in enumerate(ctx.request.aggregator_args.items()):
            url = value.get("url") if isinstance(value, Mapping) else None
            if not isinstance(url, str):
                resolved[name] = value
                continue
            what = _argument(name)  # the name is the researcher's
            fetched = (
                exchange.download(
                    url, ctx.workdir / f"aggregator_arg_{i}.mpk", max_bytes=ctx.settings.max_download_bytes
                )
                .alt(_download_failed(what))
                .bind(partial(_decode_into, ctx=ctx, what=what))
            )
            if isinstance(fetched, Failure):
                return fetched
            resolved[name] = fetched.unwrap()
        return Success(evolve(ctx, downloads=evolve(ctx.downloads, aggregator_args=frozen_view(resolved))))

    return step


def fetch_aux_vars(exchange: FileExchange) -> Step:
    """Download every aux-var file in order and merge their top-level mappings (later files win).

    On any failure the round stops and no partial merge is kept.
    """

    @declare(provides="aux_vars")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        merged: dict[str, Any] = {}
        for i, url in enumerate(ctx.request.aux_var_urls):
            fetched = (
                exchange.download(
                    url, ctx.workdir / f"aux_var_{i}.mpk", max_bytes=ctx.settings.max_download_bytes
                )
                .alt(_download_failed("optimizer auxiliary variables"))
                .bind(
                    lambda path: decode_payload(
                        path, ctx, "fetch_aux_vars", "optimizer auxiliary variables file"
                    )
                )
            )
            if isinstance(fetched, Failure):
                return fetched
            content = fetched.unwrap()
            if not isinstance(content, Mapping):
                return Failure(
                    _bad_payload(
                        "fetch_aux_vars", "optimizer auxiliary variables file", "top level is not a map"
                    )
                )
            merged.update(content)
        if not merged:
            return Success(ctx)
        return Success(evolve(ctx, downloads=evolve(ctx.downloads, aux_vars=merged)))

    return step
