"""Device-safe pickling of fitted estimators."""

from __future__ import annotations

import copy
import warnings

import torch


class DeviceSafePickleMixin:
    """Pickle fitted networks on the CPU and move them back on loading.

    A model fitted on a GPU machine therefore loads on a CPU-only one (with
    a warning), and a pickle never depends on the device it was made on.
    Nothing but the fitted parameters is stored: the training data is not.
    """

    def __getstate__(self) -> dict:
        """Pickle with every tensor on the CPU, so any machine can load it."""
        # A copy: on Python >= 3.11 the parent returns the instance's own
        # __dict__, and the CPU network below must not replace the live one.
        state = dict(super().__getstate__())
        network = state.get("network_")
        if network is not None and next(network.parameters()).device.type != "cpu":
            state["network_"] = copy.deepcopy(network).to("cpu")
        return state

    def __setstate__(self, state: dict) -> None:
        """Unpickle, moving the network back to its device when that exists."""
        super().__setstate__(state)
        device = state.get("device_")
        if device is None or "network_" not in state:
            return
        if device.type == "cuda" and not torch.cuda.is_available():
            warnings.warn(
                f"{type(self).__name__} was fitted on {device} but CUDA is not available; "
                "it now runs on the CPU.",
                UserWarning,
                stacklevel=2,
            )
            self.device_ = torch.device("cpu")
        self.network_ = self.network_.to(self.device_)
