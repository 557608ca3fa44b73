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


@pytest.fixture(scope="session", autouse=True)
def auto_device_is_the_cpu():
    """Resolve ``device="auto"`` to the CPU for the whole suite.

    Many tests assert that two fits agree bit for bit (same seed, other input
    layouts, pickling) or feed CPU tensors to a fitted network: that holds on
    the CPU only, since CUDA kernels such as ``grid_sample``'s backward add in
    a varying order.  On a machine with a GPU the CUDA path is exercised by the
    tests that ask for ``device="cuda"`` explicitly (``test_cuda.py``,
    ``test_persistence.py``), which skip where there is none.
    """
    from dti_sklearn import _base

    resolve = _base.resolve_device
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_base, "resolve_device",
                      lambda device: resolve("cpu" if device == "auto" else device))
        yield
