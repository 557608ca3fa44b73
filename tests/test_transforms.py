"""Tests of the transformation modules, the per-image convolution and the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.datasets import load_digits

from dti_sklearn import DTIKMeans
from dti_sklearn.transforms import (
    Affine,
    Color,
    Identity,
    Morphological,
    Projective,
    ThinPlateSpline,
    Transformation,
    _base,
    available_transformations,
    make_transformation,
    make_transformations,
)
from dti_sklearn.transforms._conv import per_image_conv2d

PADDINGS = ("border", "zeros")

#: Transformations whose zero parameters must be the identity up to float
#: rounding (the warps resample the image on a grid of pixel centres).
APPROX_IDENTITY = (
    [Affine(padding_mode=p) for p in PADDINGS]
    + [Projective(padding_mode=p) for p in PADDINGS]
    + [ThinPlateSpline(grid_size=g, padding_mode=p) for g in (2, 3, 4, 5) for p in PADDINGS]
)
#: Transformations whose zero parameters must be the identity bit for bit.
EXACT_IDENTITY = [Identity(), Color()] + [Morphological(kernel_size=k) for k in (1, 3, 5, 7)]
PARAMETRIC = [t for t in APPROX_IDENTITY + EXACT_IDENTITY if not isinstance(t, Identity)]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Every tensor here is tiny: one intra-op thread is faster, and far faster on a
    busy machine, where OpenMP threads wait for each other."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)

shapes = st.tuples(
    st.integers(1, 5),  # batch
    st.integers(1, 4),  # channels
    st.integers(1, 32),  # height
    st.integers(1, 32),  # width
)


def _images(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator)


def _zero_params(transformation, n, c):
    return torch.zeros(n, transformation.n_parameters(c))


# ----------------------------------------------------------------- identity
@pytest.mark.parametrize("transformation", APPROX_IDENTITY, ids=repr)
@settings(max_examples=15, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
@example(shape=(1, 1, 1, 1), seed=0)
@example(shape=(2, 3, 1, 17), seed=1)
@example(shape=(3, 1, 32, 1), seed=2)
@example(shape=(5, 4, 32, 31), seed=3)
def test_zero_parameters_are_the_identity(transformation, shape, seed):
    images = _images(shape, seed)
    out = transformation.apply(images, _zero_params(transformation, shape[0], shape[1]))
    assert out.shape == images.shape
    assert out.dtype == images.dtype
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


@pytest.mark.parametrize("transformation", EXACT_IDENTITY, ids=repr)
@settings(max_examples=15, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
@example(shape=(1, 1, 1, 1), seed=0)
@example(shape=(2, 3, 1, 17), seed=1)
@example(shape=(3, 1, 32, 1), seed=2)
@example(shape=(5, 4, 32, 31), seed=3)
def test_zero_parameters_are_exactly_the_identity(transformation, shape, seed):
    images = _images(shape, seed)
    out = transformation.apply(images, _zero_params(transformation, shape[0], shape[1]))
    assert torch.equal(out, images)


@pytest.mark.parametrize("transformation", APPROX_IDENTITY + EXACT_IDENTITY, ids=repr)
def test_identity_parameters_are_zeros(transformation):
    for c in (1, 3):
        identity = transformation.identity_parameters(c)
        assert identity.shape == (transformation.n_parameters(c),)
        assert not identity.any()


# ----------------------------------------------------------------- gradients
@pytest.mark.parametrize("transformation", PARAMETRIC, ids=repr)
def test_gradients_reach_images_and_parameters(transformation):
    torch.manual_seed(0)
    n, c = 3, 2
    images = torch.rand(n, c, 6, 7, requires_grad=True)
    params = (0.05 * torch.randn(n, transformation.n_parameters(c))).requires_grad_()
    out = transformation.apply(images, params)
    out.sum().backward()
    for grad in (images.grad, params.grad):
        assert grad is not None
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0
    # every image's own parameters receive a gradient
    assert (params.grad.abs().sum(1) > 0).all()


def test_morphological_kernel_gets_gradient_at_identity():
    # The network starts at zero parameters; the clamp must let the
    # neighbours' weights grow from there.
    torch.manual_seed(0)
    images = torch.rand(2, 1, 6, 6)
    params = torch.zeros(2, 10, requires_grad=True)
    Morphological(kernel_size=3).apply(images, params).pow(2).sum().backward()
    neighbours = torch.ones(9, dtype=torch.bool)
    neighbours[4] = False
    assert (params.grad[:, 1:][:, neighbours] != 0).all()


# ----------------------------------------------------------------- semantics
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize(("axis", "index"), [("x", 2), ("y", 5)])
@pytest.mark.parametrize("sign", [1, -1])
def test_affine_translation_moves_a_bright_pixel(padding_mode, axis, index, sign):
    # grid_sample: out(p) = in(A p + t) with normalised coordinates in which
    # one pixel is 2 / size wide, so t = +2/W along x gives out[j] = in[j + 1]:
    # the content moves one pixel towards lower indices.
    h, w = 8, 10
    row, col = 3, 4
    images = torch.zeros(1, 1, h, w)
    images[0, 0, row, col] = 1.0
    params = torch.zeros(1, 6)
    params[0, index] = sign * 2.0 / (w if axis == "x" else h)
    out = Affine(padding_mode=padding_mode).apply(images, params)
    expected_row, expected_col = (row, col - sign) if axis == "x" else (row - sign, col)
    assert out[0, 0, expected_row, expected_col] == pytest.approx(1.0, abs=1e-5)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_affine_half_pixel_translation_interpolates_bilinearly():
    images = torch.zeros(1, 1, 5, 8)
    images[0, 0, 2, 4] = 1.0
    params = torch.zeros(1, 6)
    params[0, 2] = 0.5 * 2.0 / 8  # half a pixel along x
    out = Affine(padding_mode="zeros").apply(images, params)[0, 0]
    assert out[2, 3].item() == pytest.approx(0.5, abs=1e-5)
    assert out[2, 4].item() == pytest.approx(0.5, abs=1e-5)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_affine_scaling_about_the_centre():
    # A = diag(s, s) - I: out(p) = in(s p); s = 0.5 magnifies around the centre.
    images = torch.zeros(1, 1, 8, 8)
    images[0, 0, 3:5, 3:5] = 1.0  # the central 2 x 2 block
    params = torch.zeros(1, 6)
    params[0, 0] = params[0, 4] = -0.5
    out = Affine(padding_mode="zeros").apply(images, params)[0, 0]
    assert out.sum() > 2 * images.sum()  # covers about 4x the area
    torch.testing.assert_close(out, out.flip(0).flip(1))  # stays centred


def test_color_gain_and_offset():
    torch.manual_seed(0)
    n, c = 4, 3
    images = torch.rand(n, c, 5, 6)
    gains, offsets = torch.randn(n, c), torch.randn(n, c)
    out = Color().apply(images, torch.cat([gains, offsets], dim=1))
    expected = images * (1 + gains[:, :, None, None]) + offsets[:, :, None, None]
    torch.testing.assert_close(out, expected)
    assert Color().n_parameters(c) == 2 * c


@settings(max_examples=20, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
@example(shape=(1, 1, 1, 2), seed=0)
def test_closed_form_color_recovers_any_gain_and_offset(shape, seed):
    n, c, h, w = shape
    generator = torch.Generator().manual_seed(seed)
    aligned = torch.rand(n, 2, c, h, w, generator=generator, dtype=torch.float64)
    aligned[:, :, :, 0, 0] += 1  # no constant channel, even with one pixel
    gains = torch.randn(n, 1, c, 1, 1, generator=generator, dtype=torch.float64)
    offsets = torch.randn(n, 1, c, 1, 1, generator=generator, dtype=torch.float64)
    images = (aligned * gains + offsets)[:, 0]
    out = Color(closed_form=True).solve(aligned, images)
    torch.testing.assert_close(out[:, 0], images)
    assert out.shape == aligned.shape


def test_value_scale_is_the_gain_that_recoloured_the_prototype():
    generator = torch.Generator().manual_seed(1)
    aligned = torch.rand(4, 3, 2, 5, 5, generator=generator, dtype=torch.float64)
    gains = torch.randn(4, 1, 2, generator=generator, dtype=torch.float64)
    images = (aligned * gains[..., None, None] + 0.3)[:, 1]  # prototype 1, recoloured
    solved = Color(closed_form=True).value_scale(aligned, images)
    assert solved.shape == (4, 3, 2)
    torch.testing.assert_close(solved[:, 1], gains[:, 0])
    assert Affine().value_scale(aligned, images) is None  # it rescales no value


def test_closed_form_color_is_the_least_squares_fit():
    generator = torch.Generator().manual_seed(0)
    aligned = torch.rand(3, 4, 2, 5, 6, generator=generator, dtype=torch.float64)
    images = torch.rand(3, 2, 5, 6, generator=generator, dtype=torch.float64)
    out = Color(closed_form=True).solve(aligned, images)
    for b, k, ch in [(0, 0, 0), (1, 3, 1), (2, 2, 0)]:
        p = aligned[b, k, ch].flatten().numpy()
        design = np.stack([p, np.ones_like(p)], axis=1)
        coef, *_ = np.linalg.lstsq(design, images[b, ch].flatten().numpy(), rcond=None)
        np.testing.assert_allclose(out[b, k, ch].flatten().numpy(), design @ coef, atol=1e-10)


def test_closed_form_color_of_a_constant_channel_is_the_mean_and_has_gradients():
    aligned = torch.full((2, 3, 1, 4, 4), 0.5, requires_grad=True)
    images = torch.rand(2, 1, 4, 4)
    out = Color(closed_form=True).solve(aligned, images)
    expected = images.mean((1, 2, 3)).view(2, 1, 1, 1, 1).expand_as(out)
    torch.testing.assert_close(out, expected)
    varied = torch.rand(2, 3, 1, 4, 4, requires_grad=True)
    Color(closed_form=True).solve(varied, images).pow(2).sum().backward()
    assert torch.isfinite(varied.grad).all() and varied.grad.abs().sum() > 0


def _stroke():
    images = torch.zeros(1, 1, 9, 9)
    images[0, 0, 4, 1:8] = 1.0  # a one-pixel-thick horizontal stroke
    return images


@pytest.mark.parametrize("kernel_size", [3, 5, 7])
def test_morphological_sharpness_dilates_and_erodes(kernel_size):
    images = _stroke()
    k2 = kernel_size**2

    def total(sharpness):
        params = torch.zeros(1, 1 + k2)
        params[0, 0] = sharpness
        params[0, 1:] = 1.0  # every weight of the window positive
        return Morphological(kernel_size=kernel_size).apply(images, params).sum().item()

    base = images.sum().item()
    assert total(5.0) > 1.5 * base  # dilation-like: the stroke thickens
    assert total(-5.0) < 0.5 * base  # erosion-like: the stroke thins
    assert total(-5.0) < total(0.0) < total(5.0)


@pytest.mark.parametrize(("sharpness", "background"), [(-40.0, 0.0), (40.0, 0.2)])
def test_morphological_uniform_window_at_large_sharpness(sharpness, background):
    # y(p) is a weighted average over the window: where the window is uniform,
    # y(p) is that value whatever the sharpness a.
    images = torch.full((1, 1, 9, 9), background)
    images[0, 0, 3:6, 3:6] = 1.0
    params = torch.ones(1, 10)
    params[0, 0] = sharpness
    out = Morphological(kernel_size=3).apply(images, params)[0, 0]
    assert torch.isfinite(out).all()
    assert out[4, 4].item() == pytest.approx(1.0, abs=1e-4)  # window inside the block
    assert out[0, 0].item() == pytest.approx(background, abs=1e-4)  # window of background


def test_morphological_dirac_kernel_ignores_sharpness():
    # With the identity kernel the window holds one pixel: any sharpness is the identity.
    torch.manual_seed(0)
    images = torch.rand(2, 3, 6, 6)
    params = torch.zeros(2, 10)
    params[:, 0] = torch.tensor([4.0, -4.0])
    torch.testing.assert_close(Morphological(kernel_size=3).apply(images, params), images)


@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("grid_size", [2, 3, 4, 5])
def test_tps_uniform_displacement_is_a_translation(grid_size, padding_mode):
    torch.manual_seed(grid_size)
    images = torch.rand(2, 3, 7, 9)
    shift = torch.tensor([[0.13, -0.21], [-0.3, 0.05]])  # (x, y) per image
    tps_params = shift.repeat(1, grid_size**2)  # (x0, y0, x1, y1, ...)
    affine_params = torch.zeros(2, 6)
    affine_params[:, 2], affine_params[:, 5] = shift[:, 0], shift[:, 1]
    tps = ThinPlateSpline(grid_size=grid_size, padding_mode=padding_mode)
    affine = Affine(padding_mode=padding_mode)
    out = tps.apply(images, tps_params)
    torch.testing.assert_close(out, affine.apply(images, affine_params), atol=1e-4, rtol=0)
    assert not torch.allclose(out, images, atol=1e-2)  # the shift did something


def test_tps_interpolates_its_control_points():
    # With a 3 x 3 grid the centre control point sits on the centre pixel of a
    # 5 x 5 image: moving it alone moves that pixel's sample point by exactly
    # the displacement, and points further away by less and less.
    tps = ThinPlateSpline(grid_size=3)
    params = torch.zeros(1, 18)
    params[0, 8:10] = torch.tensor([0.1, -0.2])  # control point 4 = (0, 0), (x, y)
    moved = tps.grid(params, 5, 5).view(5, 5, 2) - tps.grid(torch.zeros(1, 18), 5, 5).view(5, 5, 2)
    torch.testing.assert_close(moved[2, 2], torch.tensor([0.1, -0.2]), atol=1e-6, rtol=0)
    size = moved.norm(dim=-1)
    assert size[2, 2] > size[2, 3] > size[2, 4] > 0
    assert size[2, 2] > size[1, 1] > size[0, 0] > 0
    torch.testing.assert_close(size, size.flip(0).flip(1))  # symmetric about the centre


@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_projective_translation_equals_affine(padding_mode):
    torch.manual_seed(0)
    images = torch.rand(3, 2, 6, 8)
    shift = 0.4 * torch.randn(3, 2)
    proj_params = torch.zeros(3, 8)
    proj_params[:, 2], proj_params[:, 5] = shift[:, 0], shift[:, 1]
    affine_params = torch.zeros(3, 6)
    affine_params[:, 2], affine_params[:, 5] = shift[:, 0], shift[:, 1]
    out = Projective(padding_mode=padding_mode).apply(images, proj_params)
    expected = Affine(padding_mode=padding_mode).apply(images, affine_params)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(out, images, atol=1e-2)


def test_projective_linear_part_equals_affine():
    # With a zero last row the homography is an affine map.
    torch.manual_seed(1)
    images = torch.rand(2, 1, 7, 7)
    affine_params = 0.1 * torch.randn(2, 6)
    proj_params = torch.cat([affine_params, torch.zeros(2, 2)], dim=1)
    torch.testing.assert_close(
        Projective().apply(images, proj_params), Affine().apply(images, affine_params),
        atol=1e-5, rtol=0,
    )


def test_composed_affine_warps_sample_once_at_the_composed_grid():
    # Warping by g1 then by g2 samples the image at g1(g2(p)); with affine maps
    # g(p) = M p + t that is (M1 M2) p + M1 t2 + t1.
    from dti_sklearn.transforms.spatial import apply_warps

    torch.manual_seed(0)
    images = torch.rand(2, 1, 9, 9)
    p1, p2 = 0.2 * torch.randn(2, 6), 0.2 * torch.randn(2, 6)
    m1 = p1.view(2, 2, 3) + torch.eye(2, 3)
    m2 = p2.view(2, 2, 3) + torch.eye(2, 3)
    linear = m1[:, :, :2] @ m2[:, :, :2]
    shift = (m1[:, :, :2] @ m2[:, :, 2:])[..., 0] + m1[:, :, 2]
    composed = torch.cat([linear, shift[..., None]], dim=2) - torch.eye(2, 3)
    out = apply_warps(images, [Affine(), Affine()], [p1, p2])
    torch.testing.assert_close(out, Affine().apply(images, composed.reshape(2, 6)), atol=1e-5,
                               rtol=0)
    # and it is not the other order
    assert not torch.allclose(out, apply_warps(images, [Affine(), Affine()], [p2, p1]), atol=1e-3)


@pytest.mark.parametrize("padding_mode", ["border", "zeros", "reflection"])
@pytest.mark.parametrize(
    "warps",
    [[Affine()], [Projective()], [ThinPlateSpline(grid_size=3)], [Affine(), ThinPlateSpline()]],
    ids=lambda w: "+".join(type(t).__name__ for t in w),
)
def test_warping_each_image_equals_warping_its_copies(warps, padding_mode):
    # apply_warps_to_each samples K images with B grids each in one call; it
    # must give apply_warps on the K x B copies value for value.
    from dti_sklearn.transforms.spatial import apply_warps, apply_warps_to_each

    for w in warps:
        w.set_params(padding_mode=padding_mode)
    torch.manual_seed(0)
    k, b, c = 3, 5, 2
    images = torch.rand(k, c, 9, 7)
    params = [0.2 * torch.randn(k, b, w.n_parameters(c)) for w in warps]
    each = apply_warps_to_each(images, warps, params)
    copies = images.unsqueeze(1).expand(k, b, c, 9, 7).reshape(k * b, c, 9, 7)
    expected = apply_warps(copies, warps, [p.reshape(k * b, -1) for p in params])
    assert each.shape == (k, b, c, 9, 7)
    assert torch.equal(each.reshape(k * b, c, 9, 7), expected)
    assert not torch.equal(each[:, 0], each[:, 1])  # the B grids differ


@pytest.mark.parametrize("with_deviations", [False, True])
def test_network_aligns_all_pairs_as_with_copies(with_deviations):
    # PrototypeNetwork.align samples the prototypes themselves when it aligns
    # all pairs; the result must match the per-pair path bit for bit, and the
    # gradient reach the prototypes alike.
    from dti_sklearn._torch.network import PrototypeNetwork

    torch.manual_seed(0)
    prototypes = torch.rand(4, 1, 12, 12)
    network = PrototypeNetwork(
        prototypes, [Affine(), ThinPlateSpline(grid_size=3), Morphological(kernel_size=3)],
        log_deviations=torch.zeros_like(prototypes) if with_deviations else None,
    )
    with torch.no_grad():
        for p in network.heads.parameters():
            p.normal_(0, 0.05)
    x = torch.rand(6, 1, 12, 12)
    params = network.predict_parameters(x)
    every = torch.arange(4).expand(6, 4)  # the clusters path: per-pair copies
    results = []
    for clusters in (None, every):
        network.zero_grad()
        means, stds = network.align(params, 6, clusters=clusters)
        loss = means.square().sum() + (0 if stds is None else stds.square().sum())
        loss.backward(retain_graph=True)
        results.append((means.detach(), stds, network.prototypes.grad.clone()))
    (shared, shared_stds, shared_grad), (copies, copies_stds, copies_grad) = results
    assert torch.equal(shared, copies)
    if with_deviations:
        assert torch.equal(shared_stds, copies_stds)
    torch.testing.assert_close(shared_grad, copies_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("transformation", "n_params"),
    [
        (Identity(), 0),
        (Color(), 6),
        (Affine(), 6),
        (Projective(), 8),
        (ThinPlateSpline(grid_size=4), 32),
        (Morphological(kernel_size=7), 50),
    ],
    ids=repr,
)
def test_parameter_counts(transformation, n_params):
    assert transformation.n_parameters(3) == n_params


def test_invalid_configurations_raise():
    with pytest.raises(ValueError, match="kernel_size"):
        Morphological(kernel_size=4).n_parameters(1)
    with pytest.raises(ValueError, match="grid_size"):
        ThinPlateSpline(grid_size=1).n_parameters(1)
    with pytest.raises(ValueError, match="padding_mode"):
        Affine(padding_mode="wrap").apply(torch.zeros(1, 1, 4, 4), torch.zeros(1, 6))


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [(1, 64, 3), (8, 8, 3), (15, 40, 3), (16, 16, 5), (23, 23, 5), (24, 30, 7), (28, 28, 7),
     (64, 64, 7)],
)
def test_auto_kernel_size_follows_the_smaller_side(height, width, expected):
    resolved = Morphological().for_image_size(height, width)
    assert resolved.kernel_size == expected
    assert resolved.n_parameters(1) == 1 + expected**2


def test_for_image_size_copies_only_what_it_resolves():
    auto = Morphological()
    resolved = auto.for_image_size(16, 16)
    assert resolved is not auto and auto.kernel_size == "auto"  # the original is left alone
    fixed = Morphological(kernel_size=7)
    assert fixed.for_image_size(8, 8) is fixed  # an explicit size is kept
    for transformation in (Affine(), ThinPlateSpline(), Color(), Identity()):
        assert transformation.for_image_size(8, 8) is transformation


def test_unresolved_auto_kernel_asks_for_an_image_size():
    with pytest.raises(ValueError, match="for_image_size"):
        Morphological().n_parameters(1)
    with pytest.raises(ValueError, match="'auto'"):
        Morphological(kernel_size="big").n_parameters(1)
    with pytest.raises(ValueError, match="kernel_size"):
        Morphological(kernel_size=True).n_parameters(1)


def test_auto_kernel_applies_as_the_identity_at_zero_parameters():
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(Morphological().apply(images, torch.zeros(2, 1 + 5 * 5)), images)


def test_fitted_estimators_hold_the_resolved_kernel():
    X = load_digits().images[:60] / 16
    model = DTIKMeans(3, transforms=["mor"], max_iter=1, random_state=0).fit(X)
    assert model.transforms_[0].kernel_size == 3  # 8 x 8 images
    assert model.transforms == ["mor"]  # the parameter as given
    assert model.predict(X).shape == (60,)


# ----------------------------------------------------------- per-image conv
@pytest.mark.parametrize(("groups", "height", "width", "k"), [(3, 4, 5, 3), (2, 2, 3, 5)])
def test_per_image_conv_gradcheck(groups, height, width, k):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(groups, height, width, dtype=torch.float64, generator=generator)
    kernels = torch.rand(groups, k, k, dtype=torch.float64, generator=generator)
    images.requires_grad_()
    kernels.requires_grad_()
    assert torch.autograd.gradcheck(per_image_conv2d, (images, kernels))


def test_per_image_conv_matches_grouped_conv2d():
    torch.manual_seed(0)
    images, kernels = torch.rand(6, 9, 7), torch.rand(6, 5, 5)
    out = per_image_conv2d(images, kernels)
    expected = F.conv2d(images[None], kernels[:, None], padding=2, groups=6)[0]
    assert out.shape == (6, 9, 7)
    torch.testing.assert_close(out, expected)


def test_per_image_conv_gradients_match_autograd_of_conv2d():
    torch.manual_seed(0)
    images = torch.rand(4, 6, 5, requires_grad=True)
    kernels = torch.rand(4, 3, 3, requires_grad=True)
    weight = torch.rand(4, 6, 5)
    (per_image_conv2d(images, kernels) * weight).sum().backward()
    fast = images.grad.clone(), kernels.grad.clone()
    images.grad = kernels.grad = None
    reference = F.conv2d(images[None], kernels[:, None], padding=1, groups=4)[0]
    (reference * weight).sum().backward()
    torch.testing.assert_close(fast[0], images.grad)
    torch.testing.assert_close(fast[1], kernels.grad)


# ------------------------------------------------------------------ registry
@pytest.mark.parametrize(
    ("names", "cls"),
    [
        (("id", "identity"), Identity),
        (("col", "color"), Color),
        (("aff", "affine"), Affine),
        (("proj", "projective"), Projective),
        (("tps", "thin_plate_spline"), ThinPlateSpline),
        (("mor", "morphological"), Morphological),
    ],
)
def test_names_resolve_to_their_class(names, cls):
    for name in names:
        assert name in available_transformations()
        first, second = make_transformation(name), make_transformation(name)
        assert type(first) is cls
        assert first is not second  # a fresh object each time
        assert type(make_transformation(name.upper())) is cls


def test_make_transformations_clones_objects():
    mine = ThinPlateSpline(grid_size=3, padding_mode="zeros")
    out = make_transformations([mine, "aff", "aff"])
    assert out[0] is not mine
    assert out[0].get_params() == mine.get_params()
    assert out[1] is not out[2]
    out[0].set_params(grid_size=5)
    assert mine.grid_size == 3
    assert [type(t) for t in make_transformations(None)] == [Identity]
    assert [type(t) for t in make_transformations([])] == [Identity]
    assert [type(t) for t in make_transformations("mor")] == [Morphological]


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="Unknown transformation 'rotate'") as info:
        make_transformations(["aff", "rotate"])
    for name in ("aff", "affine", "tps", "thin_plate_spline", "mor", "col", "id", "proj"):
        assert name in str(info.value)
    with pytest.raises(ValueError, match="Transformation"):
        make_transformation(3)


def test_named_subclass_registers_itself(monkeypatch):
    monkeypatch.setattr(_base, "_REGISTRY", dict(_base._REGISTRY))

    class Flip(Transformation):
        name = "flip_test"
        aliases = ("ft",)

        def n_parameters(self, n_channels):
            return 0

        def apply(self, images, params):
            return images.flip(-1)

    assert {"flip_test", "ft"} <= set(available_transformations())
    assert type(make_transformation("ft")) is Flip


def test_transformation_objects_are_sklearn_style():
    tps = ThinPlateSpline(grid_size=3, padding_mode="zeros")
    assert tps.get_params() == {"grid_size": 3, "padding_mode": "zeros"}
    assert repr(tps) == "ThinPlateSpline(grid_size=3, padding_mode='zeros')"
    assert repr(Affine()) == "Affine()"
    assert tps.set_params(grid_size=5) is tps and tps.grid_size == 5
    twin = clone(tps)
    assert twin is not tps and twin.get_params() == tps.get_params()
    mor = Morphological(kernel_size=5)
    assert mor.get_params() == {"kernel_size": 5}
    assert clone(mor).kernel_size == 5
    assert Color().get_params() == {"closed_form": True} and Identity().get_params() == {}
    assert clone(Color()).solved and not Color(closed_form=False).solved
    with pytest.raises(ValueError):
        Affine().set_params(grid_size=2)


# ------------------------------------------------------- user-defined module
class MyTranslation(Transformation):
    """Translation only: two parameters, the shift in normalised coordinates."""

    spatial = True

    def __init__(self, padding_mode="zeros"):
        self.padding_mode = padding_mode

    def n_parameters(self, n_channels):
        return 2

    def apply(self, images, params):
        n = images.shape[0]
        theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, :, 2] = params
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(
            images, grid, padding_mode=self.padding_mode, align_corners=False
        )


def test_user_defined_transformation_end_to_end():
    X = load_digits().images[:120] / 16.0
    mine = MyTranslation()
    model = DTIKMeans(
        n_clusters=3, transforms=[mine], max_iter=2, batch_size=16, curriculum=[0],
        init="random", learning_rate=1e-2, random_state=0,
    ).fit(X)
    assert isinstance(model.transforms_[0], MyTranslation)
    assert model.transforms_[0] is not mine
    labels = model.predict(X)
    assert labels.shape == (120,)
    np.testing.assert_array_equal(labels, model.labels_)
    aligned = model.get_aligned_prototypes(X[:20])
    assert aligned.shape == (20, 3, 8, 8)
    assert np.isfinite(aligned).all()
    broadcast = np.broadcast_to(model.prototypes_, aligned.shape)
    # the heads learned non-zero translations, so the prototypes moved
    assert np.abs(aligned - broadcast).max() > 1e-3


def test_linear_grid_has_the_same_values_with_and_without_gradient():
    # _linear_grid builds grids from two different matrix products depending
    # on whether a gradient is needed; both must give the same grids
    from dti_sklearn.transforms.spatial import _linear_grid, _tps_matrix

    torch.manual_seed(0)
    basis = _tps_matrix(11, 9, 3, "cpu", torch.float32)
    coefficients = torch.randn(7, basis.shape[1], 2)
    with torch.no_grad():
        plain = _linear_grid(basis, coefficients)
    tracked = _linear_grid(basis, coefficients.clone().requires_grad_(True))
    assert plain.shape == tracked.shape == (7, 99, 2)
    torch.testing.assert_close(plain, tracked.detach(), rtol=1e-6, atol=1e-6)
    expected = torch.einsum("pq,nqd->npd", basis.double(), coefficients.double()).float()
    torch.testing.assert_close(plain, expected, rtol=1e-5, atol=1e-5)
