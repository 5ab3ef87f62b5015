"""Fixtures of the simulation tests."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread in this process, as in each Ray actor (one CPU each), restored afterwards.

    Summation order inside torch's kernels follows the thread count: with the same count the
    engines give bit-identical models.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
