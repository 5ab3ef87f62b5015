"""Training-plan approval: the node owner must have approved the exact plan source."""

from returns.result import Failure, Result, Success

from fedpipe.approval import plan_digest
from fedpipe.compose import Step, declare, require
from fedpipe.context import PlanSource, RoundContext
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.ports import Approval, ApprovalRegistry

__all__ = ["check_approval"]


def check_approval(approvals: ApprovalRegistry) -> Step:
    """Refuse a plan that is not approved, when the node requires approval.

    A plan the registry does not know is recorded there as pending (``record_refused``), so that
    the owner finds it, with its source, in ``plans list --pending``. The refusal names the plan
    by its digest, in the form ``plans list`` shows.
    """

    @declare(needs="plan_source")
    def step(ctx: RoundContext) -> Result[RoundContext, RoundError]:
        if not ctx.settings.training_plan_approval:
            return Success(ctx.noted("training plan approval is off on this node: plan accepted unchecked"))

        def refused(src: PlanSource, status: Approval) -> RoundError:
            digest = plan_digest(src.source).value_or(None)  # status() parsed it: None only in theory
            full, short = (digest.text(), digest.text(short=True)) if digest else ("(no digest)",) * 2
            detail, review = f"training plan {full} is {status.value}", ""
            if status is Approval.PENDING:
                detail += f" (review it with `fedpipe plans show {short}`)"
                review = " It awaits the node owner's review."
            elif status is Approval.NOT_REGISTERED:
                recorded = approvals.record_refused(
                    src.source,
                    plan_class=ctx.request.training_plan_class,
                    researcher_id=ctx.request.researcher_id,
                )
                if isinstance(recorded, Failure):
                    detail += f"; it could not be recorded for review: {recorded.failure().detail}"
                else:
                    pending = recorded.unwrap()
                    short = pending.digest.text(short=True)  # as the registry lists it
                    detail += f": recorded as pending {pending.plan_id} (review it with `fedpipe plans show {short}`)"
                    review = " It awaits the node owner's review."
            else:
                detail += f" (see `fedpipe plans show {short}`)"
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
