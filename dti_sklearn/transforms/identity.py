"""The identity transformation (no parameters)."""

from __future__ import annotations

import torch

from dti_sklearn.transforms._base import Transformation


class Identity(Transformation):
    """Leave the prototype unchanged.

    With the identity alone, DTI K-means is mini-batch gradient K-means in
    pixel space.

    Examples
    --------
    >>> import torch
    >>> from dti_sklearn.transforms import Identity
    >>> x = torch.rand(2, 1, 4, 4)
    >>> bool(torch.equal(Identity().apply(x, torch.zeros(2, 0)), x))
    True
    """

    name = "identity"
    aliases = ("id",)
    curriculum_rank = 0

    def n_parameters(self, n_channels: int) -> int:
        """Return 0: the identity has no parameters."""
        return 0

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Return ``images`` unchanged."""
        return images
