"""Pixel units: the estimators cluster images the same whatever their value range.

The network sees the training images mapped onto ``[0, 1]``
(:class:`~dti_sklearn._images.IntensityScale`); every output comes back in the
caller's units.  Scaling by a power of two is exact in floating point, so
there the two fits must agree to the last bit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import adjusted_rand_score

from dti_sklearn import DTIGaussianMixture, DTIKMeans
from dti_sklearn._images import IntensityScale
from dti_sklearn.transforms.spatial import Affine, ThinPlateSpline, apply_warps

K = 4
FIT = {"max_iter": 4, "batch_size": 32, "random_state": 0}
SCALE = 256.0  # a power of two: X * SCALE is exact in float32

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    """(150, 8, 8) digits spanning exactly [0, 1]."""
    images = load_digits().images[:150] / 16.0
    assert images.min() == 0.0 and images.max() == 1.0
    return images


@pytest.fixture(scope="module")
def kmeans_pair(digits):
    return (DTIKMeans(K, **FIT).fit(digits), DTIKMeans(K, **FIT).fit(digits * SCALE))


@pytest.fixture(scope="module")
def mixture_pair(digits):
    return (
        DTIGaussianMixture(K, **FIT).fit(digits),
        DTIGaussianMixture(K, **FIT).fit(digits * SCALE),
    )


def test_images_spanning_the_unit_interval_pass_unchanged(digits):
    images = digits.astype(np.float32)
    scale = IntensityScale.of(images)
    assert scale.is_identity
    assert scale.to_model(images) is images
    assert np.array_equal(images, digits.astype(np.float32))


def test_scale_maps_the_range_onto_the_unit_interval_and_back():
    images = np.array([[-3.0, 1.0], [5.0, 0.0]], dtype=np.float32)
    scale = IntensityScale.of(images)
    assert (scale.minimum, scale.span) == (-3.0, 8.0)
    model = scale.to_model(images.copy())
    assert model.min() == 0.0 and model.max() == 1.0
    np.testing.assert_allclose(scale.to_user(model), images)


def test_constant_images_get_a_unit_span():
    assert IntensityScale.of(np.full((3, 2, 2), 7.0, dtype=np.float32)).span == 1.0


def test_kmeans_is_equivariant_to_the_pixel_scale(kmeans_pair, digits):
    plain, scaled = kmeans_pair
    assert (plain.data_min_, plain.data_range_) == (0.0, 1.0)
    assert (scaled.data_min_, scaled.data_range_) == (0.0, SCALE)
    np.testing.assert_array_equal(plain.labels_, scaled.labels_)
    np.testing.assert_array_equal(plain.prototypes_ * SCALE, scaled.prototypes_)
    assert scaled.inertia_ == pytest.approx(plain.inertia_ * SCALE**2, rel=1e-12)
    np.testing.assert_allclose(scaled.loss_curve_, np.multiply(plain.loss_curve_, SCALE**2))
    np.testing.assert_allclose(
        scaled.transform(digits[:20] * SCALE), plain.transform(digits[:20]) * SCALE
    )
    assert scaled.score(digits * SCALE) == pytest.approx(plain.score(digits) * SCALE**2)
    np.testing.assert_allclose(
        scaled.get_aligned_prototypes(digits[:5] * SCALE),
        plain.get_aligned_prototypes(digits[:5]) * SCALE,
    )


def test_mixture_is_equivariant_to_the_pixel_scale(mixture_pair, digits):
    plain, scaled = mixture_pair
    np.testing.assert_array_equal(plain.labels_, scaled.labels_)
    np.testing.assert_array_equal(plain.means_ * SCALE, scaled.means_)
    np.testing.assert_allclose(scaled.variances_, plain.variances_ * SCALE**2)
    assert scaled.var_min_ == pytest.approx(plain.var_min_ * SCALE**2)
    np.testing.assert_allclose(
        scaled.predict_proba(digits * SCALE), plain.predict_proba(digits), atol=1e-12
    )
    # a density in units SCALE times larger is SCALE**d times lower
    shift = digits[0].size * math.log(SCALE)
    np.testing.assert_allclose(
        scaled.score_samples(digits * SCALE), plain.score_samples(digits) - shift
    )
    assert scaled.lower_bound_ == pytest.approx(plain.lower_bound_ - shift)
    np.testing.assert_allclose(
        scaled.loss_curve_, np.add(plain.loss_curve_, math.log(SCALE))
    )


def test_a_given_variance_floor_is_in_the_units_of_x(digits):
    plain = DTIGaussianMixture(K, var_min=0.1, **FIT).fit(digits)
    scaled = DTIGaussianMixture(K, var_min=0.1 * SCALE**2, **FIT).fit(digits * SCALE)
    np.testing.assert_array_equal(plain.labels_, scaled.labels_)
    assert (scaled.variances_ >= 0.1 * SCALE**2 * (1 - 1e-12)).all()


def test_a_given_init_array_is_in_the_units_of_x(digits):
    init = digits[[0, 10, 20, 30]]
    plain = DTIKMeans(K, init=init, **FIT).fit(digits)
    scaled = DTIKMeans(K, init=init * SCALE, **FIT).fit(digits * SCALE)
    np.testing.assert_array_equal(plain.labels_, scaled.labels_)
    np.testing.assert_array_equal(plain.prototypes_ * SCALE, scaled.prototypes_)


def test_an_offset_and_a_non_power_of_two_scale_give_nearly_the_same_clusters(digits):
    plain = DTIKMeans(K, **FIT).fit(digits)
    shifted = DTIKMeans(K, **FIT).fit(digits * 255.0 - 100.0)
    # float32 rounding of (x - min) / span differs in the last bits, nothing more
    assert adjusted_rand_score(plain.labels_, shifted.labels_) > 0.9
    np.testing.assert_allclose(
        (shifted.prototypes_ + 100.0) / 255.0, plain.prototypes_, atol=0.05
    )


@pytest.mark.parametrize("estimator", [DTIKMeans, DTIGaussianMixture])
def test_huge_pixel_values_train_without_overflow(estimator, digits):
    # before the scale, 1e6-valued images overflowed the morphological
    # exponentials, and the NaN sampling grid crashed the interpreter
    model = estimator(K, **FIT).fit(digits * 1e6)
    assert np.isfinite(model.prototypes_).all()
    assert all(torch.isfinite(p).all() for p in model.network_.parameters())


def test_values_beyond_float32_are_refused(digits):
    with pytest.raises(ValueError, match="too large for float32"):
        DTIKMeans(K, **FIT).fit(digits * 1e300)


def test_models_pickled_before_the_scale_predict_as_before(kmeans_pair, digits):
    plain = kmeans_pair[0]
    old = DTIKMeans(K, **FIT).fit(digits)
    del old.data_min_, old.data_range_
    np.testing.assert_array_equal(old.predict(digits), plain.predict(digits))
    np.testing.assert_array_equal(old.prototypes_, plain.prototypes_)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_warp_parameters_do_not_crash_the_sampler(bad):
    images = torch.rand(2, 1, 8, 8, requires_grad=True)
    warps = [Affine(), ThinPlateSpline()]
    params = [torch.zeros(2, 6), torch.zeros(2, 32)]
    params[0][0, 2] = bad
    for p in params:
        p.requires_grad_()
    out = apply_warps(images, warps, params)
    out.sum().backward()  # grid_sample's CPU backward used to segfault here
    assert torch.isfinite(out[1]).all()
    assert torch.isfinite(images.grad).all()


def test_a_diverging_fit_raises_a_clear_error(digits):
    with pytest.raises(FloatingPointError, match="learning_rate"):
        DTIGaussianMixture(K, max_iter=20, learning_rate=100.0, random_state=0).fit(digits)
