"""Per-image, per-channel colour standardisation of a batch of images."""

from __future__ import annotations

import torch


def standardize_channels(images: torch.Tensor, flip_polarity: bool = True) -> torch.Tensor:
    """Map every channel of every image to ``[0, 1]``, removing its gain and offset.

    The channel's mean is subtracted; with ``flip_polarity`` the channel is
    negated when its most extreme value lies below that mean, so that the
    minority structure (strokes on a background) is bright; then its darkest
    value is sent to 0 and its brightest to 1.  The result is the same for
    an image and for any per-channel gain (of either sign when
    ``flip_polarity``) and offset of it.  A constant channel becomes 0.

    Parameters
    ----------
    images : torch.Tensor of shape (N, C, H, W)
        Floating-point images; not modified.
    flip_polarity : bool, default=True
        Whether to make the minority structure of every channel bright.

    Returns
    -------
    torch.Tensor of shape (N, C, H, W)
        A new tensor of the same dtype, values in ``[0, 1]``.

    Examples
    --------
    >>> import torch
    >>> from dti_sklearn._torch.standardize import standardize_channels
    >>> x = torch.rand(2, 3, 5, 5)
    >>> bool(torch.allclose(standardize_channels(x), standardize_channels(0.3 - 2 * x), atol=1e-6))
    True
    """
    n, c = images.shape[:2]
    flat = images.reshape(n, c, -1)
    centred = flat - flat.mean(dim=2, keepdim=True)
    if flip_polarity:
        extreme = centred.gather(2, centred.abs().argmax(dim=2, keepdim=True))
        centred = torch.where(extreme < 0, -centred, centred)
    low = centred.amin(dim=2, keepdim=True)
    span = centred.amax(dim=2, keepdim=True) - low
    # A constant channel has span 0 and is all zeros once shifted: divide it by 1.
    out = (centred - low) / torch.where(span > 0, span, 1.0)
    return out.view_as(images)
