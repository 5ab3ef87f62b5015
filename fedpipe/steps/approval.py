"""Training-plan approval: the node owner must have approved the exact plan source."""

from returns.result import Failure, Result, Success

from fedpipe.compose import Step, require
from fedpipe.context import RoundContext
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import Approval, ApprovalRegistry

__all__ = ["check_approval"]


def check_approval(approvals: ApprovalRegistry) -> Step:
    """Refuse a plan that is not approved, when the node requires approval."""

    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        if not ctx.settings.training_plan_approval:
            return Success(ctx.noted("training plan approval is off on this node: plan accepted unchecked"))

        def decide(status: Approval) -> Result[RoundContext, RoundError]:
            if status is Approval.APPROVED:
                return Success(ctx)
            return Failure(
                RoundError(
                    code=ErrorCode.PLAN_NOT_APPROVED,
                    step="check_approval",
                    detail=f"plan status is {status.value!r} (sha256 {ctx.plan_source.sha256 if ctx.plan_source else '?'})",
                    public=f"Requested training plan is not approved by the node {ctx.settings.node_id} (status: {status.value}).",
                )
            )

        return (
            require(ctx.plan_source, step="check_approval", what="training plan source")
            .bind(lambda src: approvals.status(src.source))
            .bind(decide)
        )

    return step
