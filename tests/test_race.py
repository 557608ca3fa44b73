"""Tests of the race between starts at the beginning of each fit."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from dti_sklearn import DTIGaussianMixture, DTIKMeans
from dti_sklearn._schedule import curriculum_starts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def few_digits():
    """200 of scikit-learn's 8 x 8 digits in [0, 1]."""
    return load_digits().images[:200] / 16.0


def _spy_starts(monkeypatch, estimator_class):
    """Record the network of every start that a fit builds."""
    networks = []
    real = estimator_class._start_training

    def record(self, *args):
        started = real(self, *args)
        networks.append(started[0])
        return started

    monkeypatch.setattr(estimator_class, "_start_training", record)
    return networks


def _spy_epochs(monkeypatch, estimator_class):
    """Record the (first, last) epochs of every call that trains a run of epochs."""
    spans = []
    real = estimator_class._train_epochs

    def record(self, network, optimizer, generator, state, data, starts, first, progress,
               trial_epoch=None, last=None):
        spans.append((first, last))
        return real(self, network, optimizer, generator, state, data, starts, first,
                    progress, trial_epoch, last)

    monkeypatch.setattr(estimator_class, "_train_epochs", record)
    return spans


@pytest.mark.parametrize("winner", [0, 1, 2])
def test_the_start_with_the_lowest_objective_goes_on(few_digits, monkeypatch, winner):
    objectives = [3.0, 2.0, 1.0]
    objectives[winner] = 0.5
    calls = iter(objectives)
    real_final_loss = DTIKMeans._final_loss

    def final_loss(self, costs):
        value = real_final_loss(self, costs)  # computed, then overridden in the race
        return next(calls, value)

    networks = _spy_starts(monkeypatch, DTIKMeans)
    monkeypatch.setattr(DTIKMeans, "_final_loss", final_loss)
    model = DTIKMeans(4, transforms=["aff"], max_iter=12, batch_size=50, random_state=0)
    model.n_candidates = 3
    model.race_steps = 0  # two epochs of four steps
    model.try_moves = False
    model.fit(few_digits)
    assert len(networks) == 3
    assert model.network_ is networks[winner]
    # the starts differ, so the choice matters
    assert not np.array_equal(
        networks[0].prototypes.detach().numpy(), networks[1].prototypes.detach().numpy()
    )
    # the loss curve is the winner's: its race epochs, then the rest
    assert len(model.loss_curve_) == model.n_iter_ == 12
    assert np.isfinite(model.loss_curve_).all()


@pytest.mark.parametrize("estimator_class", [DTIKMeans, DTIGaussianMixture])
@pytest.mark.parametrize(("race_steps", "race_epochs"), [(0, 2), (8, 2), (9, 3), (20, 5)])
def test_the_race_trains_two_epochs_and_race_steps_of_the_first_warp(
    few_digits, monkeypatch, estimator_class, race_steps, race_epochs,
):
    spans = _spy_epochs(monkeypatch, estimator_class)
    model = estimator_class(3, transforms=["aff", "mor"], max_iter=30, batch_size=50,
                            random_state=0)
    model.n_candidates = 3
    model.race_steps = race_steps  # 200 images at batch 50: four steps per epoch
    model.try_moves = False
    model.fit(few_digits)
    starts = curriculum_starts("auto", model.transforms_, 30)
    assert starts == [4, 10]
    race_end = starts[0] + race_epochs
    # three starts race to the end of the race, one goes on from there
    assert spans == [(0, race_end)] * 3 + [(race_end, None)]
    assert len(model.loss_curve_) == 30


@pytest.mark.parametrize("estimator_class", [DTIKMeans, DTIGaussianMixture])
def test_no_race_by_default(few_digits, monkeypatch, estimator_class):
    networks = _spy_starts(monkeypatch, estimator_class)
    estimator_class(3, transforms=["aff"], max_iter=6, batch_size=50,
                    random_state=0).fit(few_digits)
    assert len(networks) == 1


def test_no_race_without_shape_transformations_or_room_before_the_decay(
    few_digits, monkeypatch,
):
    networks = _spy_starts(monkeypatch, DTIKMeans)
    model = DTIKMeans(3, transforms=None, max_iter=6, batch_size=50, random_state=0)
    model.n_candidates = 3
    model.fit(few_digits)
    assert len(networks) == 1
    # 300 steps of the warp (the default race_steps) do not fit before the
    # decay of six epochs of four steps: one start
    model = DTIKMeans(3, transforms=["aff"], max_iter=6, batch_size=50, random_state=0)
    model.n_candidates = 3
    model.fit(few_digits)
    assert len(networks) == 2


def test_each_initialisation_races_its_own_starts(few_digits, monkeypatch):
    networks = _spy_starts(monkeypatch, DTIKMeans)
    model = DTIKMeans(3, transforms=["aff"], max_iter=8, batch_size=50, n_init=2,
                      random_state=0)
    model.n_candidates = 3
    model.race_steps = 0
    model.try_moves = False
    model.fit(few_digits)
    assert len(networks) == 2 * model.n_candidates
    prototypes = {networks[i].prototypes.detach().numpy().tobytes() for i in range(6)}
    assert len(prototypes) == 6

