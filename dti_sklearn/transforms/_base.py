"""The :class:`Transformation` base class and the registry of short names.

Shape convention (as in every module of this package): images are float
tensors of shape ``(N, C, H, W)`` and a transformation receives one parameter
vector per image, a tensor of shape ``(N, P)``.  Parameters equal to
:meth:`Transformation.identity_parameters` (zeros for every built-in family)
must leave the images unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

import torch
from sklearn.base import BaseEstimator, clone

_REGISTRY: dict[str, type[Transformation]] = {}


class Transformation(BaseEstimator):
    """Base class of the parametric transformations applied to prototypes.

    A transformation is a small configuration object (scikit-learn style:
    ``get_params``, ``set_params``, ``clone`` and a readable ``repr`` come from
    :class:`~sklearn.base.BaseEstimator`).  It holds no tensors: the neural
    network of the estimator predicts its parameters for every (sample,
    prototype) pair and calls :meth:`apply`.

    To write your own, subclass it and define three things:

    * :meth:`n_parameters` -- how many parameters one image needs;
    * :meth:`identity_parameters` -- the parameter vector that leaves an image
      unchanged (zeros by default; the network's heads start at exactly this
      value, so training starts from the identity);
    * :meth:`apply` -- the differentiable operation on a batch of images.

    Set the class attribute ``spatial = True`` when the transformation moves
    pixels (a warp): :class:`~dti_sklearn.DTIGaussianMixture` then applies it
    to the per-pixel deviation images too, and not only to the means.  Give the
    class a ``name`` (and optional ``aliases``) to make it selectable by a
    string in the ``transforms`` parameter of the estimators.

    Examples
    --------
    A translation-only transformation, two parameters per image:

    >>> import torch
    >>> import torch.nn.functional as F
    >>> from dti_sklearn.transforms import Transformation
    >>> class Translation(Transformation):
    ...     spatial = True
    ...
    ...     def n_parameters(self, n_channels):
    ...         return 2
    ...
    ...     def apply(self, images, params):
    ...         n = images.shape[0]
    ...         theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    ...         theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    ...         theta[:, :, 2] = params
    ...         grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    ...         return F.grid_sample(images, grid, padding_mode="border",
    ...                              align_corners=False)
    >>> images = torch.rand(4, 1, 8, 8)
    >>> t = Translation()
    >>> out = t.apply(images, t.identity_parameters(1).expand(4, -1))
    >>> bool(torch.allclose(out, images, atol=1e-6))
    True
    """

    #: Short name used to select the transformation by a string.
    name: ClassVar[str | None] = None
    #: Other accepted names.
    aliases: ClassVar[tuple[str, ...]] = ()
    #: Whether the transformation moves pixels (applied to deviations too).
    spatial: ClassVar[bool] = False
    #: Position in the automatic curriculum: lower ranks are switched on
    #: first (colour 0, affine 1, projective 2, morphological 3, thin-plate
    #: spline 4; your own come last unless you set it).
    curriculum_rank: ClassVar[float] = 10.0
    #: Whether the transformation changes the colours of whole channels (the
    #: per-channel gain and offset of :class:`~dti_sklearn.transforms.Color`).
    #: A sequence holding one is fitted colour-blind from the start: such a
    #: transformation is on from the first epoch under ``curriculum="auto"``,
    #: the starting prototypes are picked among colour-standardised images,
    #: and the predictor's encoder sees a colour-standardised copy of every
    #: image (beside the image itself only when the colour is predicted).
    photometric: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            for key in (cls.name, *cls.aliases):
                _REGISTRY[key] = cls

    def n_parameters(self, n_channels: int) -> int:
        """Number of parameters needed to transform one image.

        Parameters
        ----------
        n_channels : int
            Number of channels of the images.

        Returns
        -------
        int
        """
        raise NotImplementedError

    def identity_parameters(self, n_channels: int) -> torch.Tensor:
        """Parameter vector for which :meth:`apply` is the identity.

        Parameters
        ----------
        n_channels : int
            Number of channels of the images.

        Returns
        -------
        torch.Tensor of shape (P,)
            Zeros unless a subclass says otherwise.
        """
        return torch.zeros(self.n_parameters(n_channels))

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Transform a batch of images.

        Parameters
        ----------
        images : torch.Tensor of shape (N, C, H, W)
        params : torch.Tensor of shape (N, P)

        Returns
        -------
        torch.Tensor of shape (N, C, H, W)
        """
        raise NotImplementedError

    def for_image_size(self, height: int, width: int) -> Transformation:
        """The transformation to apply to images of this size.

        A transformation whose settings depend on the image size (given as
        ``"auto"``) returns a copy with them resolved; the estimators call
        this on their own copies at the start of ``fit``, so the fitted
        ``transforms_`` show the values used.  Returns ``self`` here.

        Parameters
        ----------
        height, width : int
            Image size in pixels.

        Returns
        -------
        Transformation
        """
        return self

    @property
    def solved(self) -> bool:
        """Whether the parameters are solved for against each sample (:meth:`solve`).

        False here: the network predicts them.
        """
        return False

    def solve(self, aligned: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Transform aligned prototypes with the parameters that fit each sample best.

        Only for transformations whose ``solved`` is true: the network then
        predicts no parameters for them and applies this after every
        predicted transformation.

        Parameters
        ----------
        aligned : torch.Tensor of shape (B, R, C, H, W)
            Prototypes aligned to the samples by the predicted transformations.
        images : torch.Tensor of shape (B, C, H, W)
            The samples.

        Returns
        -------
        torch.Tensor of shape (B, R, C, H, W)
        """
        raise NotImplementedError

    def value_scale(self, aligned: torch.Tensor, images: torch.Tensor) -> torch.Tensor | None:
        """How much :meth:`solve` scales each channel of each aligned prototype to its sample.

        The split-and-merge checks divide residuals by it, so that they
        compare samples in the prototypes' units rather than in each
        sample's own contrast and colours.  None here: the solved
        parameters do not rescale values.

        Parameters
        ----------
        aligned : torch.Tensor of shape (B, R, C, H, W)
            Prototypes aligned to the samples by the predicted transformations.
        images : torch.Tensor of shape (B, C, H, W)
            The samples.

        Returns
        -------
        torch.Tensor of shape (B, R, C), or None
        """
        return None

    def solve_with_deviations(
        self, aligned: torch.Tensor, deviations: torch.Tensor | None, images: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`solve`, and the aligned standard deviations that go with it.

        The Gaussian mixture aligns a standard deviation image with every
        mean.  This default leaves the deviations as they are; a
        transformation that rescales values overrides it (``Color``
        multiplies them by the absolute solved gain).

        Parameters
        ----------
        aligned : torch.Tensor of shape (B, R, C, H, W)
            Prototypes aligned to the samples by the predicted transformations.
        deviations : torch.Tensor of shape (B, R, C, H, W) or None
            Their aligned standard deviations; None for K-means.
        images : torch.Tensor of shape (B, C, H, W)
            The samples.

        Returns
        -------
        aligned, deviations : torch.Tensor of shape (B, R, C, H, W), and the same or None
        """
        return self.solve(aligned, images), deviations


def has_photometric(transformations: Iterable[Transformation]) -> bool:
    """Whether a sequence holds a photometric transformation (it is then fitted colour-blind).

    Parameters
    ----------
    transformations : iterable of Transformation

    Returns
    -------
    bool
    """
    return any(t.photometric for t in transformations)


def available_transformations() -> list[str]:
    """Names accepted in the ``transforms`` parameter of the estimators.

    Returns
    -------
    list of str
        Sorted short and long names of the registered transformations.
    """
    return sorted(_REGISTRY)


def make_transformation(spec: str | Transformation) -> Transformation:
    """Turn a name or a transformation object into a fresh object.

    Parameters
    ----------
    spec : str or Transformation
        A registered name (see :func:`available_transformations`) or an
        object, which is cloned so the caller's object is never modified.

    Returns
    -------
    Transformation

    Raises
    ------
    ValueError
        For an unknown name or an object of the wrong type; the message lists
        the valid names.
    """
    if isinstance(spec, Transformation):
        return clone(spec)
    if isinstance(spec, str):
        key = spec.lower()
        if key in _REGISTRY:
            return _REGISTRY[key]()
        raise ValueError(
            f"Unknown transformation {spec!r}. Valid names are: "
            f"{', '.join(available_transformations())}; or pass a "
            "dti_sklearn.transforms.Transformation object."
        )
    raise ValueError(
        "Each element of transforms must be a transformation name or a "
        f"dti_sklearn.transforms.Transformation object, got {type(spec).__name__}."
    )


def make_transformations(
    specs: str | Transformation | Iterable[str | Transformation] | None,
) -> list[Transformation]:
    """Resolve the ``transforms`` parameter of an estimator.

    Parameters
    ----------
    specs : str, Transformation, sequence of those, or None
        None or an empty sequence means the identity only (plain K-means).

    Returns
    -------
    list of Transformation
        Fresh objects, in the order they are applied to a prototype.
    """
    if specs is None:
        return [_REGISTRY["identity"]()]
    if isinstance(specs, (str, Transformation)):
        specs = [specs]
    if not isinstance(specs, (Sequence, Iterable)):
        raise ValueError(
            f"transforms must be a sequence of names or objects, got {specs!r}."
        )
    out = [make_transformation(s) for s in specs]
    return out or [_REGISTRY["identity"]()]
