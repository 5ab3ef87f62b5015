"""fedpipe: the node side of a federated-learning round, as a composable pipeline of typed steps.

>>> from fedpipe import standard_round, run_round, NodeSettings
"""

from fedpipe.args import Metric, TrainingArgs
from fedpipe.compose import NamedStep, Round, Step, insert_after, insert_before, replace, run_steps, without
from fedpipe.context import RoundContext
from fedpipe.errors import ErrorCode, RoundError
from fedpipe.plan import DatasetRecord, TrainingPlan
from fedpipe.ports import Ports
from fedpipe.reply import TrainReply, to_reply
from fedpipe.request import TrainRequest, parse_request
from fedpipe.rounds import standard_round, validation_round
from fedpipe.runner import execute_round, run_round
from fedpipe.settings import GpuPolicy, NodeSettings

__all__ = [
    "DatasetRecord",
    "ErrorCode",
    "GpuPolicy",
    "Metric",
    "NamedStep",
    "Node",
    "NodeSettings",
    "Ports",
    "Round",
    "RoundContext",
    "RoundError",
    "Step",
    "TrainReply",
    "TrainRequest",
    "TrainingArgs",
    "TrainingPlan",
    "execute_round",
    "insert_after",
    "insert_before",
    "parse_request",
    "replace",
    "run_round",
    "run_steps",
    "standard_round",
    "to_reply",
    "validation_round",
    "without",
]


def __getattr__(name: str) -> object:
    """``fedpipe.Node`` is loaded on first use: the composition root pulls in every adapter."""
    if name == "Node":
        from fedpipe.bootstrap import Node

        return Node
    raise AttributeError(f"module 'fedpipe' has no attribute {name!r}")
