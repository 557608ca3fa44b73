"""Spatial transformations: affine, projective and thin-plate spline warps.

Every warp builds a sampling grid in normalised coordinates (``[-1, 1]``,
pixel centres, ``align_corners=False``) and samples the images bilinearly with
:func:`torch.nn.functional.grid_sample`.  Zero parameters give the regular
grid of pixel centres, hence the identity up to float rounding.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from dti_sklearn.transforms._base import Transformation

_PADDING_MODES = ("border", "zeros", "reflection")


@lru_cache(maxsize=32)
def _pixel_centres(height: int, width: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """Normalised ``(x, y)`` coordinates of the pixel centres, shape (H*W, 2)."""
    ys = (2 * torch.arange(height, dtype=torch.float64) + 1) / height - 1
    xs = (2 * torch.arange(width, dtype=torch.float64) + 1) / width - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    return grid.to(device=device, dtype=dtype)


class _Warp(Transformation):
    """Shared machinery of the warps: a grid, then bilinear sampling."""

    spatial = True

    def __init__(self, padding_mode: str = "border") -> None:
        self.padding_mode = padding_mode

    def _check_padding(self) -> None:
        if self.padding_mode not in _PADDING_MODES:
            raise ValueError(
                f"padding_mode must be one of {_PADDING_MODES}, got {self.padding_mode!r}."
            )

    def grid(self, params: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Return the sampling grid, shape (N, H*W, 2), in normalised coordinates."""
        raise NotImplementedError

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Warp ``images`` with the grid built from ``params``."""
        self._check_padding()
        n, _, height, width = images.shape
        grid = self.grid(params, height, width).view(n, height, width, 2)
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode=self.padding_mode,
            align_corners=False,
        )


class Affine(_Warp):
    """Affine warp: a 2 x 3 matrix ``A + [I 0]``, 6 parameters per image.

    Parameters
    ----------
    padding_mode : {"border", "zeros", "reflection"}, default="border"
        How pixels sampled outside the image are filled.  ``"zeros"`` suits
        data whose background is 0 at the borders.

    Examples
    --------
    >>> import torch
    >>> from dti_sklearn.transforms import Affine
    >>> x = torch.rand(2, 1, 5, 5)
    >>> bool(torch.allclose(Affine().apply(x, torch.zeros(2, 6)), x, atol=1e-6))
    True
    """

    name = "affine"
    aliases = ("aff",)

    def n_parameters(self, n_channels: int) -> int:
        """Return 6."""
        return 6

    def grid(self, params: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Apply ``A + [I 0]`` to the pixel centres."""
        base = _pixel_centres(height, width, str(params.device), params.dtype)
        matrix = params.view(-1, 2, 3)
        linear = matrix[:, :, :2] + torch.eye(2, dtype=params.dtype, device=params.device)
        return base @ linear.transpose(1, 2) + matrix[:, None, :, 2]


class Projective(_Warp):
    """Projective warp (homography ``H + I``), 8 free parameters per image.

    The bottom-right entry of the 3 x 3 matrix stays 1, which removes the
    scale ambiguity of a homography.

    Parameters
    ----------
    padding_mode : {"border", "zeros", "reflection"}, default="border"
        How pixels sampled outside the image are filled.

    Examples
    --------
    >>> import torch
    >>> from dti_sklearn.transforms import Projective
    >>> x = torch.rand(2, 1, 5, 5)
    >>> bool(torch.allclose(Projective().apply(x, torch.zeros(2, 8)), x, atol=1e-6))
    True
    """

    name = "projective"
    aliases = ("proj", "homography")

    def n_parameters(self, n_channels: int) -> int:
        """Return 8."""
        return 8

    def grid(self, params: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Apply the homography to the pixel centres and divide by depth."""
        n = params.shape[0]
        base = _pixel_centres(height, width, str(params.device), params.dtype)
        full = torch.cat([params, params.new_zeros(n, 1)], dim=1).view(n, 3, 3)
        full = full + torch.eye(3, dtype=params.dtype, device=params.device)
        homog = torch.cat([base, base.new_ones(base.shape[0], 1)], dim=1)
        mapped = homog @ full.transpose(1, 2)
        depth = mapped[..., 2:]
        eps = 1e-6
        depth = torch.where(depth.abs() < eps, torch.full_like(depth, eps), depth)
        return mapped[..., :2] / depth


@lru_cache(maxsize=32)
def _tps_matrix(
    height: int, width: int, grid_size: int, device: str, dtype: torch.dtype,
) -> torch.Tensor:
    """Linear map from control-point displacements to dense displacements.

    Thin-plate spline interpolation is linear in the displacements of the
    control points, so it reduces to one precomputed (H*W, g*g) matrix.
    """
    lin = torch.linspace(-1, 1, grid_size, dtype=torch.float64)
    cy, cx = torch.meshgrid(lin, lin, indexing="ij")
    ctrl = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)
    n_ctrl = ctrl.shape[0]

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sq = torch.cdist(a, b).pow(2)
        return torch.where(sq > 0, 0.5 * sq * torch.log(sq.clamp_min(1e-300)), sq.new_zeros(()))

    affine_ctrl = torch.cat([torch.ones(n_ctrl, 1, dtype=torch.float64), ctrl], dim=1)
    system = torch.zeros(n_ctrl + 3, n_ctrl + 3, dtype=torch.float64)
    system[:n_ctrl, :n_ctrl] = kernel(ctrl, ctrl)
    system[:n_ctrl, n_ctrl:] = affine_ctrl
    system[n_ctrl:, :n_ctrl] = affine_ctrl.T
    inverse = torch.linalg.inv(system)[:, :n_ctrl]
    points = _pixel_centres(height, width, "cpu", torch.float64)
    design = torch.cat(
        [kernel(points, ctrl), torch.ones(points.shape[0], 1, dtype=torch.float64), points],
        dim=1,
    )
    return (design @ inverse).to(device=device, dtype=dtype)


class ThinPlateSpline(_Warp):
    """Thin-plate spline warp driven by a regular grid of control points.

    ``2 * grid_size**2`` parameters per image: the ``(x, y)`` displacements
    of the control points in normalised coordinates.  The dense sampling grid
    is their thin-plate spline interpolation, computed as one matrix product
    with a precomputed interpolation matrix.

    Parameters
    ----------
    grid_size : int, default=4
        Number of control points along each side (the paper uses 4).
    padding_mode : {"border", "zeros", "reflection"}, default="border"
        How pixels sampled outside the image are filled.

    Examples
    --------
    >>> import torch
    >>> from dti_sklearn.transforms import ThinPlateSpline
    >>> x = torch.rand(2, 1, 6, 6)
    >>> tps = ThinPlateSpline(grid_size=3)
    >>> bool(torch.allclose(tps.apply(x, torch.zeros(2, 18)), x, atol=1e-6))
    True
    """

    name = "thin_plate_spline"
    aliases = ("tps",)

    def __init__(self, grid_size: int = 4, padding_mode: str = "border") -> None:
        self.grid_size = grid_size
        self.padding_mode = padding_mode

    def n_parameters(self, n_channels: int) -> int:
        """Return ``2 * grid_size**2``."""
        if not isinstance(self.grid_size, int) or self.grid_size < 2:
            raise ValueError(f"grid_size must be an integer >= 2, got {self.grid_size!r}.")
        return 2 * self.grid_size**2

    def grid(self, params: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Add the interpolated control-point displacements to the pixel centres."""
        base = _pixel_centres(height, width, str(params.device), params.dtype)
        interp = _tps_matrix(height, width, self.grid_size, str(params.device), params.dtype)
        moves = params.view(params.shape[0], -1, 2)
        return base + interp @ moves
