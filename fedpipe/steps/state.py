"""Node state across rounds: restore the previous round's state, save the new one atomically."""

from collections.abc import Mapping
from typing import Any

from attrs import evolve
from returns.result import Failure, Result, Success

from fedpipe.codec import CodecError, dumps, loads
from fedpipe.compose import Step, declare, require
from fedpipe.context import RoundContext
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import NodeState, SplitRecord, StateStore
from fedpipe.steps._util import call_plan

__all__ = ["load_state", "save_state"]


def load_state(states: StateStore) -> Step:
    """Restore the state named by the request's ``state_id`` into the plan.

    A missing state or a part the plan cannot use (another optimizer type, say) is noted in the
    node log and the round goes on from fresh state (the reference failed the round: D18). Only a
    store that cannot be read fails the round.
    """

    @declare(needs="plan", provides="previous_state")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        previous_id = ctx.request.state_id
        if previous_id is None:
            return Success(ctx)

        def restore(state: NodeState | None) -> Result[RoundContext, RoundError]:
            if state is None:
                return Success(
                    ctx.noted(f"previous state {previous_id!r} not found for this job: starting fresh")
                )
            plan = ctx.plan
            if plan is None or not state.plan_state:
                return Success(evolve(ctx, previous_state=state))
            decoded = loads(state.plan_state)
            if not isinstance(decoded, Success) or not isinstance(decoded.unwrap(), Mapping):
                return Success(
                    ctx.noted(
                        f"previous state {previous_id!r} has an unreadable plan state: ignored",
                        previous_state=state,
                    )
                )
            content: Mapping[str, Any] = decoded.unwrap()
            loaded = call_plan(
                "load_state", ErrorCode.STATE_LOAD_FAILED, "load_state", lambda: plan.load_state(content)
            )
            if isinstance(loaded, Failure):
                note = f"restoring previous state {previous_id!r} failed, continuing with fresh state: {loaded.failure().detail}"
                return Success(ctx.noted(note, previous_state=state))
            return Success(ctx.noted(*(str(w) for w in loaded.unwrap()), previous_state=state))

        return states.load(ctx.request.job_id, previous_id).bind(restore)

    return step


def _save_failed(detail: str, cause: BaseException | None = None) -> RoundError:
    return RoundError(
        code=ErrorCode.STATE_SAVE_FAILED,
        step="save_state",
        detail=detail,
        public="Can't save new node state.",
        retryable=True,
        cause=cause,
    )


def save_state(states: StateStore) -> Step:
    """Save the plan's state and the data split under this round's new state id (one atomic write)."""

    @declare(needs="plan", provides="saved_state")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        state_id = ctx.state_id
        if state_id is None:  # validation-only rounds never create or overwrite state
            return Success(ctx)

        def encode(plan_state: Mapping[str, Any]) -> Result[bytes, RoundError]:
            try:
                return Success(dumps(dict(plan_state)))
            except CodecError as err:
                return Failure(_save_failed(f"plan state cannot be encoded: {err}", err))

        def store(blob: bytes) -> Result[RoundContext, RoundError]:
            split = None
            if ctx.split is not None and ctx.dataset is not None and ctx.args is not None:
                split = SplitRecord(
                    dataset_id=ctx.dataset.dataset_id,
                    n_samples=ctx.split.n_samples,
                    test_ratio=ctx.args.test_ratio,
                    test_indices=ctx.split.test_indices,
                )
            state = NodeState(
                state_id=state_id,
                job_id=ctx.request.job_id,
                round=ctx.request.round,
                previous_state_id=ctx.request.state_id,
                plan_state=blob,
                split=split,
            )
            return states.save(state).map(lambda _: evolve(ctx, saved_state=state))

        return (
            require(ctx.plan, step="save_state", what="training plan")
            .bind(
                lambda plan: call_plan(
                    "save_state", ErrorCode.STATE_SAVE_FAILED, "Can't save new node state", plan.save_state
                )
            )
            .bind(encode)
            .bind(store)
        )

    return step
