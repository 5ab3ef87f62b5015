"""Training-plan approval: the node owner must have approved the exact plan source."""

from typing import Protocol, runtime_checkable

from returns.result import Failure, Result, Success

from fedpipe.approval import PendingPlan, plan_digest
from fedpipe.compose import Step, declare, require
from fedpipe.context import PlanSource, RoundContext
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import Approval, ApprovalRegistry

__all__ = ["PlanReviewQueue", "check_approval"]


@runtime_checkable
class PlanReviewQueue(Protocol):
    """An approval registry that keeps the plans rounds refused, source and all, for the owner's review."""

    def record_refused(
        self, source: str, *, plan_class: str, researcher_id: str | None
    ) -> Result[PendingPlan, RoundError]:
        """Record the unknown plan ``source`` as pending (once: a known plan is returned as it is)."""
        ...


def _digest_of(source: str, *, short: bool) -> str:
    digest = plan_digest(source)
    return "(no digest)" if isinstance(digest, Failure) else digest.unwrap().text(short=short)


def check_approval(approvals: ApprovalRegistry) -> Step:
    """Refuse a plan that is not approved, when the node requires approval.

    A plan the registry does not know is recorded as pending when the registry keeps a review
    queue (``PlanReviewQueue``), so that the owner finds it, with its source, in ``plans list
    --pending``. The refusal names the plan by its digest, in the form ``plans list`` shows.
    """

    @declare(needs="plan_source")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        if not ctx.settings.training_plan_approval:
            return Success(ctx.noted("training plan approval is off on this node: plan accepted unchecked"))

        def refused(src: PlanSource, status: Approval) -> RoundError:
            digest, short = _digest_of(src.source, short=False), _digest_of(src.source, short=True)
            detail = f"training plan {digest} is {status.value}"
            if status is not Approval.NOT_REGISTERED:
                detail += f" (review it with `fedpipe plans show {short}`)"
            review = " It awaits the node owner's review." if status is Approval.PENDING else ""
            if status is Approval.NOT_REGISTERED and isinstance(approvals, PlanReviewQueue):
                recorded = approvals.record_refused(
                    src.source,
                    plan_class=ctx.request.training_plan_class,
                    researcher_id=ctx.request.researcher_id,
                )
                if isinstance(recorded, Failure):
                    detail += f"; it could not be recorded for review: {recorded.failure().detail}"
                else:
                    pending = recorded.unwrap()
                    detail = (
                        f"training plan {pending.digest.text()} is {status.value}: recorded as pending "
                        f"{pending.plan_id} (review it with `fedpipe plans show {pending.plan_id}`)"
                    )
                    short = pending.digest.text(short=True)
                    review = " It awaits the node owner's review."
            return RoundError(
                code=ErrorCode.PLAN_NOT_APPROVED,
                step="check_approval",
                detail=detail,
                public=f"Requested training plan {short} is not approved by the node "
                f"{ctx.settings.node_id} (status: {status.value}).{review}",
            )

        def decide(src: PlanSource) -> Result[RoundContext, RoundError]:
            return approvals.status(src.source).bind(
                lambda status: Success(ctx) if status is Approval.APPROVED else Failure(refused(src, status))
            )

        return require(ctx.plan_source, step="check_approval", what="training plan source").bind(decide)

    return step
