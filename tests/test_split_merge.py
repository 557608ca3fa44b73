"""Tests of the split-and-merge moves: the two measures and the move itself."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits

from dti_sklearn import DTIGaussianMixture, DTIKMeans
from dti_sklearn._images import validate_images
from dti_sklearn._schedule import curriculum_starts, decay_start
from dti_sklearn._split_merge import (
    by_polarity,
    prototype_units,
    removal_costs,
    split_gains,
    two_means_splits,
)
from dti_sklearn.transforms import Color

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def three_digits():
    """(X, y): the 8 x 8 digits 0, 3 and 4 in [0, 1]."""
    data = load_digits()
    keep = np.isin(data.target, [0, 3, 4])
    return data.images[keep] / 16.0, data.target[keep]


# ------------------------------------------------------------------ measures
def test_removal_costs_sum_the_rise_to_the_second_best_cluster():
    costs = torch.tensor(
        [[1.0, 4.0, 9.0], [2.0, 3.0, 7.0], [5.0, 1.0, 1.5], [8.0, 6.0, 0.0]],
        dtype=torch.float64,
    )
    expected = torch.tensor([3.0 + 1.0, 0.5, 6.0], dtype=torch.float64)
    assert torch.allclose(removal_costs(costs), expected)


def test_removal_cost_of_a_cluster_without_members_is_zero():
    costs = torch.tensor([[1.0, 9.0, 2.0], [1.0, 9.0, 3.0]])
    assert removal_costs(costs)[1] == 0


def test_two_means_gain_matches_scikit_learn():
    rng = np.random.RandomState(0)
    blob_a = rng.normal(0.0, 0.1, size=(40, 5))
    blob_b = rng.normal(3.0, 0.1, size=(30, 5))
    tight = rng.normal(1.0, 0.1, size=(25, 5))
    residuals = np.concatenate([blob_a, blob_b, tight, rng.normal(size=(1, 5))])
    labels = np.array([0] * 70 + [1] * 25 + [2])
    gains, sides = two_means_splits(
        torch.from_numpy(residuals), torch.from_numpy(labels), 4,
    )
    # Exact on the two blobs; on the unstructured cluster, ten Lloyd steps from
    # one seeding land within a percent of the best of ten scikit-learn runs.
    for cluster, rel in ((0, 1e-9), (1, 1e-2)):
        members = residuals[labels == cluster]
        inertia = KMeans(2, n_init=10, random_state=0).fit(members).inertia_
        expected = (members**2).sum() - inertia
        assert gains[cluster].item() == pytest.approx(expected, rel=rel)
    # The mixed cluster is split exactly into its two blobs, and gains most.
    assert len(set(sides[:40].tolist())) == 1
    assert len(set(sides[40:70].tolist())) == 1
    assert sides[0] != sides[40]
    assert gains[0] > 10 * gains[1]
    # One member (cluster 2) or none (cluster 3): nothing to split.
    assert gains[2] == 0 and gains[3] == 0


def test_principal_seeding_splits_two_blobs_despite_an_outlier():
    rng = np.random.RandomState(0)
    blob_a = rng.normal(0.0, 0.3, size=(50, 8))
    blob_b = rng.normal(0.0, 0.3, size=(50, 8))
    blob_b[:, 0] += 3.0  # the blobs differ along one axis
    outlier = np.zeros((1, 8))
    outlier[0, 1] = 8.0  # one member far away along another, less spread than the blobs
    residuals = torch.from_numpy(np.concatenate([blob_a, blob_b, outlier]))
    labels = torch.zeros(101, dtype=torch.long)
    _, farthest = two_means_splits(residuals, labels, 1)
    # Seeded at the outlier, Lloyd's iterations keep it as a half of its own.
    assert farthest.sum() in (1, 100)
    gains, principal = two_means_splits(residuals, labels, 1, seeding="principal")
    assert len(set(principal[:50].tolist())) == 1 and len(set(principal[50:100].tolist())) == 1
    assert principal[0] != principal[50]
    assert gains[0] > 0


def test_both_seedings_keep_the_split_of_larger_gain_in_every_cluster():
    # Cluster 0: two blobs and an outlier, where the farthest members make a
    # poor start; cluster 1: three blobs of 13, 11 and 3, where the principal
    # direction does.
    rng = np.random.RandomState(0)
    blobs = [rng.normal(0.0, 0.3, size=(50, 4)), rng.normal(0.0, 0.3, size=(50, 4))]
    blobs[1][:, 0] += 3.0
    outlier = np.zeros((1, 4))
    outlier[0, 1] = 8.0
    rng = np.random.RandomState(90)
    three = [rng.normal(rng.normal(0, 2, 4), 0.3, (size, 4)) for size in (13, 11, 3)]
    residuals = torch.from_numpy(np.concatenate([*blobs, outlier, *three]))
    labels = torch.tensor([0] * 101 + [1] * 27)
    farthest_gains, farthest = two_means_splits(residuals, labels, 2)
    principal_gains, principal = two_means_splits(residuals, labels, 2, seeding="principal")
    assert principal_gains[0] > farthest_gains[0] and farthest_gains[1] > principal_gains[1]

    gains, sides = two_means_splits(residuals, labels, 2, seeding="both")

    assert gains.tolist() == [principal_gains[0].item(), farthest_gains[1].item()]
    assert torch.equal(sides[:101], principal[:101]) and torch.equal(sides[101:], farthest[101:])


def test_an_unknown_seeding_is_refused():
    residuals, labels = torch.randn(6, 4).double(), torch.tensor([0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="seeding must be one of 'farthest', 'principal', 'both'"):
        two_means_splits(residuals, labels, 2, seeding="pca")


def test_members_all_alike_cannot_be_split():
    # Regression: a cluster of identical residuals used to report its shift
    # gain with one empty half, whose mean is NaN.
    residuals = torch.cat([torch.full((6, 4), 0.5), torch.randn(6, 4)]).double()
    labels = torch.tensor([0] * 6 + [1] * 6)
    gains, sides = two_means_splits(residuals, labels, 2)
    assert gains[0] == 0 and gains[1] > 0
    assert set(sides[6:].tolist()) == {0, 1}


def test_split_gains_are_the_fall_of_the_squared_residuals():
    generator = torch.Generator().manual_seed(0)
    residuals = torch.randn(30, 6, generator=generator, dtype=torch.float64)
    labels = torch.arange(30) % 3
    sides = (torch.arange(30) // 3) % 2
    sides[labels == 2] = 0  # cluster 2: one empty half
    gains = split_gains(residuals, labels, sides, 3)
    for cluster in (0, 1):
        inside = residuals[labels == cluster]
        halves = sides[labels == cluster]
        after = sum(
            (inside[halves == h] - inside[halves == h].mean(0)).pow(2).sum() for h in (0, 1)
        )
        assert gains[cluster].item() == pytest.approx((inside.pow(2).sum() - after).item())
    assert gains[2] == 0


def test_by_polarity_makes_samples_of_either_polarity_add_up():
    generator = torch.Generator().manual_seed(0)
    # Two kinds of shape residual in one cluster, each drawn in both
    # polarities per channel: the plain gain of the right split cancels out.
    kinds = torch.randn(2, 3, 16, generator=generator, dtype=torch.float64)
    sides = torch.arange(40) % 2
    scales = torch.rand(40, 3, generator=generator, dtype=torch.float64) + 0.5
    scales[torch.arange(40) % 4 >= 2] *= -1
    residuals = (kinds[sides] * scales.unsqueeze(2)).flatten(1)
    labels = torch.zeros(40, dtype=torch.long)
    plain = split_gains(residuals, labels, sides, 1)
    signed = by_polarity(residuals, scales)
    turned = split_gains(signed, labels, sides, 1)
    assert turned.item() > 100 * plain.item()
    # Each channel is turned by its own sign, and only that.
    expected = (kinds[sides] * scales.abs().unsqueeze(2)).flatten(1)
    torch.testing.assert_close(signed, expected)
    # No negative scale (grey images): the residuals come back bit for bit.
    positive = by_polarity(residuals.float(), scales.abs())
    assert torch.equal(positive, residuals.float())


def test_prototype_units_undo_each_samples_gain():
    generator = torch.Generator().manual_seed(0)
    shape = torch.randn(5, 3, 4, 4, generator=generator, dtype=torch.float64)
    assert torch.equal(prototype_units(shape, None), shape.flatten(1))
    # One channel: exactly the residual over the gain, whatever the gain's sign.
    gains = torch.tensor([[0.5], [-1.5], [1.0], [0.7], [-0.8]], dtype=torch.float64)
    grey = shape[:, :1]
    units = prototype_units(grey * gains[:, :, None, None], gains)
    torch.testing.assert_close(units, grey.flatten(1))
    # A nearly flat sample (gain 1e-4) is not blown up to 10,000 times its residual.
    gains[4] = 1e-4
    units = prototype_units(grey, gains)
    assert units[4].abs().max() < grey[4].abs().max()
    # Several channels: a shape residual recoloured by any gains sums back to
    # the same shape over the channels.
    common = shape[:, :1].expand(5, 3, 4, 4)
    colours = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    units = prototype_units(common * colours[:, :, None, None], colours).view(5, 3, 4, 4)
    torch.testing.assert_close(units.sum(1), shape[:, 0])


# ---------------------------------------------------------------------- move
def _prepared(estimator_class, three_digits, init):
    """A barely trained identity-only model, a copy of its network and optimizer."""
    X, _ = three_digits
    model = estimator_class(
        3, transforms=None, init=init, max_iter=1, learning_rate=1e-9, random_state=0,
    ).fit(X)
    network = copy.deepcopy(model.network_).train()
    optimizer = model._make_optimizer(network)
    data = torch.from_numpy(validate_images(model, X, image_shape=None, reset=False))
    return model, network, optimizer, data


def _mean(X, y, digits):
    return X[np.isin(y, digits)].mean(0)


def _assert_one_cluster_per_digit(labels, y):
    """At least 90 % of every digit (0, 3, 4) in one cluster, a different one per digit."""
    for digit in (0, 3, 4):
        counts = np.bincount(labels[y == digit], minlength=3)
        assert counts.max() >= 0.9 * counts.sum(), (digit, counts)
    assert len({np.bincount(labels[y == d]).argmax() for d in (0, 3, 4)}) == 3


def _learned_weights_mixture(*args, **kwargs):
    return DTIGaussianMixture(*args, mixing_weights="learned", **kwargs)


@pytest.mark.parametrize(
    "estimator_class", [DTIKMeans, DTIGaussianMixture, _learned_weights_mixture]
)
def test_a_duplicate_cluster_is_restarted_as_half_of_a_mixed_one(
    estimator_class, three_digits,
):
    X, y = three_digits
    zero = _mean(X, y, [0])
    init = np.stack([zero, zero + 1e-3, _mean(X, y, [3, 4])])
    model, network, optimizer, data = _prepared(estimator_class, three_digits, init)
    before = model._compute_costs(data, network)

    moved = model._split_and_merge(
        network, optimizer, data, [0], torch.Generator().manual_seed(0),
    )

    assert moved
    after = model._compute_costs(data, network)
    assert after.min(1).sum() < before.min(1).sum()
    labels = after.argmin(1)
    # Every digit now has a cluster of its own.
    _assert_one_cluster_per_digit(labels, y)
    if estimator_class is _learned_weights_mixture:
        # The mixed component's weight is shared by its two halves.
        logits = network.mixing_logits.detach()
        halves = [c for c in range(3) if abs(logits[c] - logits.max()) > 0.5]
        assert len(halves) == 2
        assert logits[halves[0]] == pytest.approx(logits[halves[1]].item())
    elif estimator_class is DTIGaussianMixture:
        # Equal weights stay equal.
        assert torch.equal(network.mixing_logits.detach(), torch.zeros(3))


@pytest.mark.parametrize("estimator_class", [DTIKMeans, DTIGaussianMixture])
def test_no_move_when_every_cluster_is_one_digit(estimator_class, three_digits):
    X, y = three_digits
    init = np.stack([_mean(X, y, [digit]) for digit in (0, 3, 4)])
    model, network, optimizer, data = _prepared(estimator_class, three_digits, init)
    before = copy.deepcopy(network.state_dict())

    moved = model._split_and_merge(
        network, optimizer, data, [0], torch.Generator().manual_seed(0),
    )

    assert not moved
    for key, value in network.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("estimator_class", [DTIKMeans, DTIGaussianMixture])
def test_a_forced_move_splits_the_largest_cluster_into_the_cheapest_to_remove(
    estimator_class, three_digits,
):
    # Every cluster is one digit, so the check itself makes no move (test
    # above); forced, the largest cluster is split into the slot of the one
    # whose removal costs least, which is what a tried move trains.
    X, y = three_digits
    init = np.stack([_mean(X, y, [digit]) for digit in (0, 3, 4)])
    model, network, optimizer, data = _prepared(estimator_class, three_digits, init)
    before = model._compute_costs(data, network).argmin(1)
    sizes = np.bincount(before, minlength=3)

    moved = model._split_and_merge(
        network, optimizer, data, [0], torch.Generator().manual_seed(0), force=True,
    )

    assert moved
    after = model._compute_costs(data, network).argmin(1)
    largest = int(sizes.argmax())
    emptied = [c for c in range(3) if c != largest and not np.any(after == c)]
    grown = np.bincount(after, minlength=3)
    # The copy took half of the largest cluster; the removed cluster's images went elsewhere.
    assert emptied == [] and grown[largest] < sizes[largest]
    changed = [c for c in range(3) if not torch.equal(
        network.prototypes[c], model.network_.prototypes[c])]
    assert largest in changed and len(changed) == 2


@pytest.mark.parametrize("force", [False, True])
def test_a_principal_split_is_not_thrown_by_an_outlier_of_the_mixed_component(
    three_digits, force,
):
    # The 3s and 4s share a component, and one of their members is its mean
    # with the top half filled in, farther from it than any digit.  Halves
    # seeded at the farthest members keep the outlier as a half of its own
    # (the copy then takes one image and the digits stay together); with
    # the mixture's ``split_seeding = "principal"`` the halves start along the principal
    # direction, so each digit gets its own component, whether the check or
    # a tried move splits.
    X, y = three_digits
    mixed = _mean(X, y, [3, 4])
    outlier = mixed.copy()
    outlier[:4] = 1.0
    X, y = np.concatenate([X, outlier[None]]), np.append(y, -1)
    zero = _mean(X, y, [0])
    init = np.stack([zero, zero + 1e-3, mixed])
    model, network, optimizer, data = _prepared(DTIGaussianMixture, (X, y), init)
    before = model._compute_costs(data, network).argmin(1)
    assert before[-1] == 2 and np.bincount(before).argmax() == 2

    moved = model._split_and_merge(
        network, optimizer, data, [0], torch.Generator().manual_seed(0), force=force,
    )

    assert moved
    labels = model._compute_costs(data, network).argmin(1)
    _assert_one_cluster_per_digit(labels, y)


def _recoloured(X, seed):
    """Each grey image drawn in its own colours, half of them faint, half contrasted."""
    rng = np.random.RandomState(seed)
    background = rng.rand(len(X), 1, 1, 3)
    direction = rng.choice([-1.0, 1.0], size=(len(X), 1, 1, 3))
    contrast = rng.choice([0.1, 1.0], size=(len(X), 1, 1, 1))
    strength = contrast * direction * rng.uniform(0.5, 1.0, (len(X), 1, 1, 3))
    return background + strength * X[..., None]


def test_value_scales_are_those_of_each_samples_cluster(three_digits):
    X, y = three_digits
    coloured = _recoloured(X, 0)
    init = np.stack([_recoloured(_mean(X, y, [d])[None], d)[0] for d in (0, 3, 4)])
    model = DTIKMeans(3, transforms=["color", "aff"], init=init, max_iter=1,
                      learning_rate=1e-9, random_state=0).fit(coloured)
    network = model.network_
    data = torch.from_numpy(validate_images(model, coloured, image_shape=None, reset=False))
    x, clusters = data[:8], torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    with torch.no_grad():
        params = network.predict_parameters(x, [0, 1])
        gains = network.value_scales(params, x, [0, 1], clusters)
        aligned, _ = network.align(params, 8, [1], clusters=clusters[:, None])
        assert network.value_scales(params, x, [1], clusters) is None  # colour off
    assert gains.shape == (8, 3)
    torch.testing.assert_close(gains, Color().value_scale(aligned, x)[:, 0])


def test_a_mixed_cluster_of_coloured_digits_is_split_by_digit(three_digits):
    """With the colour solved, the halves are found by shape, not by colour.

    Two digits share a cluster and every image has its own colours: the raw
    residuals of that cluster differ more by colour than by digit.
    """
    X, y = three_digits
    coloured = _recoloured(X, 0)
    zero = _recoloured(_mean(X, y, [0])[None], 0)[0]
    init = np.stack([zero, zero + 1e-3, _recoloured(_mean(X, y, [3, 4])[None], 1)[0]])
    model = DTIKMeans(3, transforms=["color"], init=init, max_iter=1,
                      learning_rate=1e-9, random_state=0).fit(coloured)
    network = copy.deepcopy(model.network_).train()
    optimizer = model._make_optimizer(network)
    data = torch.from_numpy(validate_images(model, coloured, image_shape=None, reset=False))

    moved = model._split_and_merge(
        network, optimizer, data, [0], torch.Generator().manual_seed(0),
    )

    assert moved
    labels = model._compute_costs(data, network).argmin(1)
    _assert_one_cluster_per_digit(labels, y)
    assert np.isfinite(network.prototypes.detach().numpy()).all()


def test_no_move_when_switched_off(three_digits):
    X, y = three_digits
    zero = _mean(X, y, [0])
    init = np.stack([zero, zero + 1e-3, _mean(X, y, [3, 4])])
    model, network, optimizer, data = _prepared(DTIKMeans, three_digits, init)
    model.split_merge_samples = 0
    assert not model._split_and_merge(
        network, optimizer, data, [0], torch.Generator().manual_seed(0),
    )


def test_fit_separates_digits_that_share_a_starting_prototype(three_digits):
    X, y = three_digits
    zero = _mean(X, y, [0])
    init = np.stack([zero, zero + 1e-3, _mean(X, y, [3, 4])])
    params = {"transforms": None, "init": init, "max_iter": 3, "random_state": 0}
    with_moves = DTIKMeans(3, **params)
    with_moves.split_merge_every = 1  # about 9 steps per epoch here
    with_moves.fit(X)
    without = DTIKMeans(3, **params)
    without.split_merge_samples = 0
    without.fit(X)
    assert with_moves.inertia_ < without.inertia_
    purity = [np.bincount(with_moves.labels_[y == d]).max() / (y == d).sum() for d in (0, 3, 4)]
    assert min(purity) > 0.9


def test_fit_on_repeated_images_keeps_every_prototype_finite(three_digits):
    X, _ = three_digits
    repeated = np.repeat(X[:4], 25, axis=0)  # four distinct images, 25 copies each
    model = DTIKMeans(3, transforms=["aff"], max_iter=4, batch_size=20, random_state=0)
    model.fit(repeated)
    assert np.isfinite(model.prototypes_).all()
    assert np.isfinite(model.transform(repeated)).all()


def test_checks_are_spaced_by_gradient_steps_and_stop_for_the_decay(three_digits, monkeypatch):
    X, _ = three_digits
    steps_at_check = []

    def record(self, network, optimizer, *args):
        state = optimizer.state[network.prototypes]
        steps_at_check.append(int(state["step"]))
        return False

    monkeypatch.setattr(DTIKMeans, "_split_and_merge", record)
    model = DTIKMeans(3, transforms=None, max_iter=20, batch_size=50, random_state=0)
    model.split_merge_every = 5
    model.fit(X[:100])  # two steps per epoch; the learning-rate decay starts at epoch 18
    assert steps_at_check == [6, 12, 18, 24, 30]  # after epochs 2, 5, 8, 11 and 14


# ------------------------------------------------------------- tried moves
def _spy_trials(monkeypatch, estimator_class):
    """Record every tried move: its epoch, the snapshots taken and the state it keeps."""
    import dti_sklearn._training as training

    trials, snapshots = [], []
    real_take, real_try = training._Snapshot.take.__func__, estimator_class._try_move

    def take(cls, network, *args):
        snapshot = real_take(cls, network, *args)
        snapshots.append(snapshot)
        return snapshot

    def spy(self, network, optimizer, data, starts, epoch, generator, state, progress):
        first = len(snapshots)
        losses = real_try(
            self, network, optimizer, data, starts, epoch, generator, state, progress
        )
        kept = {k: v.clone() for k, v in network.state_dict().items()}
        trials.append({"epoch": epoch, "losses": losses, "kept": kept,
                       "snapshots": snapshots[first:]})
        return losses

    monkeypatch.setattr(training._Snapshot, "take", classmethod(take))
    monkeypatch.setattr(estimator_class, "_try_move", spy)
    return trials


def _same_state(a, b):
    return all(torch.equal(a[key], b[key]) for key in a)


def test_a_snapshot_restores_the_same_training_every_time(three_digits):
    """Restoring twice replays the same steps: training never edits the snapshot."""
    import dti_sklearn._training as training

    X, _ = three_digits
    model = DTIKMeans(3, transforms=["aff"], max_iter=2, batch_size=50, random_state=0)
    model.fit(X[:200])
    network, data = model.network_, torch.from_numpy(X[:200, None].astype(np.float32))
    network.train()
    optimizer = model._make_optimizer(network)
    generator = torch.Generator().manual_seed(0)
    state = training._TrainState(counts=torch.zeros(3))

    def train():
        model._train_epoch(network, optimizer, data, [0], 0, generator, state)
        return [p.detach().clone() for p in network.parameters()]

    train()  # Adam moments that are not zero
    snapshot = training._Snapshot.take(network, optimizer, generator, state)
    moments = copy.deepcopy(snapshot.optimizer["state"])
    first = train()
    snapshot.restore(network, optimizer, generator, state)
    second = train()
    snapshot.restore(network, optimizer, generator, state)
    third = train()
    assert all(torch.equal(a, b) and torch.equal(b, c) for a, b, c in zip(first, second, third))
    for key, saved in moments.items():
        assert all(torch.equal(saved[name], snapshot.optimizer["state"][key][name])
                   for name in saved)


@pytest.mark.parametrize("moved_branch_wins", [False, True])
def test_tried_move_keeps_the_branch_with_the_lower_objective(
    three_digits, monkeypatch, moved_branch_wins,
):
    X, _ = three_digits
    objectives = iter([1.0, 0.0] if moved_branch_wins else [0.0, 1.0])
    real_final_loss = DTIKMeans._final_loss

    def final_loss(self, costs):
        if getattr(self, "_in_trial", False):
            return next(objectives)
        return real_final_loss(self, costs)

    trials = _spy_trials(monkeypatch, DTIKMeans)
    real_try = DTIKMeans._try_move  # the spy

    def flagged(self, *args):
        self._in_trial = True
        try:
            return real_try(self, *args)
        finally:
            self._in_trial = False

    monkeypatch.setattr(DTIKMeans, "_try_move", flagged)
    monkeypatch.setattr(DTIKMeans, "_final_loss", final_loss)
    model = DTIKMeans(3, transforms=["aff"], max_iter=20, batch_size=50, random_state=0)
    model.fit(X[:200])
    assert len(trials) == 1
    trial = trials[0]
    # start, end without the move, end with the move
    assert len(trial["snapshots"]) == 3
    start, without, with_move = (s.network for s in trial["snapshots"])
    assert not _same_state(without, with_move)
    assert _same_state(trial["kept"], with_move if moved_branch_wins else without)
    assert len(model.loss_curve_) == model.n_iter_ == 20
    assert np.isfinite(model.loss_curve_).all()


@pytest.mark.parametrize("diverging", ["without", "with", "both"])
def test_a_diverging_branch_of_the_tried_move_is_dropped(three_digits, monkeypatch, diverging):
    """A branch whose training diverges gives way to the other; both diverging is an error."""
    X, _ = three_digits
    trials = _spy_trials(monkeypatch, DTIKMeans)
    real_try, real_epochs = DTIKMeans._try_move, DTIKMeans._train_epochs  # the spy, the loop
    poisoned = {"without": {0}, "with": {1}, "both": {0, 1}}[diverging]
    branch = {"index": None}

    def flagged(self, *args):
        branch["index"] = 0
        try:
            return real_try(self, *args)
        finally:
            branch["index"] = None

    def train_epochs(self, network, *args, **kwargs):
        if branch["index"] is not None:  # one call per branch of the trial
            if branch["index"] in poisoned:
                with torch.no_grad():
                    network.prototypes.fill_(float("nan"))
            branch["index"] += 1
        return real_epochs(self, network, *args, **kwargs)

    monkeypatch.setattr(DTIKMeans, "_try_move", flagged)
    monkeypatch.setattr(DTIKMeans, "_train_epochs", train_epochs)
    model = DTIKMeans(3, transforms=["aff"], max_iter=20, batch_size=50, random_state=0)
    if diverging == "both":
        with pytest.raises(FloatingPointError, match="diverged"):
            with pytest.warns(RuntimeWarning, match="tried move") as record:
                model.fit(X[:200])
        dropped = [str(w.message) for w in record if "tried move" in str(w.message)]
        assert ["without the move" in m for m in dropped] == [True, False]
        return
    with pytest.warns(RuntimeWarning, match=f"the one {diverging} the move diverged"):
        model.fit(X[:200])
    assert branch["index"] is None and len(trials) == 1
    start, trained = trials[0]["snapshots"]  # the start, the end of the branch kept
    assert _same_state(trials[0]["kept"], trained.network)
    assert not _same_state(trained.network, start.network)
    assert len(model.loss_curve_) == model.n_iter_ == 20
    assert np.isfinite(model.loss_curve_).all()
    assert np.isfinite(model.cluster_centers_).all()


def test_one_tried_move_per_fit_after_the_last_transformation_starts(three_digits, monkeypatch):
    X, _ = three_digits
    trials = _spy_trials(monkeypatch, DTIKMeans)
    model = DTIKMeans(3, transforms=["aff", "mor"], max_iter=30, batch_size=50, random_state=0)
    model.fit(X[:200])
    starts = curriculum_starts("auto", model.transforms_, 30)
    assert starts == [4, 10]
    assert [t["epoch"] for t in trials] == [10 + 2]  # two epochs after the last start
    # Both branches run to the end of the schedule, the decay included.
    assert len(trials[0]["losses"]) == 30 - 12 - 1
    assert len(model.loss_curve_) == 30


def test_both_branches_of_a_tried_move_make_their_own_checks(three_digits, monkeypatch):
    """Each branch goes on with the regular split-and-merge checks until the decay."""
    X, _ = three_digits
    real_check = DTIKMeans._split_and_merge
    calls = []

    def record(self, network, optimizer, data, active, generator, force=False):
        step = int(optimizer.state[network.prototypes]["step"])
        calls.append(("forced" if force else "check", step))
        return real_check(self, network, optimizer, data, active, generator, force=force)

    monkeypatch.setattr(DTIKMeans, "_split_and_merge", record)
    model = DTIKMeans(3, transforms=["aff"], max_iter=30, batch_size=50, random_state=0)
    model.split_merge_every = 8  # a check every second epoch (four steps per epoch)
    model.fit(X[:200])
    kinds = [kind for kind, _ in calls]
    assert kinds.count("forced") == 1
    forced = kinds.index("forced")
    trial_step = calls[forced][1]
    without = [step for _, step in calls[:forced] if step > trial_step]
    with_move = [step for _, step in calls[forced + 1:]]
    # the same checks in both branches, the last one after epoch 25, the
    # epoch before the decay (epoch 27; checks stop one epoch ahead of it)
    assert decay_start(30) == 27
    assert without == with_move == list(range(trial_step + 8, 26 * 4 + 1, 8))


def test_no_tried_move_without_shape_transformations_or_when_switched_off(
    three_digits, monkeypatch,
):
    X, _ = three_digits
    trials = _spy_trials(monkeypatch, DTIKMeans)
    DTIKMeans(3, transforms=None, max_iter=20, batch_size=50, random_state=0).fit(X[:200])
    off = DTIKMeans(3, transforms=["aff"], max_iter=20, batch_size=50, random_state=0)
    off.try_moves = False
    off.fit(X[:200])
    assert trials == []


@pytest.mark.parametrize("estimator_class", [DTIKMeans, DTIGaussianMixture])
def test_fits_with_a_tried_move_are_reproducible(three_digits, monkeypatch, estimator_class):
    X, _ = three_digits
    trials = _spy_trials(monkeypatch, estimator_class)
    params = {"transforms": ["aff"], "max_iter": 20, "batch_size": 50, "random_state": 0}
    fits = [estimator_class(3, **params).fit(X[:200]) for _ in range(2)]
    assert len(trials) == 2
    assert np.array_equal(fits[0].prototypes_, fits[1].prototypes_)
    assert fits[0].loss_curve_ == fits[1].loss_curve_
    assert np.isfinite(fits[0].prototypes_).all()


@pytest.mark.parametrize("estimator_class", [DTIKMeans, DTIGaussianMixture])
def test_images_trained_count_both_branches_of_a_tried_move(
    three_digits, monkeypatch, estimator_class,
):
    X, _ = three_digits
    trials = _spy_trials(monkeypatch, estimator_class)
    params = {"transforms": ["aff"], "max_iter": 20, "batch_size": 50, "random_state": 0}
    model = estimator_class(3, **params).fit(X[:200])
    (trial,) = trials
    assert len(trial["snapshots"]) == 3  # the start, then each branch's end: both trained
    second_branch = 20 - trial["epoch"] - 1
    assert model.n_iter_ == 20
    assert model.n_images_trained_ == 200 * (20 + second_branch)

    off = estimator_class(3, **params)
    off.try_moves = False
    assert off.fit(X[:200]).n_images_trained_ == 200 * 20


def test_images_trained_add_up_over_runs(three_digits):
    X, _ = three_digits
    model = DTIKMeans(3, transforms=["aff"], max_iter=4, batch_size=64, n_init=2, random_state=0)
    model.try_moves = False
    assert model.fit(X[:150]).n_images_trained_ == 2 * 4 * 150  # a last batch of 22 counted
