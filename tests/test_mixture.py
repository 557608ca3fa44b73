"""Tests of DTIGaussianMixture: probabilities, likelihoods, criteria, layouts.

Fits are tiny (about a hundred 8 x 8 digits or 300 blob "images" of 4 x 4).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp, softmax
from sklearn.datasets import load_digits, make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from dti_sklearn import DTIGaussianMixture, _training

N, H, W, K = 100, 8, 8, 3
FAST = {"max_iter": 1, "batch_size": 32, "random_state": 0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_digits().images[:N] / 16.0


@pytest.fixture(scope="module")
def fitted(digits):
    """A mixture with the default transformation sequence, fitted once."""
    return DTIGaussianMixture(K, max_iter=2, batch_size=32, random_state=0).fit(digits)


@pytest.fixture(scope="module")
def blobs():
    """Three well-separated blobs of 16 features in [0, 1], as 4 x 4 images."""
    X, y = make_blobs(300, n_features=16, centers=3, cluster_std=1.0, random_state=0)
    X = (X - X.min()) / (X.max() - X.min())
    return X, y


def _diag_gmm_log_density(X, means, variances, weights):
    """log sum_k w_k N(x | mean_k, diag(variance_k)) in plain numpy, rows of X."""
    diff = X[:, None, :] - means[None]
    log_normal = -0.5 * (diff**2 / variances + np.log(2 * np.pi * variances)).sum(-1)
    return logsumexp(np.log(weights) + log_normal, axis=1)


# ------------------------------------------------------------ probabilities
def test_predict_proba_is_a_distribution(fitted, digits):
    proba = fitted.predict_proba(digits)
    assert proba.shape == (N, K)
    assert (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)


def test_predict_is_the_most_probable_component(fitted, digits):
    labels = fitted.predict(digits)
    np.testing.assert_array_equal(labels, fitted.predict_proba(digits).argmax(axis=1))
    np.testing.assert_array_equal(labels, fitted.labels_)
    np.testing.assert_array_equal(fitted.fit_predict(digits), fitted.labels_)


def test_score_is_the_mean_of_score_samples(fitted, digits):
    samples = fitted.score_samples(digits)
    assert samples.shape == (N,)
    assert np.isfinite(samples).all()
    assert fitted.score(digits) == pytest.approx(samples.mean())
    assert fitted.lower_bound_ == pytest.approx(samples.mean(), rel=1e-6)
    # one sample scores the same alone as in a batch
    assert fitted.score_samples(digits[3:4])[0] == pytest.approx(samples[3], rel=1e-6)


def test_transform_is_the_per_component_nll(fitted, digits):
    nll = fitted.transform(digits)
    assert nll.shape == (N, K)
    assert np.isfinite(nll).all()
    log_joint = np.log(fitted.weights_) - nll
    np.testing.assert_allclose(logsumexp(log_joint, axis=1), fitted.score_samples(digits),
                               rtol=1e-6, atol=1e-5)
    proba = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
    np.testing.assert_allclose(proba, fitted.predict_proba(digits), atol=1e-6)


def test_information_criteria(fitted, digits):
    for n in (8, N):  # n > e**2: the BIC penalty log(n) per parameter beats AIC's 2
        bic, aic = fitted.bic(digits[:n]), fitted.aic(digits[:n])
        assert math.isfinite(bic) and math.isfinite(aic)
        assert bic > aic
    assert fitted.bic(digits[:7]) < fitted.aic(digits[:7])  # log(7) < 2
    # both are -2 log L plus a penalty that does not depend on the data
    log_likelihood = fitted.score_samples(digits).sum()
    penalty = fitted.aic(digits) + 2 * log_likelihood
    assert penalty > 0
    assert fitted.bic(digits) == pytest.approx(-2 * log_likelihood + penalty / 2 * math.log(N))


def test_variances_and_weights(fitted):
    assert fitted.variances_.shape == (K, H, W)
    assert (fitted.variances_ >= fitted.var_min_).all()
    assert fitted.weights_.shape == (K,)
    assert (fitted.weights_ > 0).all()
    assert fitted.weights_.sum() == pytest.approx(1.0, abs=1e-9)
    assert fitted.means_.shape == (K, H * W)
    np.testing.assert_array_equal(fitted.means_, fitted.prototypes_.reshape(K, -1))


def test_equal_mixing_weights_stay_equal_and_learned_ones_move(digits):
    kwargs = {"transforms": ["aff"], "max_iter": 3, "batch_size": 32, "random_state": 0}
    equal = DTIGaussianMixture(K, **kwargs).fit(digits)
    np.testing.assert_array_equal(equal.weights_, np.full(K, 1 / K))
    assert not equal.network_.mixing_logits.requires_grad
    # predict_proba is the softmax of the log-densities alone
    densities = -(equal.transform(digits[:5]))
    np.testing.assert_allclose(
        equal.predict_proba(digits[:5]), softmax(densities, axis=1), rtol=1e-6, atol=1e-12
    )
    learned = DTIGaussianMixture(K, mixing_weights="learned", **kwargs).fit(digits)
    assert np.abs(learned.weights_ - 1 / K).max() > 1e-4
    with pytest.raises(ValueError, match="mixing_weights"):
        DTIGaussianMixture(K, mixing_weights="free").fit(digits)


def test_fitted_attributes_are_finite(fitted):
    for name in ("means_", "prototypes_", "variances_", "weights_", "loss_curve_"):
        assert np.isfinite(np.asarray(getattr(fitted, name))).all(), name
    assert math.isfinite(fitted.lower_bound_)
    assert isinstance(fitted.converged_, bool)
    assert fitted.n_iter_ == 2 and len(fitted.loss_curve_) == 2


def test_larger_var_min_floors_the_variances(digits):
    model = DTIGaussianMixture(K, transforms=None, var_min=0.5, **FAST).fit(digits)
    assert model.var_min_ == 0.5
    assert (model.variances_ >= 0.5).all()
    with pytest.raises(ValueError, match="var_min"):
        DTIGaussianMixture(K, var_min=0.0, **FAST).fit(digits)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((8, 8), 64 / 56**2), ((14, 14), 0.0625), ((28, 28), 0.25), ((28, 28, 1), 0.25),
     ((14, 14, 4), 0.25), ((56, 56), 1.0)],
)
def test_auto_var_min_is_proportional_to_the_values_the_papers_floor_at_14_by_14(shape, expected):
    images = np.random.default_rng(0).random((12, *shape), dtype=np.float32)
    model = DTIGaussianMixture(2, transforms=None, max_iter=1, random_state=0).fit(images)
    assert model.var_min == "auto"
    # the floor is set on the images scaled to span [0, 1], and reported in X's units
    assert model.var_min_ == pytest.approx(expected * model.data_range_**2)
    assert (model.variances_ >= model.var_min_).all()
    # the floor really is the one in the likelihood: a lower one scores differently
    fixed = DTIGaussianMixture(
        2, transforms=None, max_iter=1, random_state=0, var_min=model.var_min_
    ).fit(images)
    assert fixed.score(images) == pytest.approx(model.score(images), rel=1e-6)
    lower = DTIGaussianMixture(2, transforms=None, max_iter=1, random_state=0, var_min=0.01)
    assert lower.fit(images).score(images) != pytest.approx(model.score(images), rel=1e-3)


def test_a_mixture_pickled_with_a_float_var_min_and_no_var_min_still_predicts(digits):
    model = DTIGaussianMixture(K, transforms=None, var_min=0.3, **FAST).fit(digits)
    expected = model.score_samples(digits[:5])
    del model.var_min_  # as in estimators saved before the attribute existed
    np.testing.assert_allclose(model.score_samples(digits[:5]), expected)


# -------------------------------------------------------- vs scikit-learn
def test_identity_only_matches_sklearn_diagonal_gmm(blobs):
    X, _ = blobs
    sk = GaussianMixture(3, covariance_type="diag", random_state=0).fit(X)
    # A variance floor of 1e-4 is well below the blobs' per-pixel variances
    # (about 1e-3), so it does not constrain the optimum; a larger learning
    # rate than the default lets the gradient EM converge in 300 steps.
    dti = DTIGaussianMixture(
        3, transforms=None, var_min=1e-4, max_iter=60, learning_rate=0.02, random_state=0,
    ).fit(X.reshape(-1, 4, 4))
    images = X.reshape(-1, 4, 4)
    assert adjusted_rand_score(sk.predict(X), dti.predict(images)) > 0.95
    # Mean log-likelihood per sample (16 values each).  The DTI model is a
    # diagonal GMM whose variances are floored, a subset of the models that
    # sklearn's EM maximises over, so it cannot do better than sklearn's
    # optimum; a gradient EM stopped after 300 Adam steps lands about 0.01 nat
    # per sample below it (measured over 5 data seeds: 0.009 to 0.015).
    # 0.05 nat per sample is 0.003 nat per value: parameters visibly off
    # (means off by a tenth of a standard deviation) would exceed it.
    gap = sk.score(X) - dti.score(images)
    assert -1e-3 < gap < 0.05
    # the parameters themselves, after matching components
    distance = np.abs(dti.means_[:, None] - sk.means_[None]).max(axis=-1)
    rows, cols = linear_sum_assignment(distance)
    np.testing.assert_allclose(dti.means_[rows], sk.means_[cols], atol=0.01)
    np.testing.assert_allclose(
        dti.variances_.reshape(3, -1)[rows], sk.covariances_[cols], rtol=0.25
    )
    np.testing.assert_allclose(dti.weights_[rows], sk.weights_[cols], atol=0.02)


def test_identity_only_density_is_a_diagonal_gmm(blobs):
    # score_samples must be the diagonal-GMM density of the fitted attributes.
    X, _ = blobs
    model = DTIGaussianMixture(3, transforms=None, image_shape=(4, 4), **FAST).fit(X)
    expected = _diag_gmm_log_density(
        X, model.means_, model.variances_.reshape(3, -1), model.weights_
    )
    np.testing.assert_allclose(model.score_samples(X), expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("mixing_weights", ["learned", "equal"])
def test_identity_only_bic_counts_the_gmm_parameters(blobs, mixing_weights):
    X, _ = blobs
    n, d = X.shape
    model = DTIGaussianMixture(
        3, transforms=None, image_shape=(4, 4), mixing_weights=mixing_weights, **FAST
    ).fit(X)
    # means, variances, weights: sklearn's count; equal weights are not free
    n_parameters = 2 * 3 * d + (3 - 1 if mixing_weights == "learned" else 0)
    log_likelihood = model.score_samples(X).sum()
    assert model.bic(X) == pytest.approx(-2 * log_likelihood + n_parameters * math.log(n))
    assert model.aic(X) == pytest.approx(-2 * log_likelihood + 2 * n_parameters)


# ------------------------------------------------------------------ layouts
def _layouts(digits):
    colours = np.random.RandomState(0).uniform(0.2, 1.0, size=(N, 1, 1, 3))
    colour = digits[..., None] * colours
    return {
        "nhw": (digits, None, (H, W)),
        "nhwc": (colour, None, (H, W, 3)),
        "flat_hw": (digits.reshape(N, -1), (H, W), (H, W)),
        "flat_hwc": (colour.reshape(N, -1), (H, W, 3), (H, W, 3)),
        "flat_plain": (digits.reshape(N, -1), None, (1, H * W)),
    }


@pytest.mark.filterwarnings("ignore:X is 2-D with:UserWarning")  # 1 x d rows on purpose
@pytest.mark.parametrize("layout", ["nhw", "nhwc", "flat_hw", "flat_hwc", "flat_plain"])
def test_every_layout(layout, digits):
    X, image_shape, expected = _layouts(digits)[layout]
    d = int(np.prod(expected))
    model = DTIGaussianMixture(K, transforms=["aff"], image_shape=image_shape, **FAST).fit(X)
    assert model.image_shape_ == expected
    assert model.prototypes_.shape == (K, *expected)
    assert model.variances_.shape == (K, *expected)
    assert model.means_.shape == (K, d)
    assert model.predict_proba(X[:6]).shape == (6, K)
    assert model.transform(X[:6]).shape == (6, K)
    aligned = model.get_aligned_prototypes(X[:4])
    assert aligned.shape == ((4, K, d) if X.ndim == 2 else (4, K, *expected))
    # identity only: the density is a diagonal GMM in the caller's layout
    plain = DTIGaussianMixture(K, transforms=None, image_shape=image_shape, **FAST).fit(X)
    expected_density = _diag_gmm_log_density(
        X.reshape(N, -1), plain.means_, plain.variances_.reshape(K, -1), plain.weights_
    )
    np.testing.assert_allclose(plain.score_samples(X), expected_density, rtol=1e-6, atol=1e-4)


# ---------------------------------------------------------- reproducibility
def test_same_seed_same_model(digits):
    kwargs = {"transforms": ["aff", "mor"], "max_iter": 2, "batch_size": 32}
    a = DTIGaussianMixture(K, random_state=1, **kwargs).fit(digits)
    b = DTIGaussianMixture(K, random_state=1, **kwargs).fit(digits)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.means_, b.means_)
    np.testing.assert_array_equal(a.variances_, b.variances_)
    np.testing.assert_array_equal(a.weights_, b.weights_)
    np.testing.assert_array_equal(a.score_samples(digits), b.score_samples(digits))
    c = DTIGaussianMixture(K, random_state=2, **kwargs).fit(digits)
    assert not np.array_equal(a.means_, c.means_)


def test_n_init_keeps_the_most_likely_run(digits):
    kwargs = {"transforms": ["aff"], "max_iter": 1, "batch_size": 32, "curriculum": [0]}
    best = DTIGaussianMixture(K, n_init=2, random_state=0, **kwargs).fit(digits)
    singles = []
    for i in range(2):
        rng = np.random.RandomState(0)  # fit draws one seed per run from it, in order
        for _ in range(i):
            rng.randint(np.iinfo(np.int32).max)
        singles.append(DTIGaussianMixture(K, n_init=1, random_state=rng, **kwargs).fit(digits))
    bounds = [s.lower_bound_ for s in singles]
    assert bounds[0] != bounds[1]
    assert best.lower_bound_ == pytest.approx(max(bounds), rel=1e-12)
    np.testing.assert_array_equal(best.means_, singles[int(np.argmax(bounds))].means_)


def test_runs_are_compared_on_their_fit_with_equal_mixing_weights(fitted, digits):
    # The race's starts and the tried move's branches are ranked without the
    # weights' share of the likelihood, which rewards unequal sizes.
    network = copy.deepcopy(fitted.network_)
    data = fitted._validated_tensor(digits)
    with torch.no_grad():
        network.mixing_logits.zero_()
    equal_costs = fitted._compute_costs(data, network)
    equal = fitted._comparison_loss(equal_costs, network)
    assert equal == pytest.approx(fitted._final_loss(equal_costs), rel=1e-12)
    with torch.no_grad():
        network.mixing_logits.copy_(torch.tensor([2.0, -1.0, 0.0]))
    skewed_costs = fitted._compute_costs(data, network)
    assert fitted._final_loss(skewed_costs) != pytest.approx(equal, rel=1e-6)
    assert fitted._comparison_loss(skewed_costs, network) == pytest.approx(equal, rel=1e-9)
    calls = []
    real = DTIGaussianMixture._comparison_loss
    loop = copy.deepcopy(fitted)
    loop._comparison_loss = lambda costs, net: calls.append(net) or real(loop, costs, net)
    assert loop._training_objective(data, network) == pytest.approx(equal, rel=1e-9)
    assert calls == [network]


# ---------------------------------------------------- degenerate pixel data
@pytest.mark.parametrize("kind", ["zeros", "ones", "constant", "saturated"])
@pytest.mark.parametrize("transforms", [None, ["aff", "mor"]])
def test_degenerate_images_give_finite_results(kind, transforms):
    rng = np.random.RandomState(0)
    X = {
        "zeros": np.zeros((40, H, W)),
        "ones": np.ones((40, H, W)),
        "constant": np.full((40, H, W), 0.3),
        "saturated": np.clip(2 * rng.rand(40, H, W), 0, 1),  # half the pixels at 1
    }[kind]
    model = DTIGaussianMixture(
        K, transforms=transforms, max_iter=2, batch_size=16, random_state=0
    ).fit(X)
    values = {
        "score_samples": model.score_samples(X),
        "predict_proba": model.predict_proba(X),
        "transform": model.transform(X),
        "means_": model.means_,
        "variances_": model.variances_,
        "weights_": model.weights_,
        "loss_curve_": np.asarray(model.loss_curve_),
        "aligned": model.get_aligned_prototypes(X[:5]),
    }
    for name, value in values.items():
        assert np.isfinite(value).all(), name
    assert np.isfinite([model.bic(X), model.aic(X), model.lower_bound_]).all()
    np.testing.assert_allclose(values["predict_proba"].sum(axis=1), 1.0, atol=1e-6)


# ------------------------------------------------------------------ training
def _em_and_marginal_gradients(estimator, digits):
    """Gradients of ``estimator._batch_loss`` and of the marginal NLL, same network."""
    x = torch.from_numpy(digits[:16, None].astype(np.float32))
    active = list(range(len(estimator.transforms_)))
    em_net = copy.deepcopy(estimator.network_).train()
    ref_net = copy.deepcopy(estimator.network_).train()
    loss, assigned = estimator._batch_loss(em_net, x, active)
    loss.backward()
    means, stds = ref_net(x, active)
    variances = stds.pow(2) + estimator.var_min_
    log_normal = -0.5 * (
        (x.unsqueeze(1) - means).pow(2) / variances + variances.log() + math.log(2 * math.pi)
    ).flatten(2).sum(2)
    log_joint = torch.log_softmax(ref_net.mixing_logits, 0) + log_normal
    gamma = torch.softmax(log_joint.detach(), 1)
    em_loss = -(gamma * log_joint).sum(1).mean() / x[0].numel()
    np.testing.assert_array_equal(assigned.numpy(), log_joint.argmax(1).numpy())
    (-torch.logsumexp(log_joint, 1).mean() / x[0].numel()).backward()
    assert loss.item() == pytest.approx(em_loss.item(), rel=1e-5)
    grads = [
        (name, p.grad, q.grad)
        for (name, p), q in zip(em_net.named_parameters(), ref_net.parameters())
        if q.grad is not None
    ]
    assert len(grads) >= 4
    if estimator._learns_weights:
        assert ref_net.mixing_logits.grad.abs().sum() > 0
    else:  # held equal: no gradient reaches the logits
        assert em_net.mixing_logits.grad is None
        assert ref_net.mixing_logits.grad is None
    assert ref_net.log_deviations.grad.abs().sum() > 0
    return grads


@pytest.mark.parametrize("mixing_weights", ["equal", "learned"])
def test_responsibilities_are_not_back_propagated(fitted, digits, mixing_weights):
    # With gamma detached, the gradient of -sum_k gamma_k log p(x, k) equals the
    # gradient of -log p(x) (Fisher's identity); without detaching it would not.
    # Every component gets its gradient here (gradient_components >= K).
    estimator = copy.copy(fitted)
    estimator.mixing_weights = mixing_weights
    estimator.network_ = copy.deepcopy(fitted.network_)
    estimator.network_.mixing_logits.requires_grad_(mixing_weights == "learned")
    estimator.gradient_components = K
    for name, fast, reference in _em_and_marginal_gradients(estimator, digits):
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-7, msg=name)


def test_truncated_gradient_is_close_to_the_em_gradient(digits):
    # By default only the most responsible components are differentiated; once
    # the components have separated, the others have small responsibilities, so
    # the gradient is the EM gradient up to a small relative error (0.5-1.4 %
    # measured).  Two epochs separate them only without the predictor's
    # warm-up, which spends the second epoch at a reduced rate (errors up to
    # 5.3 % with it), so this fit turns the warm-up off.
    fitted = DTIGaussianMixture(K, max_iter=2, batch_size=32, random_state=0)
    fitted.warmup_epochs = 0
    fitted.fit(digits)
    assert fitted.gradient_components < K
    for name, fast, reference in _em_and_marginal_gradients(fitted, digits):
        error = (fast - reference).norm() / reference.norm().clamp_min(1e-12)
        assert error < 0.05, name


def test_reassign_keeps_equal_weights_equal(fitted):
    network = copy.deepcopy(fitted.network_).train()
    optimizer = fitted._make_optimizer(network)
    counts = torch.tensor([60.0, 1.0, 39.0])  # component 1 is nearly empty
    fitted._reassign_empty(network, optimizer, counts, torch.Generator().manual_seed(0))
    assert torch.equal(network.mixing_logits.detach(), torch.zeros(K))
    deviations = network.log_deviations.detach()  # component 1 did restart
    assert torch.equal(deviations[1], deviations[0])


def test_reassign_shares_the_largest_weight(fitted, digits):
    fitted = copy.copy(fitted)
    fitted.mixing_weights = "learned"
    network = copy.deepcopy(fitted.network_).train()
    optimizer = fitted._make_optimizer(network)
    with torch.no_grad():
        network.mixing_logits.copy_(torch.tensor([1.0, -2.0, 0.5]))
        network.log_deviations[0] -= 0.3
    old_logits = network.mixing_logits.detach().clone()
    counts = torch.tensor([60.0, 1.0, 39.0])  # component 1 is nearly empty
    fitted._reassign_empty(network, optimizer, counts, torch.Generator().manual_seed(0))
    logits = network.mixing_logits.detach()
    half = old_logits[0] - math.log(2)  # the largest's weight is split in two
    torch.testing.assert_close(logits[0], half)
    torch.testing.assert_close(logits[1], half)
    torch.testing.assert_close(logits[2], old_logits[2])
    deviations = network.log_deviations.detach()
    assert torch.equal(deviations[1], deviations[0])
    assert not torch.equal(deviations[2], deviations[0])


def test_fit_warms_the_predictor_up_for_one_epoch_by_default(digits, monkeypatch):
    seen = []
    train_step = _training.TrainingLoop._train_step

    def spy(self, network, optimizer, x, active):
        seen.append(float(optimizer.param_groups[0]["lr"]))
        return train_step(self, network, optimizer, x, active)

    monkeypatch.setattr(_training.TrainingLoop, "_train_step", spy)
    DTIGaussianMixture(K, transforms=["identity", "affine"], max_iter=3, curriculum=[0, 1],
                       batch_size=25, random_state=0).fit(digits)  # 4 steps per epoch
    assert seen[:4] == [1e-3] * 4  # the identity only: nothing to warm up
    assert seen[4:8] == pytest.approx([1e-3 / 4, 2e-3 / 4, 3e-3 / 4, 1e-3])
    assert seen[8:] == [1e-3] * 4
