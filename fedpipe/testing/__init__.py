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
from fedpipe.testing.lom import InMemoryIdentity, InMemoryLomKeys, InMemorySecaggRelay, lom_federation

__all__ = [
    "MASK_STATS_EXAMPLE",
    "FakeClock",
    "FakeCrypter",
    "FakeNode",
    "InMemoryApprovalRegistry",
    "InMemoryDatasetRegistry",
    "InMemoryFileExchange",
    "InMemoryIdentity",
    "InMemoryLomKeys",
    "InMemorySecaggKeys",
    "InMemorySecaggRelay",
    "InMemoryStateStore",
    "MaskStatsCrypter",
    "PlanFault",
    "RecordingMonitor",
    "RegistryPlanLoader",
    "ScriptedPlan",
    "fake_ports",
    "lom_federation",
]
