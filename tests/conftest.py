"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests with one intra-op torch thread, then restore the setting.

    The tensors of the tests are tiny: one thread is faster, and far faster on a
    busy machine, where OpenMP threads wait for each other.
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
