"""Fixtures for round tests over fakes: a FakeNode rooted in a temporary directory."""

from pathlib import Path

import pytest

from fedpipe.settings import NodeSettings
from fedpipe.testing import FakeNode


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    """A node of fakes with approval on and secure aggregation allowed but not forced."""
    return FakeNode(settings=NodeSettings(node_id="node-1", root=tmp_path / "node"))
