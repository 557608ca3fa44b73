"""Per-channel colour transformation (gain and offset)."""

from __future__ import annotations

import torch

from dti_sklearn.transforms._base import Transformation

#: Added to a channel's variance before dividing by it, so that a constant
#: aligned channel gets the gain 0 (the sample's mean) instead of a NaN.
_VARIANCE_EPS = 1e-12


class Color(Transformation):
    """Per-channel gain and offset: ``y_c = (1 + a_c) * x_c + b_c``.

    ``2 * C`` parameters per image (all gains, then all offsets).  Zero
    parameters give the identity.  In
    :class:`~dti_sklearn.DTIGaussianMixture` the solved gain also scales the
    aligned deviations (the predicted one leaves them as they are); even
    so the mixture with the colour clusters MNIST-color poorly (77.1-81.1
    ACC on the 10,000 images, seeds 0-3), so put
    :class:`~dti_sklearn.preprocessing.ImageStandardizer` in front of the
    mixture instead (96.6 +- 0.2 there; ``docs/benchmarks.md``).

    It is ``photometric``: when it is in the sequence, the estimators switch
    it on from the first epoch (under ``curriculum="auto"``; a first phase
    of plain K-means on coloured images would cluster the colours), pick the
    starting prototypes among colour-standardised images (see
    :class:`~dti_sklearn.preprocessing.ImageStandardizer`) and show the
    encoder a colour-standardised copy of every image, so that the spatial
    heads need not learn colour invariance (with ``closed_form=False`` the
    image itself too, for the colour heads).

    Parameters
    ----------
    closed_form : bool, default=True
        Solve for the gain and offset instead of predicting them: for every
        (sample, prototype) pair, the least-squares gain and offset of each
        channel of the prototype, once aligned by the other transformations,
        onto the sample's channel (:meth:`solve`).  They are then exact for
        any colours, need no head, and are applied after the other
        transformations, wherever the colour stands in the sequence.  The
        least squares are unweighted, in the mixture too (weighting them by
        its inverse aligned variances was measured and did not help).
        Being the best fit and not a prediction, they are not the identity
        at the start of training, which is the point: the fit is
        colour-blind from its first step.  False gives the paper's colour module, whose gain
        and offset the network predicts, starting from the identity.  On
        MNIST-color (DTIKMeans, seeds 0-2) the solved form reached 96.9 +- 0.2
        ACC, the predicted one 93.6 +- 1.0 (``docs/benchmarks.md``).

    Examples
    --------
    >>> import torch
    >>> from dti_sklearn.transforms import Color
    >>> x = torch.rand(2, 3, 4, 4)
    >>> bool(torch.equal(Color().apply(x, torch.zeros(2, 6)), x))
    True
    >>> prototypes = torch.rand(2, 1, 3, 4, 4)  # (B, R, C, H, W), aligned
    >>> recoloured = 0.5 - 2.0 * prototypes[:, 0]  # the samples
    >>> fitted = Color().solve(prototypes, recoloured)
    >>> bool(torch.allclose(fitted[:, 0], recoloured, atol=1e-5))
    True
    """

    name = "color"
    aliases = ("col", "colour")
    curriculum_rank = 0
    photometric = True

    def __init__(self, closed_form: bool = True) -> None:
        self.closed_form = closed_form

    def __setstate__(self, state: dict) -> None:
        # A Color pickled before ``closed_form`` existed was predicted.
        super().__setstate__({"closed_form": False, **state})

    @property
    def solved(self) -> bool:
        """Whether the gain and offset are solved for, not predicted (``closed_form``)."""
        return self.closed_form

    def n_parameters(self, n_channels: int) -> int:
        """Return ``2 * n_channels``."""
        return 2 * n_channels

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Scale and shift every channel of every image."""
        n, c = images.shape[:2]
        gain, offset = params.view(n, 2, c, 1, 1).unbind(1)
        return images * (1 + gain) + offset

    def solve(self, aligned: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Give every aligned prototype the gain and offset that fit its sample best.

        Per sample, prototype and channel, the least-squares gain and offset
        of the aligned prototype's channel onto the sample's channel (a
        one-variable linear regression over the pixels), applied.

        Parameters
        ----------
        aligned : torch.Tensor of shape (B, R, C, H, W)
            Prototypes aligned to the samples by the other transformations.
        images : torch.Tensor of shape (B, C, H, W)
            The samples.

        Returns
        -------
        torch.Tensor of shape (B, R, C, H, W)
            ``mean(x) + g * (p - mean(p))`` per channel, with
            ``g = cov(p, x) / var(p)`` (0 for a constant channel).
        """
        return self._fit(aligned, images)[0]

    def solve_with_deviations(
        self, aligned: torch.Tensor, deviations: torch.Tensor | None, images: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`solve`, with the deviations scaled by the absolute gain.

        A mixture component recoloured by ``y = o + g * x`` has the standard
        deviation ``|g| * sigma``: a faint copy of a prototype varies less
        than a contrasted one.  On 2,000 MNIST-color images (40 epochs,
        seeds 0 and 1) this raised ``DTIGaussianMixture`` with the colour in
        front of the warps from 50.2 and 51.4 to 64.8 and 59.5 ACC, and on
        grey digits left it where it was (94.0 against 93.7, seed 0).  On
        the 10,000 MNIST-color images (the defaults' 58 epochs, seeds 0-3)
        it did not repair the mixture: 77.1-81.1 ACC (mean 78.8) against
        62.7-95.5 (mean 77.7) before, every run with digits merged.

        Parameters
        ----------
        aligned : torch.Tensor of shape (B, R, C, H, W)
        deviations : torch.Tensor of shape (B, R, C, H, W) or None
        images : torch.Tensor of shape (B, C, H, W)

        Returns
        -------
        aligned, deviations : torch.Tensor of shape (B, R, C, H, W), and the same or None
        """
        solved, gain = self._fit(aligned, images)
        if deviations is None:
            return solved, None
        return solved, deviations * gain.abs().unsqueeze(-1)  # (B, R, C, 1, 1)

    def value_scale(self, aligned: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Per channel, the sample's contrast over the aligned prototype's, signed, (B, R, C).

        The ratio of the standard deviations, with the sign of the
        least-squares gain: the gain of :meth:`solve` when the prototype fits
        the sample exactly, and, unlike that gain, not shrunk towards zero
        when it fits badly.
        """
        x = images.unsqueeze(1).flatten(3)
        p = aligned.flatten(3)
        ratio = x.std(3) / p.std(3).clamp_min(_VARIANCE_EPS**0.5)
        # The gain's sign is the covariance's: no need to recolour the prototypes.
        covariance = ((p - p.mean(3, keepdim=True)) * (x - x.mean(3, keepdim=True))).mean(3)
        return torch.where(covariance < 0, -ratio, ratio)

    @staticmethod
    def _fit(
        aligned: torch.Tensor, images: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The recoloured prototypes and their ``(B, R, C, 1)`` least-squares gains."""
        x = images.unsqueeze(1).flatten(3)
        p = aligned.flatten(3)
        p_centred = p - p.mean(3, keepdim=True)
        x_centred = x - x.mean(3, keepdim=True)
        covariance = (p_centred * x_centred).mean(3, keepdim=True)
        variance = p_centred.pow(2).mean(3, keepdim=True)
        gain = covariance / (variance + _VARIANCE_EPS)
        return (x.mean(3, keepdim=True) + gain * p_centred).view_as(aligned), gain
