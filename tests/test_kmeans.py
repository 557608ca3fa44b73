"""Tests of DTIKMeans: layouts, fitted attributes, training plumbing and errors.

Every fit is tiny (about a hundred 8 x 8 digits, one to three epochs): these
tests check the plumbing, not the clustering quality.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist
from sklearn.datasets import load_digits

from dti_sklearn import DTIGaussianMixture, DTIKMeans, _base, _inference, _training
from dti_sklearn._images import validate_images
from dti_sklearn._schedule import (
    DECAY_PHASE,
    active_at,
    curriculum_starts,
    learning_rate_at,
    warmup_rate,
)
from dti_sklearn._torch.network import PrototypeNetwork
from dti_sklearn.kmeans import auto_transforms
from dti_sklearn.transforms import (
    Affine,
    Identity,
    Morphological,
    ThinPlateSpline,
    make_transformations,
)

N, H, W, K = 100, 8, 8, 3
FAST = {"max_iter": 1, "batch_size": 32, "random_state": 0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    """(N, 8, 8) float64 digits in [0, 1]."""
    return load_digits().images[:N] / 16.0


@pytest.fixture(scope="module")
def color_digits(digits):
    """(N, 8, 8, 3) digits with a random foreground colour per image."""
    colours = np.random.RandomState(0).uniform(0.2, 1.0, size=(N, 1, 1, 3))
    return digits[..., None] * colours


@pytest.fixture(scope="module")
def fitted(digits):
    """A model with the default transformation sequence, fitted once."""
    return DTIKMeans(K, max_iter=2, batch_size=32, random_state=0).fit(digits)


def _layouts(digits, color_digits):
    """(name, X, image_shape parameter, expected image_shape_)."""
    return {
        "nhw": (digits, None, (H, W)),
        "nhwc": (color_digits, None, (H, W, 3)),
        "flat_hw": (digits.reshape(N, -1), (H, W), (H, W)),
        "flat_hwc": (color_digits.reshape(N, -1), (H, W, 3), (H, W, 3)),
        "flat_plain": (digits.reshape(N, -1), None, (1, H * W)),
    }


LAYOUTS = ["nhw", "nhwc", "flat_hw", "flat_hwc", "flat_plain"]


# ------------------------------------------------------------------- layouts
@pytest.mark.filterwarnings("ignore:X is 2-D with:UserWarning")  # 1 x d rows on purpose
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fitted_shapes_for_every_layout(layout, digits, color_digits):
    X, image_shape, expected_shape = _layouts(digits, color_digits)[layout]
    d = int(np.prod(expected_shape))
    model = DTIKMeans(K, transforms=["aff"], image_shape=image_shape, **FAST).fit(X)
    assert model.image_shape_ == expected_shape
    assert model.n_features_in_ == d
    assert model.prototypes_.shape == (K, *expected_shape)
    assert model.cluster_centers_.shape == (K, d)
    np.testing.assert_array_equal(model.cluster_centers_, model.prototypes_.reshape(K, -1))
    assert model.labels_.shape == (N,)
    assert set(np.unique(model.labels_)) <= set(range(K))
    assert isinstance(model.inertia_, float) and model.inertia_ >= 0
    assert model.n_iter_ == 1 and len(model.loss_curve_) == 1
    assert [type(t) for t in model.transforms_] == [Affine]
    assert isinstance(model.network_, torch.nn.Module)
    assert model.transform(X[:7]).shape == (7, K)
    assert model.predict(X[:7]).shape == (7,)
    aligned = model.get_aligned_prototypes(X[:5])
    if X.ndim == 2:
        assert aligned.shape == (5, K, d)
    else:
        assert aligned.shape == (5, K, *expected_shape)
    for value in (model.prototypes_, model.cluster_centers_, aligned, model.transform(X)):
        assert np.isfinite(value).all()
    assert np.isfinite(model.loss_curve_).all() and math.isfinite(model.inertia_)


@pytest.mark.filterwarnings("ignore:X is 2-D with:UserWarning")  # 1 x d rows on purpose
@pytest.mark.parametrize("layout", LAYOUTS)
def test_identity_distances_are_in_the_callers_layout(layout, digits, color_digits):
    # With the identity only, every aligned prototype is the prototype itself:
    # transform() must be the Euclidean distance of the caller's rows to
    # cluster_centers_, which checks every reshape and channel move.
    X, image_shape, _ = _layouts(digits, color_digits)[layout]
    model = DTIKMeans(K, transforms=None, image_shape=image_shape, **FAST).fit(X)
    rows = X.reshape(N, -1)
    expected = cdist(rows, model.cluster_centers_)
    np.testing.assert_allclose(model.transform(X), expected, rtol=1e-5, atol=1e-5)
    aligned = model.get_aligned_prototypes(X[:4])
    broadcast = np.broadcast_to(model.prototypes_, (4, *model.prototypes_.shape))
    np.testing.assert_allclose(aligned.reshape(4, K, -1), broadcast.reshape(4, K, -1))
    assert model.inertia_ == pytest.approx((expected.min(axis=1) ** 2).sum(), rel=1e-5)


def test_channels_last_and_flat_rows_give_the_same_model(color_digits):
    images = DTIKMeans(K, transforms=["aff"], **FAST).fit(color_digits)
    rows = DTIKMeans(K, transforms=["aff"], image_shape=(H, W, 3), **FAST).fit(
        color_digits.reshape(N, -1)
    )
    np.testing.assert_array_equal(images.labels_, rows.labels_)
    np.testing.assert_array_equal(images.prototypes_, rows.prototypes_)


def test_uint8_input_is_scaled(digits):
    X8 = np.round(digits * 255).astype(np.uint8)
    a = DTIKMeans(K, transforms=["aff"], **FAST).fit(X8)
    b = DTIKMeans(K, transforms=["aff"], **FAST).fit(X8 / 255.0)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_allclose(a.prototypes_, b.prototypes_, atol=1e-5)
    assert a.prototypes_.max() <= 1.5  # scaled, not 0..255
    np.testing.assert_array_equal(a.predict(X8), a.labels_)
    internal = validate_images(DTIKMeans(), X8, image_shape=None, reset=True)
    np.testing.assert_allclose(internal[:, 0], X8 / 255.0, rtol=0, atol=1e-7)


@pytest.mark.filterwarnings("ignore:X is 2-D with:UserWarning")  # 1 x d rows on purpose
def test_auto_transforms_put_the_solved_colour_in_front_on_images_of_16_by_16_or_more(digits):
    big = np.kron(digits[:60], np.ones((2, 2)))  # 16 x 16
    model = DTIKMeans(K, max_iter=1, random_state=0).fit(big)
    assert model.transforms == "auto"  # the parameter is left as given
    names = [type(t).__name__ for t in model.transforms_]
    assert names == ["Color", "Affine", "ThinPlateSpline", "Morphological"]
    assert model.transforms_[0].closed_form
    small = DTIKMeans(K, max_iter=1, random_state=0).fit(digits[:60])  # 8 x 8
    assert [type(t).__name__ for t in small.transforms_] == names[1:]
    rows = DTIKMeans(K, max_iter=1, random_state=0).fit(big.reshape(len(big), -1))
    assert [type(t).__name__ for t in rows.transforms_] == names[1:]  # 1 x 256 rows
    assert auto_transforms(15, 64) == auto_transforms(64, 15) == tuple(_base.DEFAULT_TRANSFORMS)
    assert DTIGaussianMixture().transforms == _base.DEFAULT_TRANSFORMS


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (3, 5), (12, 20), (28, 28), (5, 9, 2)])
def test_odd_image_sizes(shape):
    X = np.random.RandomState(0).rand(12, *shape)
    starts = [0] * len(auto_transforms(*shape[:2]))
    model = DTIKMeans(K, max_iter=2, batch_size=8, curriculum=starts, random_state=0).fit(X)
    aligned = model.get_aligned_prototypes(X[:2])
    assert aligned.shape == (2, K, *shape)
    assert np.isfinite(aligned).all() and np.isfinite(model.transform(X)).all()
    np.testing.assert_array_equal(model.predict(X), model.labels_)


@pytest.mark.parametrize("layout", ["nhwc", "flat_hwc"])
def test_random_init_picks_training_images_in_the_callers_layout(layout, digits, color_digits):
    X, image_shape, expected_shape = _layouts(digits, color_digits)[layout]
    model = DTIKMeans(
        K, transforms=None, init="random", image_shape=image_shape, learning_rate=1e-7, **FAST
    ).fit(X)
    rows = X.reshape(N, -1)
    nearest = cdist(model.cluster_centers_, rows).min(axis=1)
    assert nearest.max() < 1e-4  # every prototype is (still) one of the images
    assert model.prototypes_.shape == (K, *expected_shape)


def test_colour_and_projective_modules_run_on_colour_images(color_digits):
    model = DTIKMeans(
        K, transforms=["col", "proj"], curriculum=[0, 0], max_iter=2, batch_size=32,
        learning_rate=1e-2, random_state=0,
    ).fit(color_digits)
    aligned = model.get_aligned_prototypes(color_digits[:5])
    assert aligned.shape == (5, K, H, W, 3)
    broadcast = np.broadcast_to(model.prototypes_, aligned.shape)
    assert np.abs(aligned - broadcast).max() > 1e-3
    # Channels last, like the input: transform() is the distance to these.
    expected = np.sqrt(((color_digits[:5, None] - aligned) ** 2).sum(axis=(2, 3, 4)))
    np.testing.assert_allclose(model.transform(color_digits[:5]), expected, rtol=1e-4, atol=1e-5)


def test_pickle_round_trip(fitted, digits):
    import pickle

    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.transform(digits), fitted.transform(digits))


# ------------------------------------------------------------- consistency
def test_labels_predict_and_transform_agree(fitted, digits):
    labels = fitted.predict(digits)
    np.testing.assert_array_equal(fitted.labels_, labels)
    np.testing.assert_array_equal(labels, fitted.transform(digits).argmin(axis=1))


def test_fit_predict_returns_labels(digits):
    model = DTIKMeans(K, transforms=["aff"], **FAST)
    labels = model.fit_predict(digits)
    np.testing.assert_array_equal(labels, model.labels_)


def test_transform_and_score(fitted, digits):
    distances = fitted.transform(digits)
    assert distances.dtype == np.float64
    assert distances.shape == (N, K)
    assert (distances >= 0).all()
    assert fitted.score(digits) == pytest.approx(-np.mean(distances.min(axis=1) ** 2))
    assert fitted.inertia_ == pytest.approx(np.sum(distances.min(axis=1) ** 2), rel=1e-6)


def test_transformations_change_the_aligned_prototypes(fitted, digits):
    aligned = fitted.get_aligned_prototypes(digits[:10])
    assert aligned.shape == (10, K, H, W)
    broadcast = np.broadcast_to(fitted.prototypes_, aligned.shape)
    assert np.abs(aligned - broadcast).max() > 1e-4
    # transform() is the distance to these aligned prototypes
    expected = np.sqrt(((digits[:10, None] - aligned) ** 2).sum(axis=(2, 3)))
    np.testing.assert_allclose(fitted.transform(digits[:10]), expected, rtol=1e-4, atol=1e-5)


def test_fitted_attributes_are_finite(fitted):
    for name in ("prototypes_", "cluster_centers_", "labels_", "loss_curve_"):
        assert np.isfinite(np.asarray(getattr(fitted, name))).all(), name
    assert math.isfinite(fitted.inertia_)
    for name, param in fitted.network_.named_parameters():
        assert torch.isfinite(param).all(), name


# ----------------------------------------------------------------- gradients
def test_one_epoch_moves_prototypes_and_heads(digits):
    init = digits[:K].copy()
    model = DTIKMeans(K, transforms=["aff"], init=init, curriculum=[0], **FAST).fit(digits)
    assert not np.allclose(model.prototypes_, init)
    heads = model.network_.heads
    assert heads.out_weight[0].abs().sum() > 0  # starts at exactly zero
    assert heads.out_bias[0].abs().sum() > 0


def test_gradients_reach_prototypes_heads_and_encoder(fitted, digits):
    network = copy.deepcopy(fitted.network_).train()
    x = torch.from_numpy(digits[:16, None].astype(np.float32))
    means, _ = network(x)
    loss = (x.unsqueeze(1) - means).pow(2).flatten(2).mean(2).min(1).values.mean()
    loss.backward()
    named = dict(network.named_parameters())
    assert named["prototypes"].grad.abs().sum() > 0
    assert named["heads.hidden_weight"].grad.abs().sum() > 0
    for m in range(len(network.transformations)):
        assert network.heads.out_weight[m].grad.abs().sum() > 0
    encoder_grads = [p.grad for p in network.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in encoder_grads)
    assert sum(g.abs().sum() for g in encoder_grads) > 0


def test_batch_loss_matches_the_all_pairs_loss_and_gradient(fitted, digits):
    # DTIKMeans._batch_loss aligns only the nearest prototype with gradient;
    # it must give the loss and gradients of min_k over all B x K pairs.
    x = torch.from_numpy(digits[:16, None].astype(np.float32))
    active = list(range(len(fitted.transforms_)))
    fast_net = copy.deepcopy(fitted.network_).train()
    ref_net = copy.deepcopy(fitted.network_).train()
    loss, assigned = fitted._batch_loss(fast_net, x, active)
    loss.backward()
    means, _ = ref_net(x, active)
    distances = (x.unsqueeze(1) - means).pow(2).flatten(2).mean(2)
    reference = distances.min(1).values.mean()
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    np.testing.assert_array_equal(assigned.numpy(), distances.argmin(1).numpy())
    for (name, p), q in zip(fast_net.named_parameters(), ref_net.parameters()):
        if q.grad is None:
            assert p.grad is None or not p.grad.any(), name
            continue
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


# ----------------------------------------------------------- reproducibility
def test_same_seed_same_model_and_different_seeds_differ(digits):
    kwargs = {"transforms": ["aff", "mor"], "max_iter": 2, "batch_size": 32}
    a = DTIKMeans(K, random_state=3, **kwargs).fit(digits)
    b = DTIKMeans(K, random_state=3, **kwargs).fit(digits)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.prototypes_, b.prototypes_)
    assert a.loss_curve_ == b.loss_curve_
    c = DTIKMeans(K, random_state=4, **kwargs).fit(digits)
    assert not np.array_equal(a.prototypes_, c.prototypes_)


@pytest.mark.parametrize("estimator", [DTIKMeans(K), DTIGaussianMixture(K)])
def test_training_gradients_do_not_depend_on_thread_scheduling(estimator):
    """Same seed, same model across runs on several threads: the gradient of a
    training step is bitwise the same every time.  (Advanced indexing of the
    prototypes had a backward that accumulates in a thread-dependent order.)"""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 28, 28, generator=generator)
    estimator._resolve_auto_parameters(x.numpy())  # as fit does (the mixture's var_min)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        centres = x[:K].clone()
        network = PrototypeNetwork(
            centres,
            [t.for_image_size(28, 28) for t in make_transformations(["aff", "mor"])],
            **estimator._network_kwargs(x, centres),
        )
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(4):
            network.zero_grad()
            loss, _ = estimator._batch_loss(network, x, [0, 1])
            loss.backward()
            grads.append({n: p.grad.clone() for n, p in network.named_parameters()
                          if p.grad is not None})
    finally:
        torch.set_num_threads(saved)
    assert "prototypes" in grads[0]
    for grad in grads[1:]:
        for name, value in grads[0].items():
            assert torch.equal(grad[name], value), name


def test_fit_leaves_the_global_random_state_alone(digits):
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    DTIKMeans(K, transforms=["aff"], **FAST).fit(digits)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1])


# ------------------------------------------------------- caller's data safe
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint8])
def test_callers_array_is_never_modified(dtype, digits):
    X = (digits * 255).astype(dtype) if dtype == np.uint8 else digits.astype(dtype)
    X = np.ascontiguousarray(X)
    original = X.copy()
    X.setflags(write=False)  # read-only input must work too
    model = DTIKMeans(K, transforms=["aff"], **FAST).fit(X)
    model.predict(X)
    model.transform(X)
    model.score(X)
    model.get_aligned_prototypes(X)
    np.testing.assert_array_equal(X, original)
    flat = X.reshape(N, -1)
    model = DTIKMeans(K, transforms=["aff"], image_shape=(H, W), **FAST).fit(flat)
    model.predict(flat)
    np.testing.assert_array_equal(X, original)


def test_init_array_is_not_modified(digits):
    init = digits[:K].copy()
    original = init.copy()
    init.setflags(write=False)
    DTIKMeans(K, transforms=None, init=init, **FAST).fit(digits)
    np.testing.assert_array_equal(init, original)


# ------------------------------------------------------------------- errors
def test_nan_and_inf_are_rejected(digits):
    for bad in (np.nan, np.inf):
        X = digits.copy()
        X[3, 2, 1] = bad
        for data in (X, X.reshape(N, -1)):
            with pytest.raises(ValueError, match="NaN|infinity"):
                DTIKMeans(K, **FAST).fit(data)
    model = DTIKMeans(K, transforms=None, **FAST).fit(digits)
    X = digits.copy()
    X[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.predict(X)


def test_wrong_number_of_dimensions(digits):
    with pytest.raises(ValueError, match="2D"):
        DTIKMeans(K, **FAST).fit(digits[0, 0])
    with pytest.raises(ValueError, match="5 dimensions"):
        DTIKMeans(K, **FAST).fit(digits[:, None, :, :, None])


@pytest.mark.filterwarnings("ignore:X is 2-D with:UserWarning")  # 1 x d rows on purpose
def test_predict_on_a_different_image_shape(digits):
    model = DTIKMeans(K, transforms=None, **FAST).fit(digits)
    with pytest.raises(ValueError, match=r"shape \(7, 7\).*fitted on images of shape \(8, 8\)"):
        model.predict(digits[:, :7, :7])
    with pytest.raises(ValueError, match="fitted on"):
        model.predict(digits[..., None])
    with pytest.raises(ValueError, match="2-D"):
        model.predict(digits.reshape(N, -1))
    flat = DTIKMeans(K, transforms=None, **FAST).fit(digits.reshape(N, -1))
    with pytest.raises(ValueError, match="fitted on rows of 64 features"):
        flat.predict(digits)
    with pytest.raises(ValueError, match="features"):
        flat.predict(digits[:, :7].reshape(N, -1))


def test_image_shape_must_match_rows(digits):
    with pytest.raises(ValueError, match="image_shape"):
        DTIKMeans(K, image_shape=(8, 7), **FAST).fit(digits.reshape(N, -1))


def test_fewer_samples_than_clusters(digits):
    with pytest.raises(ValueError, match="n_samples=5 should be >= n_clusters=6"):
        DTIKMeans(6, **FAST).fit(digits[:5])


def test_unknown_transformation_lists_valid_names(digits):
    with pytest.raises(ValueError, match="Unknown transformation 'shear'") as info:
        DTIKMeans(K, transforms=["aff", "shear"], **FAST).fit(digits)
    for name in ("aff", "affine", "tps", "thin_plate_spline", "mor", "morphological"):
        assert name in str(info.value)


@pytest.mark.parametrize("curriculum", [[0], [0, 1, 2], [0, -1], [0, 1.5]])
def test_bad_curriculum(curriculum, digits):
    with pytest.raises(ValueError, match="curriculum must be"):
        DTIKMeans(K, transforms=["aff", "mor"], curriculum=curriculum, **FAST).fit(digits)


def test_curriculum_accepts_numpy_integers(digits):
    starts = list(np.array([0, 1]))
    model = DTIKMeans(K, transforms=["aff", "mor"], curriculum=starts, **FAST).fit(digits)
    assert model.n_iter_ == 1


@pytest.mark.parametrize("shape", [(K - 1, H, W), (K, H, W - 1), (K, H * W + 1), (K + 1, 64)])
def test_bad_init_array_shape(shape, digits):
    with pytest.raises(ValueError, match="init array must hold 3 prototypes"):
        DTIKMeans(K, transforms=None, init=np.zeros(shape), **FAST).fit(digits)


def test_init_array_with_nan(digits):
    init = np.zeros((K, H, W))
    init[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        DTIKMeans(K, transforms=None, init=init, **FAST).fit(digits)


@pytest.mark.parametrize("init", ["flat", "images"])
def test_init_array_is_used(init, digits):
    # With max_iter=1 and a tiny learning rate the prototypes stay at the init.
    start = digits[[5, 17, 40]]
    given = start.reshape(K, -1) if init == "flat" else start
    model = DTIKMeans(K, transforms=None, init=given, learning_rate=1e-6, **FAST).fit(digits)
    np.testing.assert_allclose(model.prototypes_, start, atol=1e-4)


# --------------------------------------------------------------------- n_init
def _rng_after(seed, draws):
    """A RandomState whose next draw is the one fit makes for run ``draws + 1``."""
    rng = np.random.RandomState(seed)
    for _ in range(draws):
        rng.randint(np.iinfo(np.int32).max)
    return rng


def test_n_init_keeps_the_run_with_the_lowest_loss(digits):
    kwargs = {"transforms": ["aff"], "max_iter": 1, "batch_size": 32, "curriculum": [0]}
    best = DTIKMeans(4, n_init=3, random_state=0, **kwargs).fit(digits)
    singles = [
        DTIKMeans(4, n_init=1, random_state=_rng_after(0, i), **kwargs).fit(digits)
        for i in range(3)
    ]
    inertias = [s.inertia_ for s in singles]
    assert len(set(inertias)) > 1  # the runs differ, so the choice matters
    assert best.inertia_ <= min(inertias) + 1e-9
    winner = singles[int(np.argmin(inertias))]
    np.testing.assert_array_equal(best.prototypes_, winner.prototypes_)
    np.testing.assert_array_equal(best.labels_, winner.labels_)


@pytest.mark.parametrize("failing", [{1}, {0, 1, 2}])
def test_n_init_drops_a_run_that_diverges(digits, monkeypatch, failing):
    kwargs = {"transforms": ["aff"], "max_iter": 1, "batch_size": 32, "curriculum": [0]}
    real_fit_single = DTIKMeans._fit_single

    def fit_single(self, data, images, transformations, starts, seed, init_index):
        if init_index in failing:
            raise FloatingPointError(f"Training diverged (run {init_index})")
        return real_fit_single(self, data, images, transformations, starts, seed, init_index)

    monkeypatch.setattr(DTIKMeans, "_fit_single", fit_single)
    model = DTIKMeans(4, n_init=3, random_state=0, **kwargs)
    if len(failing) == 3:
        with pytest.raises(FloatingPointError, match="run 2"):  # the last one's error
            with pytest.warns(RuntimeWarning, match="diverged"):
                model.fit(digits)
        return
    with pytest.warns(RuntimeWarning, match=r"Run 2 of n_init=3 diverged \(Training diverged"):
        model.fit(digits)
    monkeypatch.undo()
    # The others drew the same seeds as without the failure: the best of runs 1 and 3.
    singles = [
        DTIKMeans(4, n_init=1, random_state=_rng_after(0, i), **kwargs).fit(digits)
        for i in (0, 2)
    ]
    winner = min(singles, key=lambda single: single.inertia_)
    np.testing.assert_array_equal(model.prototypes_, winner.prototypes_)
    assert model.inertia_ == winner.inertia_


def test_a_single_run_that_diverges_raises(digits, monkeypatch):
    def fit_single(self, *args):
        raise FloatingPointError("Training diverged (the only run)")

    monkeypatch.setattr(DTIKMeans, "_fit_single", fit_single)
    with pytest.raises(FloatingPointError, match="the only run"):
        DTIKMeans(4, max_iter=1).fit(digits)


# ---------------------------------------------------------------- curriculum
def test_curriculum_switches_modules_on(digits, monkeypatch):
    seen = []

    def spy(starts, epoch):
        out = active_at(starts, epoch)
        seen.append(out)
        return out

    monkeypatch.setattr(_training, "active_at", spy)
    model = DTIKMeans(
        K, transforms=["aff", "mor"], curriculum=[0, 2], max_iter=3, batch_size=50,
        random_state=0,
    ).fit(digits)
    assert seen == [[0], [0], [0, 1]]
    heads = model.network_.heads
    assert heads.out_weight[0].abs().sum() > 0
    assert heads.out_weight[1].abs().sum() > 0  # switched on at epoch 2

    late = DTIKMeans(
        K, transforms=["aff", "mor"], curriculum=[0, 5], max_iter=2, batch_size=50,
        random_state=0,
    ).fit(digits)
    heads = late.network_.heads
    assert heads.out_weight[0].abs().sum() > 0
    assert not heads.out_weight[1].any()  # never switched on: untouched zeros
    assert not heads.out_bias[1].any()


@settings(max_examples=40, deadline=None)
@given(
    max_iter=st.integers(1, 400),
    names=st.lists(st.sampled_from(["id", "col", "aff", "proj", "mor", "tps"]), max_size=5),
)
def test_auto_curriculum(max_iter, names):
    transformations = make_transformations(names)
    starts = curriculum_starts("auto", transformations, max_iter)
    assert len(starts) == len(transformations)
    assert all(0 <= s < max_iter for s in starts)
    parametric = [i for i, t in enumerate(transformations) if not isinstance(t, Identity)]
    for i, t in enumerate(transformations):
        if isinstance(t, Identity) or t.photometric:
            assert starts[i] == 0  # colour is on from the start: colour-blind K-means first
    spatial = [i for i in parametric if not transformations[i].photometric]
    if spatial:
        # identity-only phase first: nothing else starts before 15% of the epochs
        assert min(starts[i] for i in spatial) == round(0.15 * max_iter)
        # everything is on by the middle of training
        assert max(starts) <= 0.5 * max_iter
    # simpler families first: start epochs follow their curriculum rank
    ranked = sorted(parametric, key=lambda i: (transformations[i].curriculum_rank, i))
    ordered = [starts[i] for i in ranked]
    assert ordered == sorted(ordered)


def test_auto_curriculum_is_strictly_increasing_with_enough_epochs():
    transformations = [Identity(), Affine(), Morphological(), ThinPlateSpline()]
    starts = curriculum_starts("auto", transformations, 100)
    assert starts[0] == 0
    assert starts[1] < starts[2] < starts[3] < 50
    assert starts[1] == 15
    for epoch in range(100):
        on = active_at(starts, epoch)
        assert on == [i for i in range(4) if starts[i] <= epoch]
    assert active_at(starts, 0) == [0]
    assert active_at(starts, 99) == [0, 1, 2, 3]


def test_explicit_curriculum_is_returned_as_given():
    transformations = [Affine(), Morphological()]
    assert curriculum_starts([3, 1], transformations, 10) == [3, 1]
    with pytest.raises(ValueError, match="curriculum"):
        curriculum_starts("late", transformations, 10)


@pytest.mark.parametrize("max_iter", [1, 5, 9, 10, 20, 300])
def test_learning_rate_schedule(max_iter):
    rates = [learning_rate_at(1e-3, epoch, max_iter) for epoch in range(max_iter)]
    if max_iter < 10:
        assert rates == [1e-3] * max_iter
    else:
        n_low = int(round(DECAY_PHASE * max_iter))
        assert rates[: max_iter - n_low] == [1e-3] * (max_iter - n_low)
        assert rates[max_iter - n_low :] == pytest.approx([1e-4] * n_low)
        assert n_low >= 1


def test_warmup_rate_rises_linearly_from_the_first_predicted_start():
    full = 1e-3
    rates = [
        warmup_rate(full, epoch, step, 2, steps_per_epoch=3, warmup_steps=4)
        for epoch in range(5) for step in range(3)
    ]
    assert rates[:6] == [full] * 6  # nothing predicted before epoch 2
    assert rates[6:10] == pytest.approx([full / 4, full / 2, 3 * full / 4, full])
    assert rates[10:] == [full] * 5
    assert warmup_rate(full, 2, 0, 2, 3, warmup_steps=0) == full
    assert warmup_rate(full, 2, 0, None, 3, warmup_steps=4) == full


def test_fit_warms_the_predictor_up_when_it_first_gets_gradients(digits, monkeypatch):
    seen = []
    train_step = _training.TrainingLoop._train_step

    def spy(self, network, optimizer, x, active):
        seen.append((len(active), [float(group["lr"]) for group in optimizer.param_groups]))
        return train_step(self, network, optimizer, x, active)

    monkeypatch.setattr(_training.TrainingLoop, "_train_step", spy)
    model = DTIKMeans(3, transforms=["identity", "affine", "morphological"], max_iter=4,
                      curriculum=[0, 1, 2], batch_size=32, random_state=0)
    model.warmup_epochs = 0.75  # 3 of the 4 steps per epoch
    model.fit(digits[:128])
    assert [n for n, _ in seen] == [1] * 4 + [2] * 4 + [3] * 8
    predictor = [rates[0] for _, rates in seen]
    assert [rates[1] for _, rates in seen] == [1e-3] * 16  # the prototypes' rate
    assert predictor[:4] == [1e-3] * 4  # the identity only: nothing to warm up
    assert predictor[4:7] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])
    assert predictor[7:] == [1e-3] * 9  # no second warm-up for the morphological heads
    model.warmup_epochs = 0
    seen.clear()
    model.fit(digits[:128])
    assert [rates[0] for _, rates in seen] == [1e-3] * 16


# ----------------------------------------------------- empty-cluster handling
def _trained_copy(model, digits):
    """A copy of the fitted network and an Adam optimizer with state in it."""
    network = copy.deepcopy(model.network_).train()
    optimizer = model._make_optimizer(network)
    x = torch.from_numpy(digits[:32, None].astype(np.float32))
    means, _ = network(x)
    (x.unsqueeze(1) - means).pow(2).mean().backward()
    optimizer.step()
    return network, optimizer


def _cluster_tensors(network):
    heads = network.heads
    tensors = {"hidden_weight": heads.hidden_weight, "hidden_bias": heads.hidden_bias}
    for m in range(len(heads.out_weight)):
        tensors[f"out_weight{m}"] = heads.out_weight[m]
        tensors[f"out_bias{m}"] = heads.out_bias[m]
    return tensors


def test_fused_adam_matches_the_per_tensor_loop(fitted, digits):
    # Training uses Adam's fused kernel on the CPU for speed; it must take the
    # same steps as the plain per-tensor loop with the same parameter groups.
    network = copy.deepcopy(fitted.network_).train()
    fused = fitted._make_optimizer(network)
    assert all(group["fused"] for group in fused.param_groups)
    reference = copy.deepcopy(network)
    names = {id(p): name for name, p in network.named_parameters()}
    by_name = dict(reference.named_parameters())
    plain = torch.optim.Adam(
        [
            {"params": [by_name[names[id(p)]] for p in group["params"]],
             "weight_decay": group["weight_decay"]}
            for group in fused.param_groups
        ],
        lr=fitted.learning_rate, foreach=False,
    )
    x = torch.from_numpy(digits[:32, None].astype(np.float32))
    for _ in range(3):
        for net, optimizer in ((network, fused), (reference, plain)):
            optimizer.zero_grad()
            means, _ = net(x)
            (x.unsqueeze(1) - means).pow(2).mean().backward()
            optimizer.step()
    moved = (network.prototypes - fitted.network_.prototypes).abs().max()
    assert moved > 1e-4
    for name, value in network.state_dict().items():
        assert torch.allclose(value, reference.state_dict()[name], atol=1e-6), name


def test_reassign_does_nothing_without_small_clusters(fitted, digits):
    network, optimizer = _trained_copy(fitted, digits)
    before = copy.deepcopy(network.state_dict())
    fitted._reassign_empty(
        network, optimizer, torch.tensor([30.0, 40.0, 30.0]), torch.Generator().manual_seed(0)
    )
    for key, value in network.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_reassign_copies_the_largest_cluster(fitted, digits):
    # Regression: `param[small] = param[largest]` raised a RuntimeError in torch
    # (index_put_ from a view of the same tensor) before `.clone()` was added.
    network, optimizer = _trained_copy(fitted, digits)
    old_prototypes = network.prototypes.detach().clone()
    tensors = _cluster_tensors(network)
    old_state = {
        name: {k: v.clone() for k, v in optimizer.state[t].items() if k != "step"}
        for name, t in tensors.items()
    }
    counts = torch.tensor([50.0, 0.0, 1.0])  # share of 2 is 1/51 < 0.2 / 3
    fitted._reassign_empty(network, optimizer, counts, torch.Generator().manual_seed(0))
    prototypes = network.prototypes.detach()
    assert torch.equal(prototypes[0], old_prototypes[0])  # the largest is kept
    for small in (1, 2):
        gap = (prototypes[small] - prototypes[0]).abs().max().item()
        assert 0 < gap < 1e-2  # a copy with tiny noise
        for name, t in tensors.items():
            assert torch.equal(t[small], t[0]), name
            for key, value in optimizer.state[t].items():
                if key != "step":
                    assert torch.equal(value[small], value[0]), (name, key)
                    assert torch.equal(value[0], old_state[name][key][0]), (name, key)
        state = optimizer.state[network.prototypes]
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key][small], state[key][0])


def test_far_prototype_stays_empty_without_reassignment(digits):
    init = np.concatenate([digits[[0, 1, 2]], np.full((1, H, W), 10.0)])
    model = DTIKMeans(4, transforms=None, init=init, max_iter=2, batch_size=20, random_state=0)
    model.reassign_every = 10**9
    model.split_merge_samples = 0
    model.fit(digits)
    assert np.bincount(model.labels_, minlength=4)[3] == 0


def test_far_prototype_is_restarted(digits):
    init = np.concatenate([digits[[0, 1, 2]], np.full((1, H, W), 10.0)])
    model = DTIKMeans(4, transforms=None, init=init, max_iter=2, batch_size=20, random_state=0)
    model.reassign_every = 5
    model.fit(digits)
    assert (np.bincount(model.labels_, minlength=4) > 0).all()
    assert model.prototypes_.max() < 2.0  # nothing is left near the far init


# ------------------------------------------------------------------ verbose
def test_verbose_shows_progress(digits, capsys):
    model = DTIKMeans(K, transforms=["aff"], verbose=1, **FAST).fit(digits)
    assert model.labels_.shape == (N,)
    captured = capsys.readouterr()
    assert "DTIKMeans" in captured.err + captured.out


def test_channels_first_images_get_a_warning(digits):
    rgb = np.repeat(digits[:20, None], 3, axis=1)  # (n, 3, 8, 8): PyTorch's layout
    with pytest.warns(UserWarning, match="channels first"):
        DTIKMeans(K, max_iter=1, random_state=0).fit(rgb)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DTIKMeans(K, max_iter=1, random_state=0).fit(np.moveaxis(rgb, 1, -1))


def test_flattened_square_images_get_a_warning(digits):
    flat = digits[:20].reshape(20, -1)  # load_digits().data: 64 values, 8 x 8 images
    with pytest.warns(UserWarning, match=r"image_shape=\(8, 8\)") as record:
        model = DTIKMeans(K, max_iter=1, random_state=0).fit(flat)
    assert record[0].filename == __file__  # points at the caller, not into the package
    assert model.prototypes_.shape == (K, 1, 64)  # read as asked: 1 x 64 signals
    rgb = np.repeat(digits[:20, :, :, None], 3, axis=3).reshape(20, -1)
    with pytest.warns(UserWarning, match=r"image_shape=\(8, 8, 3\)"):
        DTIKMeans(K, max_iter=1, random_state=0).fit(rgb)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DTIKMeans(K, max_iter=1, image_shape=(8, 8), random_state=0).fit(flat)
        DTIKMeans(K, max_iter=1, random_state=0).fit(flat[:, :63])  # not square
        DTIKMeans(K, max_iter=1, random_state=0).fit(flat[:, :49])  # 7 x 7: too small


@pytest.mark.parametrize(
    ("prototypes", "expected"),
    [((10, 1, 28, 28), 128), ((10, 1, 64, 64), 128), ((10, 3, 64, 64), 32),
     ((200, 3, 64, 64), 2), ((1000, 3, 64, 64), 1)],
)
def test_inference_batches_shrink_on_large_images(prototypes, expected):
    network = PrototypeNetwork(torch.zeros(prototypes), make_transformations(["affine"]))
    assert _inference.inference_batch(network) == expected


def test_predictions_do_not_depend_on_the_inference_batch(digits, monkeypatch):
    model = DTIKMeans(K, transforms=["affine", "morphological"], **FAST).fit(digits)
    distances = model.transform(digits)
    # 3 prototypes of 64 values: a budget of 1,000 values gives batches of 4
    monkeypatch.setattr(_inference, "_INFERENCE_VALUES", 1_000)
    assert _inference.inference_batch(model.network_) == 4
    np.testing.assert_allclose(model.transform(digits), distances, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.predict(digits), distances.argmin(1))


def test_chunks_computed_in_parallel_match_one_at_a_time(digits, monkeypatch):
    # Several chunks at once, one torch thread per worker, give the outputs of
    # computing them one after the other, and leave torch's thread count and
    # grad mode as they were.
    model = DTIKMeans(K, transforms=["affine", "morphological"], **FAST).fit(digits)
    monkeypatch.setattr(_inference, "inference_batch", lambda network: 16)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(_inference, "torch_thread_budget", lambda: 3)
    try:
        assert _inference.chunk_workers(torch.zeros(N, 1, 8, 8), model.network_) == 3
        parallel = model.transform(digits)
        aligned = model.get_aligned_prototypes(digits[:40])
        assert torch.get_num_threads() == 2 and torch.is_grad_enabled()
        monkeypatch.setattr(_inference, "chunk_workers", lambda data, network: 1)
        np.testing.assert_allclose(parallel, model.transform(digits), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(
            aligned, model.get_aligned_prototypes(digits[:40]), rtol=1e-6, atol=1e-7,
        )
    finally:
        torch.set_num_threads(saved)


def test_parallel_chunks_pass_a_worker_error_to_the_caller(digits, monkeypatch):
    model = DTIKMeans(K, transforms=["affine"], **FAST).fit(digits)
    monkeypatch.setattr(_inference, "inference_batch", lambda network: 16)
    monkeypatch.setattr(_inference, "torch_thread_budget", lambda: 2)
    assert _inference.chunk_workers(torch.zeros(N, 1, 8, 8), model.network_) == 2
    saved = torch.get_num_threads()

    def fail(*args, **kwargs):
        raise RuntimeError("chunk failed")

    monkeypatch.setattr(model, "_costs", fail)
    with pytest.raises(RuntimeError, match="chunk failed"):
        model.predict(digits)
    assert torch.get_num_threads() == saved


def test_chunks_too_large_for_the_cache_budget_are_computed_one_at_a_time(monkeypatch):
    monkeypatch.setattr(_inference, "torch_thread_budget", lambda: 4)
    affine = make_transformations(["affine"])
    small = PrototypeNetwork(torch.zeros(10, 1, 28, 28), affine)  # chunks of 128
    large = PrototypeNetwork(torch.zeros(10, 3, 64, 64), affine)  # chunks of 32
    assert _inference.chunk_workers(torch.zeros(1000, 1, 28, 28), small) == 4
    assert _inference.chunk_workers(torch.zeros(200, 1, 28, 28), small) == 2  # two chunks
    assert _inference.chunk_workers(torch.zeros(1000, 3, 64, 64), large) == 1
