"""Public test kit: in-memory fakes of every port and hypothesis strategies, for users' own rounds."""

from fedpipe.testing.crypters import MASK_STATS_EXAMPLE, MaskStatsCrypter
from fedpipe.testing.fakes import (
    FakeClock,
    FakeCrypter,
    FakeNode,
    InMemoryApprovalRegistry,
    InMemoryDatasetRegistry,
    InMemoryFileExchange,
    InMemorySecaggKeys,
    InMemoryStateStore,
    PlanFault,
    RecordingMonitor,
    RegistryPlanLoader,
    ScriptedPlan,
    fake_ports,
)

__all__ = [
    "MASK_STATS_EXAMPLE",
    "FakeClock",
    "FakeCrypter",
    "FakeNode",
    "InMemoryApprovalRegistry",
    "InMemoryDatasetRegistry",
    "InMemoryFileExchange",
    "InMemorySecaggKeys",
    "InMemoryStateStore",
    "MaskStatsCrypter",
    "PlanFault",
    "RecordingMonitor",
    "RegistryPlanLoader",
    "ScriptedPlan",
    "fake_ports",
]
