"""Soft morphological transformation (dilation / erosion of strokes)."""

from __future__ import annotations

import torch

from dti_sklearn.transforms._base import Transformation
from dti_sklearn.transforms._conv import per_image_conv2d


class Morphological(Transformation):
    """Soft dilation or erosion with a learned structuring element.

    For each pixel ``p``::

        y(p) = sum_q x(q) w(q - p) exp(a x(q)) / sum_q w(q - p) exp(a x(q))

    over a ``kernel_size x kernel_size`` window.  ``a > 0`` behaves like a
    dilation (bright strokes thicken), ``a < 0`` like an erosion.  The
    ``1 + kernel_size**2`` parameters are ``a`` followed by the kernel
    offsets ``theta``, and the weights are ``w = max(delta + theta, 0)`` where
    ``delta`` is 1 at the centre and 0 elsewhere.  Zero parameters therefore
    give a Dirac kernel and ``a = 0``: exactly the identity (the paper's
    sigmoid kernel starts as a blur instead).  The clamp passes gradients at
    zero, so every weight can grow from the start.

    The window sums are one grouped convolution over the stacked numerator and
    denominator, so no shifted copies of the images are materialised.

    Parameters
    ----------
    kernel_size : int, default=7
        Odd side of the square window (the paper uses 7 for MNIST).

    Examples
    --------
    >>> import torch
    >>> from dti_sklearn.transforms import Morphological
    >>> x = torch.rand(2, 1, 6, 6)
    >>> mor = Morphological(kernel_size=3)
    >>> bool(torch.equal(mor.apply(x, torch.zeros(2, 10)), x))
    True
    """

    name = "morphological"
    aliases = ("mor", "morpho", "morphology")
    curriculum_rank = 3

    def __init__(self, kernel_size: int = 7) -> None:
        self.kernel_size = kernel_size

    def n_parameters(self, n_channels: int) -> int:
        """Return ``1 + kernel_size**2``."""
        k = self.kernel_size
        if not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {k!r}.")
        return 1 + k * k

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Apply the soft morphological operator to every image."""
        n, c, height, width = images.shape
        k = self.kernel_size
        sharpness = params[:, :1].view(n, 1, 1, 1)
        # The centre tap as a comparison, not an indexed write: writing a
        # Python number into a CUDA tensor copies it from the host and waits.
        centre = torch.arange(k * k, device=params.device) == k * k // 2
        delta = centre.to(params.dtype)
        weights = (params[:, 1:] + delta).clamp(min=0).view(n, 1, 1, k, k)

        logits = sharpness * images
        # A constant shift per (image, channel) cancels in the ratio and keeps
        # the exponentials in range.
        logits = logits - logits.amax(dim=(2, 3), keepdim=True).detach()
        expo = logits.exp()
        stacked = torch.stack([images * expo, expo], dim=1)  # (N, 2, C, H, W)
        kernels = weights.expand(n, 2, c, k, k).reshape(n * 2 * c, k, k)
        sums = per_image_conv2d(
            stacked.reshape(n * 2 * c, height, width), kernels,
        ).view(n, 2, c, height, width)
        numerator, denominator = sums.unbind(1)
        return numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)
