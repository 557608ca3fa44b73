"""Parametric transformations applied to the prototypes.

One module per family, as in kornia: :mod:`~dti_sklearn.transforms.identity`,
:mod:`~dti_sklearn.transforms.color`, :mod:`~dti_sklearn.transforms.spatial`
(affine, projective, thin-plate spline) and
:mod:`~dti_sklearn.transforms.morphological`.  Images are ``(N, C, H, W)``
tensors and parameters ``(N, P)`` tensors; zero parameters are the identity.

=====================  =========================  ======================
class                  names                      parameters per image
=====================  =========================  ======================
:class:`Identity`      ``"id"``, ``"identity"``    0
:class:`Color`         ``"col"``, ``"color"``      2 per channel
:class:`Affine`        ``"aff"``, ``"affine"``     6
:class:`Projective`    ``"proj"``, ``"projective"`` 8
:class:`ThinPlateSpline` ``"tps"``, ``"thin_plate_spline"`` 2 per control point
:class:`Morphological` ``"mor"``, ``"morphological"`` 1 + kernel_size**2
=====================  =========================  ======================
"""

from dti_sklearn.transforms._base import (
    Transformation,
    available_transformations,
    make_transformation,
    make_transformations,
)
from dti_sklearn.transforms.color import Color
from dti_sklearn.transforms.identity import Identity
from dti_sklearn.transforms.morphological import Morphological
from dti_sklearn.transforms.spatial import Affine, Projective, ThinPlateSpline

__all__ = [
    "Affine",
    "Color",
    "Identity",
    "Morphological",
    "Projective",
    "ThinPlateSpline",
    "Transformation",
    "available_transformations",
    "make_transformation",
    "make_transformations",
]
