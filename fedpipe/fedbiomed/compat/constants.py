"""``fedbiomed.common.constants`` (and ``metrics.MetricTypes``) as far as training plans use them.

The enum members and values are Fed-BioMed 6.4.1's, so a plan comparing them or printing them
sees what it would see on a stock node.
"""

import enum
from typing import Any

from fedpipe.args import Metric

__all__ = ["DatasetTypes", "ErrorNumbers", "MetricTypes", "ProcessTypes", "TrainingPlans", "metric_of"]


class _BaseEnum(enum.Enum):
    """Fed-BioMed's enum base: adds ``list()``, the values in definition order."""

    @classmethod
    def list(cls) -> list[Any]:
        """Every member's value, in definition order."""
        return [member.value for member in cls]


class ProcessTypes(_BaseEnum):
    """Kinds of pre-processing a plan registers with ``add_preprocess``."""

    DATA_LOADER = 0
    PARAMS = 1


class TrainingPlans(_BaseEnum):
    """Kinds of training plans (only ``TorchTrainingPlan`` runs on this node)."""

    NoneTrainingPlan = "NoneTrainingPlan"
    TorchTrainingPlan = "TorchTrainingPlan"
    SkLearnTrainingPlan = "SkLearnTrainingPlan"


class DatasetTypes(_BaseEnum):
    """Kinds of datasets a Fed-BioMed node registers."""

    TABULAR = "csv"
    IMAGES = "images"
    DEFAULT = "default"
    MEDNIST = "mednist"
    MEDICAL_FOLDER = "medical-folder"
    CUSTOM = "custom"
    NONE = "none"


class ErrorNumbers(_BaseEnum):
    """The error numbers a training plan may quote in its own messages."""

    FB300 = "FB300: undetermined node error"
    FB303 = "FB303: TrainingPlan class does not contain expected methods"
    FB304 = "FB304: TrainingPlan method crashes"
    FB309 = "FB309: bad model params (.mpk)"
    FB310 = "FB310: bad data format"
    FB313 = "FB313: no dataset matching request"
    FB314 = "FB314: Node round error"
    FB315 = "FB315: Error while loading the data "
    FB320 = "FB320: bad model type"
    FB605 = "FB605: training plan error"
    FB610 = "FB610: Torch based tabular dataset creation error"
    FB611 = "FB611: Error while trying to evaluate using the specified metric"
    FB632 = "FB632: Data handling error"


class MetricTypes(_BaseEnum):
    """Validation metrics (``fedbiomed.common.metrics.MetricTypes``), mapped to fedpipe's ``Metric``."""

    ACCURACY = 0
    F1_SCORE = 1
    PRECISION = 2
    RECALL = 3
    MEAN_SQUARE_ERROR = 4
    MEAN_ABSOLUTE_ERROR = 5
    EXPLAINED_VARIANCE = 6

    @staticmethod
    def get_all_metrics() -> list[str]:
        """The metric names, as the researcher spells them in ``test_metric``."""
        return [metric.name for metric in MetricTypes]

    @staticmethod
    def get_metric_type_by_name(metric_name: str) -> "MetricTypes | None":
        """The member named ``metric_name`` (exact name), or None."""
        return MetricTypes.__members__.get(metric_name)


def metric_of(value: MetricTypes) -> Metric:
    """fedpipe's ``Metric`` for a Fed-BioMed ``MetricTypes`` member (the names are the same).

    >>> metric_of(MetricTypes.F1_SCORE)
    <Metric.F1_SCORE: 'F1_SCORE'>
    """
    return Metric[value.name]
