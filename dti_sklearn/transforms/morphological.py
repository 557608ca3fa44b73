"""Soft morphological transformation (dilation / erosion of strokes)."""

from __future__ import annotations

import torch
from sklearn.base import clone

from dti_sklearn.transforms._base import Transformation
from dti_sklearn.transforms._conv import per_image_conv2d

#: Smallest and largest window side chosen by ``kernel_size="auto"``.
AUTO_KERNEL_RANGE = (3, 7)


def auto_kernel_size(height: int, width: int) -> int:
    """The window side that ``Morphological(kernel_size="auto")`` uses on images of this size.

    An odd side of about a quarter of the smaller image side,
    ``2 * (min(height, width) // 8) + 1``, kept within 3 to 7: 7 (the
    paper's MNIST window) from 24 pixels up, 5 from 16 to 23, 3 below.  The
    window bounds how far a stroke can spread, so a fixed 7 x 7 window lets
    one prototype cover much more of a small image than of a large one: on
    MNIST resized to 16 x 16 it let DTIKMeans explain 1s and 7s with one
    prototype in one run of three (docs/benchmarks.md).

    Parameters
    ----------
    height, width : int
        Image size in pixels.

    Returns
    -------
    int

    Examples
    --------
    >>> from dti_sklearn.transforms.morphological import auto_kernel_size
    >>> auto_kernel_size(28, 28), auto_kernel_size(16, 16), auto_kernel_size(8, 8)
    (7, 5, 3)
    """
    low, high = AUTO_KERNEL_RANGE
    return min(max(2 * (min(height, width) // 8) + 1, low), high)


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
    kernel_size : int or "auto", default="auto"
        Odd side of the square window.  ``"auto"`` derives it from the image
        size when an estimator is fitted (:func:`auto_kernel_size`: 7, the
        paper's MNIST window, from 24 x 24 up; 5 from 16 x 16; 3 below);
        the fitted ``transforms_`` hold the number used.

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

    def __init__(self, kernel_size: int | str = "auto") -> None:
        self.kernel_size = kernel_size

    def for_image_size(self, height: int, width: int) -> Morphological:
        """A copy with ``kernel_size="auto"`` resolved by :func:`auto_kernel_size`."""
        if self.kernel_size != "auto":
            return self
        return clone(self).set_params(kernel_size=auto_kernel_size(height, width))

    def n_parameters(self, n_channels: int) -> int:
        """Return ``1 + kernel_size**2``."""
        k = self.kernel_size
        if k == "auto":
            raise ValueError(
                "kernel_size='auto' is set from the image size by for_image_size(height, "
                "width), which the estimators call in fit; pass an odd integer to use "
                "Morphological on its own."
            )
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0:
            raise ValueError(
                f"kernel_size must be a positive odd integer or 'auto', got {k!r}."
            )
        return 1 + k * k

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Apply the soft morphological operator to every image."""
        n, c, height, width = images.shape
        k = self.kernel_size
        if k == "auto":
            k = auto_kernel_size(height, width)
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
