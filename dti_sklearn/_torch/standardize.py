"""Per-image colour standardisation of images: per channel, or on their principal colour axis."""

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


def principal_channel(images: torch.Tensor) -> torch.Tensor:
    """Project every image's pixel colours on their own principal axis.

    Per image, the ``C x C`` covariance of its pixels' colours gives the
    direction in colour space along which they vary most; each pixel's
    centred colour is projected on it, so the image becomes one channel.
    On an image of two colours (a foreground on a background, blended at
    the edges) every pixel's colour lies on the segment between them, so
    the projection is the blend, the same for any per-channel gain and
    offset up to its sign and scale (which :func:`standardize_channels`
    then removes); and unlike any single channel, it holds the whole colour
    difference, so channels of little contrast add little noise.  The axis
    is oriented to increase with the sum of the channels.

    Parameters
    ----------
    images : torch.Tensor of shape (N, C, H, W)
        Floating-point images; not modified.

    Returns
    -------
    torch.Tensor of shape (N, 1, H, W)
        A new tensor of the same dtype, each image's mean colour at 0 (the
        images themselves, copied, when C = 1).

    Examples
    --------
    >>> import torch
    >>> from dti_sklearn._torch.standardize import principal_channel
    >>> blend = torch.rand(2, 1, 5, 5)
    >>> two_colours = torch.tensor([0.9, 0.2, 0.4]).view(1, 3, 1, 1) * blend + 0.1
    >>> projected = principal_channel(two_colours)
    >>> projected.shape
    torch.Size([2, 1, 5, 5])
    >>> centred = blend - blend.mean(dim=(2, 3), keepdim=True)
    >>> bool(torch.allclose(projected, centred * torch.linalg.vector_norm(
    ...     torch.tensor([0.9, 0.2, 0.4])), atol=1e-5))
    True
    """
    n, c, height, width = images.shape
    if c == 1:
        return images - images.mean(dim=(2, 3), keepdim=True)
    centred = images.reshape(n, c, -1)
    centred = centred - centred.mean(dim=2, keepdim=True)
    # The C x C eigen-problems in float64 (a few values per image); the
    # products in the images' dtype, without a float64 copy of the images.
    covariance = (centred @ centred.transpose(1, 2)).double()
    axis = torch.linalg.eigh(covariance).eigenvectors[:, :, -1]  # largest eigenvalue
    axis = torch.where(axis.sum(dim=1, keepdim=True) < 0, -axis, axis)
    projected = torch.einsum("nc,ncp->np", axis.to(images.dtype), centred)
    return projected.view(n, 1, height, width)
