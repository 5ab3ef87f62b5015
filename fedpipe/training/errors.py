"""Typed exceptions of the torch training layer; their messages never carry file paths."""

__all__ = ["DataError", "MetricError", "PlanContractError", "PlanError"]


class PlanError(Exception):
    """The training plan cannot do what the round asked; the message is safe to show the researcher."""


class PlanContractError(PlanError):
    """User plan code broke the contract (a wrong signature or return type)."""


class DataError(PlanError):
    """The local data cannot be loaded, configured or iterated as asked."""


class MetricError(PlanError):
    """Labels and predictions cannot be scored with the requested metric."""
