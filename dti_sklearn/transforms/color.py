"""Per-channel colour transformation (gain and offset)."""

from __future__ import annotations

import torch

from dti_sklearn.transforms._base import Transformation


class Color(Transformation):
    """Per-channel gain and offset: ``y_c = (1 + a_c) * x_c + b_c``.

    ``2 * C`` parameters per image (all gains, then all offsets).  Zero
    parameters give the identity.  Applied to the means only in
    :class:`~dti_sklearn.DTIGaussianMixture`.

    It is ``photometric``: when it is in the sequence, the estimators switch
    it on from the first epoch (under ``curriculum="auto"``; a first phase
    of plain K-means on coloured images would cluster the colours), pick the
    starting prototypes among colour-standardised images (see
    :class:`~dti_sklearn.preprocessing.ImageStandardizer`) and show the
    encoder a colour-standardised copy of every image beside the image
    itself, so that the spatial heads need not learn colour invariance.

    Examples
    --------
    >>> import torch
    >>> from dti_sklearn.transforms import Color
    >>> x = torch.rand(2, 3, 4, 4)
    >>> bool(torch.equal(Color().apply(x, torch.zeros(2, 6)), x))
    True
    """

    name = "color"
    aliases = ("col", "colour")
    curriculum_rank = 0
    photometric = True

    def n_parameters(self, n_channels: int) -> int:
        """Return ``2 * n_channels``."""
        return 2 * n_channels

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Scale and shift every channel of every image."""
        n, c = images.shape[:2]
        gain, offset = params.view(n, 2, c, 1, 1).unbind(1)
        return images * (1 + gain) + offset
