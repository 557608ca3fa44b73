"""Image array layouts in and out of the estimators.

Accepted inputs (``n`` samples):

* ``(n, H, W)``: grayscale images;
* ``(n, H, W, C)``: channels-last images;
* ``(n, d)`` with ``image_shape=(H, W)`` or ``(H, W, C)``: flattened images;
* ``(n, d)`` without ``image_shape``: ``n`` signals read as ``1 x d``
  grayscale images, so tabular data still runs (and scikit-learn's checks).

``uint8`` arrays are scaled to ``[0, 1]``; everything else is used as given.
Internally every batch is a float32 ``(n, C, H, W)`` array, always a fresh
copy so that the caller's data is never modified.

:class:`IntensityScale` then maps the training images' range onto ``[0, 1]``
for the network, and maps prototypes back: the learning rate, the
morphological exponent and the mixture's variance floor all assume values of
about that size, so images in ``[0, 255]`` or ``[-1, 1]`` are clustered as
the same images in ``[0, 1]`` would be.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import sklearn
from sklearn.utils.validation import check_array, validate_data


@dataclass(frozen=True)
class ImageLayout:
    """How the estimator reads its input and writes images back.

    Attributes
    ----------
    image_shape : tuple of int
        ``(H, W)`` for grayscale or ``(H, W, C)`` for channels-last images.
    flat : bool
        Whether the input rows were flattened images (2-D input).
    """

    image_shape: tuple[int, ...]
    flat: bool

    @property
    def n_channels(self) -> int:
        """Number of channels C."""
        return self.image_shape[2] if len(self.image_shape) == 3 else 1

    @property
    def n_features(self) -> int:
        """Number of values per image, ``H * W * C``."""
        return int(np.prod(self.image_shape))

    def to_user(self, images: np.ndarray) -> np.ndarray:
        """Turn ``(..., C, H, W)`` arrays back into ``(..., *image_shape)``."""
        moved = np.moveaxis(images, -3, -1)
        return moved.reshape(*images.shape[:-3], *self.image_shape)


@dataclass(frozen=True)
class IntensityScale:
    """The affine map from the caller's pixel values to the network's.

    The network sees ``(x - minimum) / span``, so the training images span
    ``[0, 1]``.  Images that already span exactly ``[0, 1]`` (``uint8``
    images using the full range, most scaled data sets) pass unchanged, to
    the last bit.

    Attributes
    ----------
    minimum : float
        Smallest value of the training images.
    span : float
        Their largest value minus their smallest, or 1 for constant images.
    """

    minimum: float
    span: float

    @classmethod
    def of(cls, images: np.ndarray) -> IntensityScale:
        """The scale that maps ``images`` onto ``[0, 1]``."""
        low, high = float(images.min()), float(images.max())
        span = high - low
        if not (np.isfinite(span) and span > 0):
            span = 1.0
        return cls(low, span)

    @property
    def is_identity(self) -> bool:
        """Whether the map leaves values unchanged."""
        return self.minimum == 0.0 and self.span == 1.0

    def to_model(self, images: np.ndarray) -> np.ndarray:
        """Map a fresh float32 array in place to the network's values and return it."""
        if not self.is_identity:
            images -= np.float32(self.minimum)
            images /= np.float32(self.span)
        return images

    def to_user(self, values: np.ndarray) -> np.ndarray:
        """Map the network's pixel values (e.g. prototypes) back to the caller's."""
        if self.is_identity:
            return values
        return values * self.span + self.minimum


def _check_image_shape(image_shape: object) -> tuple[int, ...]:
    shape = tuple(image_shape)  # type: ignore[arg-type]
    if len(shape) not in (2, 3) or not all(
        isinstance(s, (int, np.integer)) and s >= 1 for s in shape
    ):
        raise ValueError(
            f"image_shape must be (H, W) or (H, W, C) with positive integers, got {image_shape!r}."
        )
    return tuple(int(s) for s in shape)


#: Folders whose frames a warning skips to reach the user's code: this
#: package's and scikit-learn's (its ``_fit_context`` wraps ``fit``).
_LIBRARY_DIRS = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep for path in (__file__, sklearn.__file__)
)


def _warn_at_caller(message: str) -> None:
    """Issue a ``UserWarning`` attributed to the first frame outside the libraries.

    The call depth from the user's ``fit`` to here differs between entry
    points (``fit``, ``fit_predict``, the thread-limiting wrapper,
    scikit-learn's parameter validation), so a fixed ``stacklevel`` would
    point into a library.
    """
    frame, level = sys._getframe(1), 2  # stacklevel 2: this function's caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        _LIBRARY_DIRS
    ):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def _warn_if_channels_first(shape: tuple[int, ...]) -> None:
    """Warn when 4-D images look like PyTorch's ``(n, C, H, W)`` instead of ``(n, H, W, C)``."""
    if len(shape) == 3 and shape[0] <= 4 < shape[2]:
        _warn_at_caller(
            f"X has images of shape {shape}, read as {shape[0]} x {shape[1]} pixels with "
            f"{shape[2]} channels (channels last). If they are {shape[2]} x ... images with "
            f"{shape[0]} channels (channels first, PyTorch's layout), pass "
            "np.moveaxis(X, 1, -1)."
        )


#: Smallest side of the square images that a 2-D input without ``image_shape``
#: is checked for: rows of ``s * s`` (grey) or ``3 * s * s`` (RGB) values,
#: ``s`` at least this, get a warning that they are read as ``1 x d`` signals.
#: scikit-learn's ``load_digits().data`` (64 values, 8 x 8) is the case in point.
FLAT_SQUARE_MIN_SIDE = 8


def _warn_if_flattened_square(n_features: int) -> None:
    """Warn when 2-D rows without ``image_shape`` look like flattened square images."""
    for channels, shape in ((1, "({s}, {s})"), (3, "({s}, {s}, 3)")):
        side = math.isqrt(n_features // channels)
        if n_features == channels * side * side and side >= FLAT_SQUARE_MIN_SIDE:
            hint = shape.format(s=side)
            _warn_at_caller(
                f"X is 2-D with {n_features} values per row and no image_shape, so every "
                f"row is read as a 1 x {n_features} signal. If the rows are flattened "
                f"images, pass image_shape={hint}."
            )
            return


def _to_float_nchw(array: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    with np.errstate(over="ignore"):  # values beyond float32 are refused below
        out = np.array(array, dtype=np.float32, copy=True)
    if array.dtype == np.uint8:
        out /= 255
    elif not np.isfinite(out).all():
        raise ValueError(
            "X has values too large for float32 (above about 3.4e38 in magnitude); "
            "scale the images first."
        )
    out = out.reshape(out.shape[0], *image_shape)
    if len(image_shape) == 2:
        out = out[:, None]
    else:
        out = np.moveaxis(out, -1, 1)
    return np.ascontiguousarray(out)


def validate_images(
    estimator: object,
    X: object,
    *,
    image_shape: tuple[int, ...] | None,
    reset: bool,
) -> np.ndarray:
    """Validate ``X`` and return a fresh float32 ``(n, C, H, W)`` array.

    On ``reset=True`` (fit) the estimator's ``n_features_in_``,
    ``image_shape_`` and ``_layout`` are set; otherwise the images must match
    what the estimator was fitted on.

    Parameters
    ----------
    estimator : estimator
        The estimator being fitted or used.
    X : array-like
        The input images in one of the supported layouts.
    image_shape : tuple of int or None
        The estimator's ``image_shape`` parameter, used for 2-D input.
    reset : bool
        Whether this call is a fit.

    Returns
    -------
    ndarray of shape (n, C, H, W), float32

    Raises
    ------
    ValueError
        For NaN or infinite values, a wrong number of dimensions, rows that do
        not match ``image_shape``, or images whose shape differs from fit.
    """
    ndim = getattr(X, "ndim", None)
    if ndim is None:
        ndim = np.asarray(X).ndim
    if ndim <= 2:
        array = validate_data(estimator, X, reset=reset, dtype=("numeric"))
        if array.dtype.kind not in "fiu":
            array = array.astype(np.float64)
        if reset:
            if image_shape is None:
                _warn_if_flattened_square(array.shape[1])
                shape: tuple[int, ...] = (1, array.shape[1])
            else:
                shape = _check_image_shape(image_shape)
                if int(np.prod(shape)) != array.shape[1]:
                    raise ValueError(
                        f"X has {array.shape[1]} features per row but image_shape="
                        f"{shape} needs {int(np.prod(shape))}."
                    )
            estimator._layout = ImageLayout(shape, flat=True)  # type: ignore[attr-defined]
        layout = estimator._layout  # type: ignore[attr-defined]
        if not layout.flat:
            raise ValueError(
                f"X is 2-D but {type(estimator).__name__} was fitted on images of shape "
                f"{layout.image_shape}; pass images in the same layout."
            )
    else:
        array = check_array(X, allow_nd=True, dtype="numeric", ensure_min_features=1)
        if array.ndim not in (3, 4):
            raise ValueError(
                f"X must be 2-D (n, d), 3-D (n, H, W) or 4-D (n, H, W, C); got {array.ndim} "
                f"dimensions with shape {array.shape}."
            )
        shape = tuple(int(s) for s in array.shape[1:])
        if reset:
            _warn_if_channels_first(shape)
            estimator._layout = ImageLayout(shape, flat=False)  # type: ignore[attr-defined]
            estimator.n_features_in_ = int(np.prod(shape))  # type: ignore[attr-defined]
        layout = estimator._layout  # type: ignore[attr-defined]
        if layout.flat or layout.image_shape != shape:
            expected = (
                f"rows of {layout.n_features} features" if layout.flat
                else f"images of shape {layout.image_shape}"
            )
            raise ValueError(
                f"X has images of shape {shape}, but {type(estimator).__name__} was "
                f"fitted on {expected}."
            )
    if reset:
        estimator.image_shape_ = estimator._layout.image_shape  # type: ignore[attr-defined]
    return _to_float_nchw(array, estimator._layout.image_shape)  # type: ignore[attr-defined]
