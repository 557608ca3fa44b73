"""Figures of prototypes and aligned prototypes (matplotlib is optional).

The functions build :class:`matplotlib.figure.Figure` objects directly, with an
Agg canvas, so they never touch pyplot's global state or the session's
backend. Display a figure in a notebook by leaving it as the cell's value, or
write it with :func:`save_figure`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_aligned_prototypes", "plot_prototypes", "save_figure"]

_MISSING = "matplotlib is required for plotting; install dti_sklearn[plot]"
_CELL_INCHES = 1.1
_HIGHLIGHT = "tab:red"


def _new_figure(width: float, height: float) -> Figure:
    """Create a pyplot-free Figure with an Agg canvas, or raise ImportError."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _check_images(images: ArrayLike, name: str, lead_dims: int) -> np.ndarray:
    """Validate ``lead_dims`` leading axes then (H, W) or (H, W, C) with C in {1, 3, 4}.

    ``uint8`` images are scaled to ``[0, 1]``, as the estimators scale them.
    """
    arr = np.asarray(images)
    arr = arr / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float64)
    n_img = arr.ndim - lead_dims
    if n_img not in (2, 3) or (n_img == 3 and arr.shape[-1] not in (1, 3, 4)):
        raise ValueError(
            f"{name} must have {lead_dims} leading axes followed by (H, W) or (H, W, C) "
            f"with C in (1, 3, 4); got shape {arr.shape}."
        )
    if n_img == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr


def _check_value_range(value_range: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(v) for v in value_range)
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise ValueError(
            f"value_range must be (low, high) with finite low < high, got {value_range!r}."
        )
    return low, high


def _show(ax: Axes, image: np.ndarray, value_range: tuple[float, float]) -> None:
    """Draw one image on ``ax``, ``value_range`` mapped to black..white, without ticks."""
    low, high = value_range
    image = np.clip((image - low) / (high - low), 0.0, 1.0)
    if image.ndim == 2:
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _frame(ax: Axes, color: str | None, width: float = 3.0) -> None:
    """Hide the frame of ``ax``, or draw it ``width`` points wide in ``color``."""
    for spine in ax.spines.values():
        spine.set_visible(color is not None)
        if color is not None:
            spine.set_edgecolor(color)
            spine.set_linewidth(width)


def plot_prototypes(
    prototypes: ArrayLike,
    ncols: int | None = None,
    fig: Figure | None = None,
    title: str | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> Figure:
    """Draw cluster prototypes side by side.

    Parameters
    ----------
    prototypes : array-like of shape (K, H, W) or (K, H, W, C)
        Prototype images (``uint8`` ones are scaled to [0, 1]).  ``C`` is 1
        (grey), 3 (RGB) or 4 (RGBA).
    ncols : int or None, default=None
        Number of columns of the grid; None means ``min(K, 10)``.
    fig : matplotlib.figure.Figure or None, default=None
        Figure to draw into (its existing content is cleared). None creates a
        new figure sized to the grid.
    title : str or None, default=None
        Figure title.
    value_range : (float, float), default=(0.0, 1.0)
        Values drawn black and white; values outside are clipped.  For
        images in other units, e.g. ``(0, 255)``, or the fitted range
        ``(model.data_min_, model.data_min_ + model.data_range_)``.

    Returns
    -------
    fig : matplotlib.figure.Figure
        The figure, holding exactly K axes, titled with the cluster index.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    ValueError
        If the array shape or ``ncols`` is invalid.
    """
    protos = _check_images(prototypes, "prototypes", lead_dims=1)
    value_range = _check_value_range(value_range)
    n_protos = protos.shape[0]
    if n_protos == 0:
        raise ValueError("prototypes is empty.")
    if ncols is None:
        ncols = min(n_protos, 10)
    if int(ncols) < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}.")
    ncols = min(int(ncols), n_protos)
    nrows = math.ceil(n_protos / ncols)
    if fig is None:
        extra = 0.4 if title else 0.0
        fig = _new_figure(ncols * _CELL_INCHES, nrows * (_CELL_INCHES + 0.2) + extra)
    else:
        fig.clear()
    for k in range(n_protos):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        _show(ax, protos[k], value_range)
        _frame(ax, None)
        ax.set_title(str(k), fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_aligned_prototypes(
    images: ArrayLike,
    aligned: ArrayLike,
    labels: ArrayLike | None = None,
    n_samples: int = 8,
    title: str | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> Figure:
    """Draw samples next to every prototype aligned to them.

    One row per sample: the first column is the sample, the next K columns the
    K prototypes transformed to fit it (as returned by an estimator's
    ``get_aligned_prototypes``). When ``labels`` are given, the prototype of
    the sample's assigned cluster gets a coloured frame.

    Parameters
    ----------
    images : array-like of shape (n, H, W) or (n, H, W, C)
        Samples (``uint8`` ones are scaled to [0, 1]).
    aligned : array-like of shape (n, K, H, W) or (n, K, H, W, C)
        Aligned prototypes, one set of K per sample, same image shape as
        ``images``.
    labels : array-like of shape (n,) or None, default=None
        Assigned cluster of each sample, in ``0 .. K-1``.
    n_samples : int, default=8
        Number of rows: the first ``min(n_samples, n)`` samples are drawn.
    title : str or None, default=None
        Figure title.
    value_range : (float, float), default=(0.0, 1.0)
        Values drawn black and white, for the samples and the prototypes
        alike (see :func:`plot_prototypes`).

    Returns
    -------
    fig : matplotlib.figure.Figure
        The figure, holding ``rows * (K + 1)`` axes in row-major order.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    ValueError
        If shapes disagree or a label is out of range.
    """
    imgs = _check_images(images, "images", lead_dims=1)
    algn = _check_images(aligned, "aligned", lead_dims=2)
    value_range = _check_value_range(value_range)
    if algn.shape[0] != imgs.shape[0] or algn.shape[2:] != imgs.shape[1:]:
        raise ValueError(
            f"aligned of shape {np.shape(aligned)} does not match images of shape "
            f"{np.shape(images)}; expected (n, K) followed by the image shape."
        )
    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
    n_rows = min(int(n_samples), imgs.shape[0])
    n_protos = algn.shape[1]
    if n_rows == 0 or n_protos == 0:
        raise ValueError(
            "images and aligned must hold at least one sample and one prototype."
        )
    lab = None
    if labels is not None:
        lab = np.asarray(labels).reshape(-1)
        if lab.shape[0] != imgs.shape[0]:
            raise ValueError(
                f"labels has {lab.shape[0]} entries for {imgs.shape[0]} images."
            )
        lab = lab[:n_rows].astype(np.int64)
        if lab.min() < 0 or lab.max() >= n_protos:
            raise ValueError(f"labels must lie in [0, {n_protos - 1}].")
    ncols = n_protos + 1
    extra = 0.4 if title else 0.0
    fig = _new_figure(ncols * _CELL_INCHES, n_rows * _CELL_INCHES + 0.3 + extra)
    for i in range(n_rows):
        for j in range(ncols):
            ax = fig.add_subplot(n_rows, ncols, i * ncols + j + 1)
            if j == 0:
                _show(ax, imgs[i], value_range)
                _frame(ax, "black", width=1.0)
            else:
                _show(ax, algn[i, j - 1], value_range)
                _frame(ax, _HIGHLIGHT if lab is not None and lab[i] == j - 1 else None)
            if i == 0:
                ax.set_title("sample" if j == 0 else str(j - 1), fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: float = 100) -> Path:
    """Write a figure to a file whose format follows the extension (PNG, PDF, SVG...).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure, for example from :func:`plot_prototypes`.
    path : str or path-like
        Destination file; its folder must exist.
    dpi : float, default=100
        Resolution for raster formats.

    Returns
    -------
    path : pathlib.Path
        The path written.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    path = Path(path)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
