"""ImageStandardizer: invariance to per-channel gain and offset, layouts, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from dti_sklearn import DTIKMeans
from dti_sklearn.datasets import make_mnist_color, make_shapes
from dti_sklearn.preprocessing import ImageStandardizer


@parametrize_with_checks([ImageStandardizer(), ImageStandardizer(channels="principal")])
def test_sklearn_compatible_transformer(estimator, check):
    check(estimator)


def _recolour(images: np.ndarray, seed: int) -> np.ndarray:
    """Apply a random gain (either sign, |gain| >= 0.2) and offset to every channel."""
    rng = np.random.default_rng(seed)
    n, c = images.shape[0], images.shape[-1]
    gain = rng.uniform(0.2, 2.0, (n, 1, 1, c)) * rng.choice([-1.0, 1.0], (n, 1, 1, c))
    return gain * images + rng.uniform(-1, 1, (n, 1, 1, c))


@pytest.fixture(scope="module")
def coloured():
    digits = load_digits()
    return make_mnist_color(digits.images / 16.0, random_state=0), digits.target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_output_ignores_gain_and_offset_of_every_channel(seed):
    images = np.random.default_rng(10 + seed).random((50, 8, 8, 3))
    std = ImageStandardizer().fit(images)
    expected = std.transform(images)
    assert np.allclose(std.transform(_recolour(images, seed)), expected, atol=1e-5)


def test_colourings_of_the_same_digits_become_equal():
    digits = load_digits().images[:40] / 16.0
    a = make_mnist_color(digits, random_state=1)
    b = make_mnist_color(digits, random_state=2)
    assert not np.allclose(a, b, atol=0.1)
    std = ImageStandardizer().fit(a)
    # Equal where the colours have contrast in every channel.
    contrast = np.abs(a.max(axis=(1, 2)) - a.min(axis=(1, 2))).min(axis=1) > 0.05
    contrast &= np.abs(b.max(axis=(1, 2)) - b.min(axis=(1, 2))).min(axis=1) > 0.05
    assert contrast.sum() >= 10
    assert np.allclose(std.transform(a)[contrast], std.transform(b)[contrast], atol=1e-4)


def test_range_dtype_shape_and_input_untouched(coloured):
    images = coloured[0][:20].astype(np.float64)
    before = images.copy()
    out = ImageStandardizer().fit_transform(images)
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.array_equal(images, before)


@pytest.mark.parametrize("layout", ["nhw", "flat"])
def test_grayscale_and_flat_layouts(layout):
    images = load_digits().images[:10] / 16.0
    expected = ImageStandardizer().fit_transform(images)
    if layout == "nhw":
        out = ImageStandardizer().fit_transform(3.0 - 2.0 * images)
        assert out.shape == images.shape
    else:
        flat = (3.0 - 2.0 * images).reshape(10, -1)
        out = ImageStandardizer(image_shape=(8, 8)).fit_transform(flat)
        assert out.shape == flat.shape
        out = out.reshape(images.shape)
    assert np.allclose(out, expected, atol=1e-6)


def test_keep_polarity_does_not_flip_a_negated_image():
    images = load_digits().images[:10] / 16.0
    std = ImageStandardizer(polarity="keep").fit(images)
    assert np.allclose(std.transform(-images), 1.0 - std.transform(images), atol=1e-6)
    auto = ImageStandardizer().fit(images)
    assert np.allclose(auto.transform(-images), auto.transform(images), atol=1e-6)


def test_constant_channel_becomes_zero_without_nan():
    images = np.random.default_rng(0).random((4, 5, 5, 3))
    images[1, :, :, 2] = 0.7
    images[3] = 0.0
    out = ImageStandardizer().fit_transform(images)
    assert np.isfinite(out).all()
    assert (out[1, :, :, 2] == 0).all() and (out[3] == 0).all()
    assert out[1, :, :, :2].max() == 1.0


def test_bad_polarity_and_shape_are_named():
    images = np.zeros((3, 4, 4))
    with pytest.raises(ValueError, match="polarity"):
        ImageStandardizer(polarity="flip").fit(images)
    std = ImageStandardizer().fit(images)
    with pytest.raises(ValueError, match="shape"):
        std.transform(np.zeros((3, 5, 5)))


def test_pipeline_clusters_recoloured_digits_alike(coloured):
    images, _ = coloured
    images = images[:300]
    pipe = make_pipeline(
        ImageStandardizer(), DTIKMeans(4, transforms=["aff"], max_iter=2, random_state=0)
    ).fit(images)
    assert pipe[-1].prototypes_.shape == (4, 8, 8, 3)
    assert np.array_equal(pipe.predict(_recolour(images, 3)), pipe.predict(images))


def _two_colour_images(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Digits as blends between a random foreground and background colour, and the blends."""
    rng = np.random.default_rng(seed)
    blends = load_digits().images[:40] / 16.0
    foreground, background = rng.random((2, 40, 1, 1, 3))
    return background + blends[..., None] * (foreground - background), blends


@pytest.mark.parametrize("seed", [0, 1])
def test_principal_channel_recovers_the_blend_of_two_colours(seed):
    images, blends = _two_colour_images(seed)
    std = ImageStandardizer(channels="principal").fit(images)
    out = std.transform(images)
    assert out.shape == blends.shape and out.dtype == np.float32
    # The grey blend, standardised, whatever the two colours and their recolouring.
    expected = ImageStandardizer().fit_transform(blends)
    assert np.allclose(out, expected, atol=1e-4)
    assert np.allclose(std.transform(_recolour(images, seed)), expected, atol=1e-4)


def test_principal_channel_is_less_noisy_than_each_channel():
    noisy, _ = make_shapes(300, image_size=16, color=True, noise=0.05, random_state=0)
    clean, _ = make_shapes(300, image_size=16, color=True, noise=0.0, random_state=0)

    def median_shift(channels):
        std = ImageStandardizer(channels=channels).fit(clean)
        shift = std.transform(noisy) - std.transform(clean)
        return np.median(np.sqrt((shift**2).reshape(len(shift), -1).mean(axis=1)))

    each, principal = median_shift("each"), median_shift("principal")
    assert principal < 0.7 * each, (principal, each)


def test_principal_channel_layouts_and_grey_images():
    images, blends = _two_colour_images(2)
    flat = images.reshape(40, -1)
    std = ImageStandardizer(channels="principal", image_shape=(8, 8, 3)).fit(flat)
    out = std.transform(flat)
    assert out.shape == (40, 64)
    assert np.allclose(out.reshape(40, 8, 8), ImageStandardizer().fit_transform(blends), atol=1e-4)
    grey = ImageStandardizer(channels="principal").fit_transform(blends)
    assert np.array_equal(grey, ImageStandardizer().fit_transform(blends))


def test_principal_channel_of_a_constant_image_is_zero():
    images, _ = _two_colour_images(3)
    images[5] = 0.4
    before = images.copy()
    out = ImageStandardizer(channels="principal").fit_transform(images)
    assert np.isfinite(out).all() and (out[5] == 0).all() and out[4].max() == 1.0
    assert np.array_equal(images, before)


def test_bad_channels_are_named():
    with pytest.raises(ValueError, match="channels"):
        ImageStandardizer(channels="grey").fit(np.zeros((3, 4, 4, 3)))


def test_pipeline_with_the_principal_channel_clusters_grey_prototypes(coloured):
    images, _ = coloured
    images = images[:300]
    pipe = make_pipeline(
        ImageStandardizer(channels="principal"),
        DTIKMeans(4, transforms=["aff"], max_iter=2, random_state=0),
    ).fit(images)
    assert pipe[-1].prototypes_.shape == (4, 8, 8)
    assert np.array_equal(pipe.predict(_recolour(images, 4)), pipe.predict(images))


def test_principal_channel_with_kept_polarity_grows_with_the_sum_of_the_channels():
    _, blends = _two_colour_images(4)
    brighter = 0.1 + blends[..., None] * np.array([0.5, 0.3, -0.1])  # channel sum grows
    darker = 0.9 - blends[..., None] * np.array([0.5, 0.3, -0.1])
    keep = ImageStandardizer(polarity="keep", channels="principal").fit(brighter)
    expected = ImageStandardizer(polarity="keep").fit_transform(blends)
    assert np.allclose(keep.transform(brighter), expected, atol=1e-4)
    assert np.allclose(keep.transform(darker), 1.0 - expected, atol=1e-4)
