"""The exceptions of the Fed-BioMed compatibility surface: what plans may catch, and what the node refuses."""

from fedpipe.training.errors import PlanError

__all__ = [
    "FedbiomedDataManagerError",
    "FedbiomedDatasetError",
    "FedbiomedError",
    "FedbiomedTrainingPlanError",
    "FedbiomedUserInputError",
    "FedbiomedValueError",
    "UnsupportedFeature",
]


class FedbiomedError(PlanError):
    """Fed-BioMed 6.4.1's base error, raised by the surface where the real package raises one.

    Messages are written by this package (they name columns, methods and types, never a path),
    so a plan that catches it sees the same kind of text as under Fed-BioMed.
    """


class FedbiomedTrainingPlanError(FedbiomedError):
    """A training plan broke the surface's contract (a wrong hook signature or return type)."""


class FedbiomedDatasetError(FedbiomedError):
    """A dataset cannot be read or does not hold what the plan selects."""


class FedbiomedDataManagerError(FedbiomedError):
    """A DataManager was given something it cannot load."""


class FedbiomedValueError(FedbiomedError, ValueError):
    """A value given to the surface is of the wrong kind (a transform that is not callable ...)."""


class FedbiomedUserInputError(FedbiomedError, ValueError):
    """A column selection or argument given by the plan is invalid."""


class UnsupportedFeature(ImportError):
    """A plan imports or uses part of Fed-BioMed that this node does not provide.

    An ``ImportError``, so that a plan written to fall back (``try: ... except ImportError``)
    still can. The message names the feature and is safe to show the researcher.
    """

    def __init__(self, feature: str) -> None:
        super().__init__(f"This node does not support {feature} in training plans.")
        self.feature = feature
