"""Tests for dti_sklearn.metrics."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from dti_sklearn import metrics
from dti_sklearn.metrics import cluster_accuracy


def test_permuted_labels_give_perfect_accuracy():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, size=200)
    perm = np.array([3, 0, 4, 1, 2])
    assert cluster_accuracy(y_true, perm[y_true]) == 1.0


def test_hand_computed_case():
    # Contingency (rows classes 0,1,2; columns clusters 0,1):
    # [[2, 0], [1, 1], [0, 2]] -> best matching 0->0, 2->1: 4 of 6 correct.
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 1]
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(4 / 6)


def test_hand_computed_case_where_greedy_is_wrong():
    # Contingency [[3, 2], [2, 0]]: greedy picks 3 (then 0) = 3, Hungarian picks 2 + 2 = 4.
    y_true = [0, 0, 0, 0, 0, 1, 1]
    y_pred = [0, 0, 0, 1, 1, 0, 0]
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(4 / 7)


def test_more_clusters_than_classes_counts_unmatched_as_wrong():
    y_true = [0, 0, 0, 1, 1, 1]
    y_pred = [0, 0, 2, 1, 1, 3]  # clusters 2 and 3 cannot be matched
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(4 / 6)


def test_fewer_clusters_than_classes():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [5, 5, 5, 5, 5, 5]  # one cluster: at most one class right
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(2 / 6)


def test_string_labels_and_return_type():
    acc = cluster_accuracy(np.array(["a", "b", "b"]), np.array(["x", "y", "y"]))
    assert isinstance(acc, float)
    assert acc == 1.0


@pytest.mark.parametrize(
    "y_true, y_pred, match",
    [
        ([[0, 1]], [0, 1], "y_true must be a 1-D"),
        ([0, 1], [[0, 1]], "y_pred must be a 1-D"),
        ([0, 1, 1], [0, 1], "same length"),
        ([], [], "empty"),
    ],
)
def test_invalid_inputs(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        cluster_accuracy(y_true, y_pred)


def test_docstring_examples_run():
    result = doctest.testmod(metrics, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
