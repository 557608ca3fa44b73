"""Spatial transformations: affine, projective and thin-plate spline warps.

Every warp builds a sampling grid in normalised coordinates (``[-1, 1]``,
pixel centres, ``align_corners=False``) and samples the images bilinearly with
:func:`torch.nn.functional.grid_sample`.  Zero parameters give the regular
grid of pixel centres, hence the identity up to float rounding.
"""

from __future__ import annotations

from functools import lru_cache
from typing import ClassVar

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


def _linear_grid(basis: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """``basis @ coefficients[n]`` for every n, as one matrix product.

    Parameters
    ----------
    basis : torch.Tensor of shape (H*W, Q)
    coefficients : torch.Tensor of shape (N, Q, D)

    Returns
    -------
    torch.Tensor of shape (N, H*W, D)
        A transposed view of one matrix product: N small batched products
        are several times slower on the CPU (measured: 15 ms against a few
        for 640 affine grids of 28 x 28).  Without gradient the product is
        ``(N*D, Q) x (Q, H*W)``, whose rows hold each grid's x and y
        contiguously, so making the grid contiguous for sampling costs 5.8 ms
        instead of 13.6 ms for 640 grids of 64 x 64 (same values).  With
        gradient it stays ``(H*W, Q) x (Q, N*D)``: its backward pass rounds as
        in every earlier version, so training is unchanged bit for bit, and
        with gradient only the grids of the nearest pairs are built (one or
        two per sample).
    """
    n, q, d = coefficients.shape
    if torch.is_grad_enabled() and (coefficients.requires_grad or basis.requires_grad):
        flat = coefficients.permute(1, 0, 2).reshape(q, n * d)
        return (basis @ flat).view(-1, n, d).transpose(0, 1)
    flat = coefficients.transpose(1, 2).reshape(n * d, q)
    return (flat @ basis.T).view(n, d, -1).transpose(1, 2)


def _homogeneous_centres(height: int, width: int, device: str, dtype: torch.dtype):
    """Pixel centres as ``(x, y, 1)`` rows, shape (H*W, 3)."""
    base = _pixel_centres(height, width, device, dtype)
    return torch.cat([base, base.new_ones(base.shape[0], 1)], dim=1)


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

    #: Whether :meth:`map_points` maps arbitrary points (not only pixel centres).
    maps_points: ClassVar[bool] = True
    #: Whether the warp is an affine map of the plane.
    is_affine: ClassVar[bool] = False

    def map_points(self, points: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Map normalised ``(x, y)`` points, shape (P, 2) or (N, P, 2), to (N, P, 2)."""
        raise NotImplementedError

    def grid(self, params: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Return the sampling grid, shape (N, H*W, 2), in normalised coordinates."""
        return self.map_points(_pixel_centres(height, width, str(params.device), params.dtype),
                               params)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Warp ``images`` with the grid built from ``params``."""
        return apply_warps(images, [self], [params])


def composable(first: Transformation, second: Transformation) -> bool:
    """Whether ``first`` then ``second`` can share one sampling grid.

    Warping by ``first`` then by ``second`` samples the prototype at
    ``g_first(g_second(p))``: the composed grid needs ``first`` to map
    arbitrary points, and both to pad alike.
    """
    return (
        isinstance(first, _Warp) and isinstance(second, _Warp) and first.maps_points
        and first.padding_mode == second.padding_mode
    )


def _composed_grid(
    warps: list[_Warp], params: list[torch.Tensor], height: int, width: int,
) -> torch.Tensor:
    """The sampling grid of a sequence of warps, shape (N, H*W, 2)."""
    for warp in warps:
        warp._check_padding()
    last, earlier = warps[-1], list(zip(warps[-2::-1], params[-2::-1]))
    if isinstance(last, ThinPlateSpline) and all(w.is_affine for w, _ in earlier):
        # A thin-plate spline reproduces affine maps, so affine warps applied
        # after it only need to move its g*g control targets.
        targets = last.control_targets(params[-1])
        for warp, beta in earlier:
            targets = warp.map_points(targets, beta)
        return last.interpolate(targets, height, width)
    grid = last.grid(params[-1], height, width)
    for warp, beta in earlier:
        grid = warp.map_points(grid, beta)
    return grid


def apply_warps(
    images: torch.Tensor, warps: list[_Warp], params: list[torch.Tensor],
) -> torch.Tensor:
    """Apply a sequence of warps with a single bilinear sampling.

    The grid of the last warp is mapped through the earlier ones in reverse
    order, so the images are interpolated once instead of once per warp: less
    work and less blur.  Every warp but the last must map arbitrary points
    (see :func:`composable`).

    Parameters
    ----------
    images : torch.Tensor of shape (N, C, H, W)
    warps : list of warps
        In the order they are applied to the images.
    params : list of torch.Tensor of shape (N, P_m)

    Returns
    -------
    torch.Tensor of shape (N, C, H, W)
    """
    n, _, height, width = images.shape
    grid = _finite(_composed_grid(warps, params, height, width))
    return F.grid_sample(
        images, grid.reshape(n, height, width, 2), mode="bilinear",
        padding_mode=warps[0].padding_mode, align_corners=False,
    )


def _finite(grid: torch.Tensor) -> torch.Tensor:
    """``grid`` with NaN and infinite coordinates moved outside the image.

    ``grid_sample``'s CPU kernels index memory with such coordinates and crash
    the interpreter (pytorch/pytorch#24823, still open in torch 2.13), which a
    diverged training step would otherwise do before its loss can be checked.
    Finite coordinates pass unchanged.
    """
    return torch.nan_to_num(grid, nan=-2.0, posinf=2.0, neginf=-2.0)


def apply_warps_to_each(
    images: torch.Tensor, warps: list[_Warp], params: list[torch.Tensor],
) -> torch.Tensor:
    """Warp each of K images with its own B parameter sets, in one sampling call.

    The same result as :func:`apply_warps` on the images repeated B times,
    value for value, but ``grid_sample`` reads the K images themselves
    instead of ``K x B`` copies: the B grids of an image are stacked along
    the output height.  Sampling 10 prototypes for 64 samples took 0.8 ms
    against 2.3 ms on 28 x 28 images and 3.8 ms against 19.9 ms on 64 x 64
    (2-core AMD EPYC, no gradient).

    Parameters
    ----------
    images : torch.Tensor of shape (K, C, H, W)
    warps : list of warps
        In the order they are applied to the images.
    params : list of torch.Tensor of shape (K, B, P_m)

    Returns
    -------
    torch.Tensor of shape (K, B, C, H, W)
        A transposed view: ``B`` runs faster than ``C`` in memory.
    """
    k, c, height, width = images.shape
    batch = params[0].shape[1]
    grid = _composed_grid(warps, [p.reshape(k * batch, -1) for p in params], height, width)
    out = F.grid_sample(
        images, _finite(grid).reshape(k, batch * height, width, 2), mode="bilinear",
        padding_mode=warps[0].padding_mode, align_corners=False,
    )
    return out.view(k, c, batch, height, width).transpose(1, 2)


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
    curriculum_rank = 1

    is_affine = True

    def n_parameters(self, n_channels: int) -> int:
        """Return 6."""
        return 6

    def grid(self, params: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``[x y 1] (A + [I 0])^T`` for every pixel centre, one matrix product."""
        basis = _homogeneous_centres(height, width, str(params.device), params.dtype)
        eye = torch.eye(2, 3, dtype=params.dtype, device=params.device)
        return _linear_grid(basis, (params.view(-1, 2, 3) + eye).transpose(1, 2))

    def map_points(self, points: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Apply ``A + [I 0]`` to the points."""
        base = points
        matrix = params.view(-1, 1, 2, 3)
        # x' = (1 + a00) x + a01 y + a02 and y' = a10 x + (1 + a11) y + a12, written
        # elementwise: a batched (H*W, 2) x (2, 2) product is slower on the CPU.
        return (
            base
            + matrix[..., 0] * base[..., :1]
            + matrix[..., 1] * base[..., 1:]
            + matrix[..., 2]
        )


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
    curriculum_rank = 2

    def n_parameters(self, n_channels: int) -> int:
        """Return 8."""
        return 8

    def grid(self, params: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Homography of every pixel centre, one matrix product, then the division."""
        basis = _homogeneous_centres(height, width, str(params.device), params.dtype)
        full = torch.cat([params, params.new_zeros(params.shape[0], 1)], dim=1).view(-1, 3, 3)
        full = full + torch.eye(3, dtype=params.dtype, device=params.device)
        return _divide_depth(_linear_grid(basis, full.transpose(1, 2)))

    def map_points(self, points: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Apply the homography to the points and divide by depth."""
        h = params.view(-1, 1, 8)
        x, y = points[..., :1], points[..., 1:]
        mapped = torch.cat(
            [
                (1 + h[..., 0:1]) * x + h[..., 1:2] * y + h[..., 2:3],
                h[..., 3:4] * x + (1 + h[..., 4:5]) * y + h[..., 5:6],
            ],
            dim=-1,
        )
        depth = h[..., 6:7] * x + h[..., 7:8] * y + 1
        return _divide_depth(torch.cat([mapped, depth], dim=-1))


def _divide_depth(homogeneous: torch.Tensor) -> torch.Tensor:
    """``(x, y, z) -> (x / z, y / z)``, keeping ``|z|`` away from 0."""
    depth = homogeneous[..., 2:]
    eps = 1e-6
    depth = torch.where(depth.abs() < eps, torch.full_like(depth, eps), depth)
    return homogeneous[..., :2] / depth


@lru_cache(maxsize=32)
def _control_points(grid_size: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """Regular ``grid_size x grid_size`` control points over ``[-1, 1]^2``, (g*g, 2)."""
    lin = torch.linspace(-1, 1, grid_size, dtype=torch.float64)
    cy, cx = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1).to(device=device, dtype=dtype)


@lru_cache(maxsize=32)
def _tps_matrix(
    height: int, width: int, grid_size: int, device: str, dtype: torch.dtype,
) -> torch.Tensor:
    """Linear map from control-point displacements to dense displacements.

    Thin-plate spline interpolation is linear in the displacements of the
    control points, so it reduces to one precomputed (H*W, g*g) matrix.
    """
    ctrl = _control_points(grid_size, "cpu", torch.float64)
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
    curriculum_rank = 4
    maps_points = False

    def __init__(self, grid_size: int = 4, padding_mode: str = "border") -> None:
        self.grid_size = grid_size
        self.padding_mode = padding_mode

    def n_parameters(self, n_channels: int) -> int:
        """Return ``2 * grid_size**2``."""
        if not isinstance(self.grid_size, int) or self.grid_size < 2:
            raise ValueError(f"grid_size must be an integer >= 2, got {self.grid_size!r}.")
        return 2 * self.grid_size**2

    def control_targets(self, params: torch.Tensor) -> torch.Tensor:
        """Where the control points go: their rest positions plus the parameters.

        Returns
        -------
        torch.Tensor of shape (N, grid_size**2, 2)
        """
        rest = _control_points(self.grid_size, str(params.device), params.dtype)
        return rest + params.view(params.shape[0], -1, 2)

    def interpolate(self, targets: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Thin-plate spline through the control targets, at every pixel centre.

        Interpolating the rest positions gives the pixel centres back exactly
        (the spline reproduces affine maps), so zero parameters are the
        identity.
        """
        interp = _tps_matrix(height, width, self.grid_size, str(targets.device), targets.dtype)
        return _linear_grid(interp, targets)

    def grid(self, params: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The interpolated positions of the displaced control points."""
        return self.interpolate(self.control_targets(params), height, width)
