"""Tests of the colour-blind fitting that a photometric transformation (colour) turns on.

With ``Color`` in the sequence the estimators standardise the colours of the
starting prototypes, switch the colour transformation on from the first epoch
and show the encoder a colour-standardised copy of every image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dti_sklearn import DTIGaussianMixture, DTIKMeans
from dti_sklearn._images import validate_images
from dti_sklearn._torch.network import PrototypeNetwork
from dti_sklearn._torch.standardize import standardize_channels
from dti_sklearn.transforms import Affine, Color, Identity, make_transformations

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@settings(max_examples=30, deadline=None)
@given(
    images=arrays(np.float32, (2, 3, 5, 5), elements=st.floats(0, 1, width=32)),
    gains=arrays(np.float32, (1, 3, 1, 1), elements=st.floats(0.25, 3, width=32)),
    signs=arrays(np.float32, (1, 3, 1, 1), elements=st.sampled_from([-1.0, 1.0])),
    offsets=arrays(np.float32, (1, 3, 1, 1), elements=st.floats(-1, 1, width=32)),
)
def test_standardisation_removes_any_gain_and_offset(images, gains, signs, offsets):
    x = torch.from_numpy(images)
    # a distinct extreme per channel, so that polarity is well defined: at 3
    # it lies further from the mean than any value in [0, 1] (at 2, a channel
    # of ones with a single zero ties, and rounding picks the polarity)
    x[:, :, 0, 0] = 3.0
    recoloured = x * torch.from_numpy(gains * signs) + torch.from_numpy(offsets)
    before = x.clone()
    out = standardize_channels(x)
    assert torch.equal(x, before)  # the input is not modified
    assert out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out, standardize_channels(recoloured), atol=1e-4)


def test_standardisation_keeps_polarity_when_asked_and_zeroes_constant_channels():
    x = torch.zeros(1, 2, 3, 3)
    x[0, 0, 1, 1] = 1.0  # one bright pixel on a dark channel
    x[0, 1] = 0.7  # a constant channel
    flipped = standardize_channels(-x, flip_polarity=True)
    kept = standardize_channels(-x, flip_polarity=False)
    assert flipped[0, 0, 1, 1] == 1 and flipped[0, 0].sum() == 1
    assert kept[0, 0, 1, 1] == 0 and kept[0, 0].sum() == 8
    assert not flipped[0, 1].any() and not kept[0, 1].any()


def test_only_a_photometric_sequence_gives_the_encoder_a_standardised_copy():
    prototypes = torch.rand(2, 3, 8, 8)
    coloured = PrototypeNetwork(prototypes, [Color(), Affine()])
    predicted = PrototypeNetwork(prototypes, [Color(closed_form=False), Affine()])
    plain = PrototypeNetwork(prototypes, [Affine()])
    assert coloured.standardized_copy and predicted.standardized_copy
    assert not plain.standardized_copy
    # the raw colours only for the heads of a predicted colour
    assert predicted.encoder.features[0][0].in_channels == 6
    assert coloured.encoder.features[0][0].in_channels == 3
    assert plain.encoder.features[0][0].in_channels == 3
    # the predicted colour is still exactly the identity at initialisation
    images = torch.rand(4, 3, 8, 8)
    means, _ = predicted(images)
    assert torch.equal(means, prototypes.unsqueeze(0).expand(4, -1, -1, -1, -1))
    # the solved one (the default) is the best recolouring of the unwarped prototypes
    means, _ = coloured(images)
    unwarped = prototypes.unsqueeze(0).expand(4, -1, -1, -1, -1)
    assert torch.equal(means, Color().solve(unwarped, images))


def test_the_standardised_copy_reaches_the_heads():
    torch.manual_seed(0)
    network = PrototypeNetwork(torch.rand(2, 3, 8, 8), [Color(closed_form=False), Affine()])
    torch.nn.init.normal_(network.heads.out_weight[1])  # affine heads now react to features
    images = torch.rand(3, 3, 8, 8)
    # the same image recoloured: only the raw half of the encoder input changes
    recoloured = 0.5 - 0.3 * images
    raw_weight = network.encoder.features[0][0].weight[:, :3]
    with torch.no_grad():
        raw_weight.zero_()  # encoder blind to the raw colours, sees only the copy
        network.encoder.project[1].weight[:, -12:] = 0  # and to their statistics
    same = network.predict_parameters(images)[1]
    other = network.predict_parameters(recoloured)[1]
    assert torch.allclose(same, other, atol=1e-5)


def test_with_the_solved_colour_the_predicted_warps_ignore_the_colours():
    torch.manual_seed(0)
    network = PrototypeNetwork(torch.rand(2, 3, 8, 8), [Color(), Affine()])
    torch.nn.init.normal_(network.heads.out_weight[1])  # affine heads react to features
    images = torch.rand(3, 3, 8, 8)
    signs = torch.tensor([1.0, -1.0, 1.0]).view(1, 3, 1, 1)
    recoloured = 0.4 + 0.3 * signs * images  # any gain, of either sign, and offset
    with torch.no_grad():
        same = network.predict_parameters(images)[0]
        other = network.predict_parameters(recoloured)[0]
        means, _ = network(images)
        means_recoloured, _ = network(recoloured)
    assert same.abs().max() > 1e-3  # the warps are not trivially zero
    torch.testing.assert_close(same, other, atol=1e-5, rtol=1e-4)
    # the aligned prototypes then follow each image's colours
    torch.testing.assert_close(
        means_recoloured, 0.4 + 0.3 * signs.unsqueeze(1) * means, atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_colour_blind_starting_prototypes_are_standardised_samples(init):
    rng = np.random.default_rng(0)
    est = DTIKMeans(4, transforms=["col", "aff"], init=init)
    raw = rng.random((20, 6, 6, 3), dtype=np.float32)
    images = validate_images(est, raw, image_shape=None, reset=True)
    centres = est._initial_centres(images, seed=0, colour_blind=True)
    standardised = standardize_channels(torch.from_numpy(images)).numpy()
    for centre in centres:
        assert np.abs(standardised - centre).reshape(20, -1).max(axis=1).min() < 1e-6
    grey = est._initial_centres(images, seed=0, colour_blind=False)
    for centre in grey:
        assert np.abs(images - centre).reshape(20, -1).max(axis=1).min() < 1e-6


def test_auto_curriculum_puts_colour_on_from_the_first_epoch():
    from dti_sklearn._schedule import curriculum_starts

    starts = curriculum_starts("auto", make_transformations(["col", "aff", "mor"]), 20)
    assert starts == [0, 3, 6]
    assert curriculum_starts("auto", [Identity(), Affine()], 20) == [0, 3]


@pytest.mark.parametrize("colour", [Color(), Color(closed_form=False)], ids=repr)
@pytest.mark.parametrize("cls", [DTIKMeans, DTIGaussianMixture])
def test_colour_fits_leave_the_callers_array_and_give_finite_attributes(cls, colour):
    rng = np.random.default_rng(1)
    images = rng.random((40, 8, 8, 3), dtype=np.float32)
    before = images.copy()
    est = cls(3, transforms=[colour, "aff"], max_iter=2, batch_size=16, random_state=0)
    est.fit(images)
    np.testing.assert_array_equal(images, before)
    assert np.isfinite(est.prototypes_).all()
    assert est.network_.standardized_copy


@pytest.mark.parametrize(
    ("n_samples", "kmeans", "mixture", "colour"),
    [(10_000, 58, 58, 58), (1_797, 200, 200, 200), (100, 200, 200, 200),
     (1_000_000, 20, 20, 20)],
)
def test_auto_epochs_aim_for_the_step_budget_within_the_bounds(
    n_samples, kmeans, mixture, colour
):
    from dti_sklearn._base import PHOTOMETRIC_AUTO_STEPS, _auto_epochs

    assert _auto_epochs("auto", n_samples, 64, DTIKMeans.auto_steps) == kmeans
    assert _auto_epochs("auto", n_samples, 64, DTIGaussianMixture.auto_steps) == mixture
    assert _auto_epochs("auto", n_samples, 64, PHOTOMETRIC_AUTO_STEPS) == colour
    assert _auto_epochs(7, n_samples, 64) == 7


@pytest.mark.parametrize(
    ("cls", "grey"), [(DTIKMeans, 30), (DTIGaussianMixture, 10)],
)
def test_a_fit_resolves_auto_to_its_step_budget(cls, grey, monkeypatch):
    from dti_sklearn import _base

    # one step per epoch below
    monkeypatch.setattr(_base.BaseDTI, "auto_steps", 30)
    monkeypatch.setattr(DTIGaussianMixture, "auto_steps", 10)
    monkeypatch.setattr(_base, "PHOTOMETRIC_AUTO_STEPS", 20)
    monkeypatch.setattr(_base, "AUTO_EPOCHS", (1, 200))
    rng = np.random.default_rng(2)
    images = rng.random((30, 6, 6, 3), dtype=np.float32)
    for transforms, epochs in ((["aff"], grey), (["col", "aff"], 20)):
        model = cls(2, transforms=transforms, batch_size=30, random_state=0).fit(images)
        assert model.n_iter_ == epochs and len(model.loss_curve_) == epochs


def test_colour_module_clusters_coloured_digits_by_shape():
    """Digits in random foreground and background colours: the clusters follow the digits.

    Measured on this data (seed 0, 60 epochs, colour and affine): 0.80 accuracy with the
    colour solved in closed form and the encoder on the standardised copy only (the
    default), 0.93 when the encoder also read the raw images, 0.49 with the colour
    predicted by the network (``Color(closed_form=False)``); 0.25 before the colour-blind
    fitting (colour heads behind an identity phase on the colours, prototypes started from
    coloured samples, encoder on the raw images only).  With the default transformations
    (colour, affine, morphological, thin-plate spline), seeds 0-4, the standardised copy
    alone did better: 0.84-0.97 (mean 0.91) against 0.83-0.97 (mean 0.88).
    """
    from dti_sklearn.datasets import load_digits_images, make_mnist_color
    from dti_sklearn.metrics import cluster_accuracy

    images, labels = load_digits_images()
    coloured = make_mnist_color(images, random_state=0)
    est = DTIKMeans(10, transforms=["col", "aff"], max_iter=60, random_state=0)
    assert cluster_accuracy(labels, est.fit_predict(coloured)) > 0.7


def test_a_pickled_colour_model_predicts_the_same():
    import pickle

    rng = np.random.default_rng(3)
    images = rng.random((40, 8, 8, 3), dtype=np.float32)
    est = DTIKMeans(3, transforms=["col", "aff"], max_iter=2, batch_size=16, random_state=0)
    est.fit(images)
    loaded = pickle.loads(pickle.dumps(est))
    assert loaded.network_.standardized_copy
    np.testing.assert_array_equal(loaded.predict(images), est.predict(images))
    np.testing.assert_allclose(loaded.transform(images), est.transform(images))


def test_the_encoder_gives_absolute_colour_levels_to_the_heads():
    from dti_sklearn._torch.encoder import Encoder

    torch.manual_seed(0)
    images = torch.rand(2, 6, 8, 8)
    brighter = images.clone()
    brighter[:, :3] += 0.3  # the raw half only
    for statistics_channels, differs in ((0, False), (3, True)):
        encoder = Encoder(6, (8, 8), statistics_channels=statistics_channels)
        with torch.no_grad():
            encoder.features[0][0].weight.zero_()  # convolutions blind to every level
        same = torch.allclose(encoder(images), encoder(brighter), atol=1e-6)
        assert same is not differs
    network = PrototypeNetwork(torch.rand(2, 3, 8, 8), [Color(closed_form=False), Affine()])
    assert network.encoder.statistics_channels == 3
    solved = PrototypeNetwork(torch.rand(2, 3, 8, 8), [Color(), Affine()])
    assert solved.encoder.statistics_channels == 0
    assert PrototypeNetwork(torch.rand(2, 3, 8, 8), [Affine()]).encoder.statistics_channels == 0
    one_pixel = Encoder(2, (1, 1), statistics_channels=1)(torch.rand(4, 2, 1, 1))
    assert torch.isfinite(one_pixel).all()  # the standard deviation of one value is 0, not NaN


def test_a_closed_form_colour_gets_no_head_and_fits_each_sample():
    torch.manual_seed(0)
    prototypes = torch.rand(2, 3, 8, 8)
    predicted = PrototypeNetwork(prototypes, [Color(closed_form=False), Affine()])
    solved = PrototypeNetwork(prototypes, [Color(), Affine()])
    n_predicted = sum(p.numel() for p in predicted.heads.parameters())
    n_solved = sum(p.numel() for p in solved.heads.parameters())
    assert n_solved < n_predicted
    images = 0.2 + 0.5 * prototypes[[1, 0, 1]]  # each a gain and offset of a prototype
    with torch.no_grad():
        means, _ = solved(images, active=[0])  # colour only, on from the first epoch
    torch.testing.assert_close(means[[0, 1, 2], [1, 0, 1]], images)
    params = solved.predict_parameters(images)
    with pytest.raises(ValueError, match="needs the images"):
        solved.align(params, 3)


def test_a_pickled_predicted_colour_model_predicts_the_same():
    import pickle

    rng = np.random.default_rng(3)
    images = rng.random((40, 8, 8, 3), dtype=np.float32)
    est = DTIKMeans(
        3, transforms=[Color(closed_form=False), "aff"], max_iter=2, batch_size=16,
        random_state=0,
    ).fit(images)
    loaded = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(loaded.predict(images), est.predict(images))
    np.testing.assert_allclose(loaded.transform(images), est.transform(images))


def test_a_colour_pickled_before_closed_form_existed_stays_predicted():
    import pickle

    old = Color(closed_form=False)
    del old.__dict__["closed_form"]  # the state of a Color pickled before the option
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.get_params() == {"closed_form": False} and not loaded.solved


def test_the_solved_colour_scales_the_mixtures_deviations_by_its_gain():
    """A component recoloured by y = o + g x has the standard deviation |g| sigma."""
    torch.manual_seed(0)
    prototypes = torch.rand(2, 3, 6, 6)
    log_deviations = torch.randn(2, 3, 6, 6)
    network = PrototypeNetwork(prototypes, [Color()], log_deviations=log_deviations)
    gains = torch.tensor([-2.0, 0.5, 3.0]).view(1, 3, 1, 1)
    images = 0.1 + gains * prototypes[[1, 0]]  # sample b: prototype 1 - b, one gain per channel
    with torch.no_grad():
        means, deviations = network(images)
    torch.testing.assert_close(means[[0, 1], [1, 0]], images)
    expected = log_deviations.exp()[[1, 0]] * gains.abs()
    torch.testing.assert_close(deviations[[0, 1], [1, 0]], expected)


def test_a_transformation_solved_by_default_rules_leaves_the_deviations_alone():
    """The base class's ``solve_with_deviations`` solves the means and keeps the deviations."""

    class Brighten(Identity):  # no name of its own: stays out of the registry
        @property
        def solved(self):
            return True

        def solve(self, aligned, images):
            return aligned + 1

    aligned, deviations = torch.zeros(2, 1, 1, 3, 3), torch.ones(2, 1, 1, 3, 3)
    means, same = Brighten().solve_with_deviations(aligned, deviations, torch.zeros(2, 1, 3, 3))
    assert same is deviations
    torch.testing.assert_close(means, aligned + 1)
    assert Color().solve_with_deviations(aligned + torch.rand(2, 1, 1, 3, 3), None,
                                         torch.rand(2, 1, 3, 3))[1] is None
