"""Clustering metrics that complement scikit-learn's.

scikit-learn already provides label-permutation-invariant scores such as
:func:`sklearn.metrics.normalized_mutual_info_score` and
:func:`sklearn.metrics.adjusted_rand_score`. The clustering literature (and the
DTI clustering paper) also reports *cluster accuracy*, which this module adds.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment
from sklearn.metrics.cluster import contingency_matrix

__all__ = ["cluster_accuracy"]


def _check_labels(y: ArrayLike, name: str) -> np.ndarray:
    """Return ``y`` as a 1-D array or raise a ValueError naming it."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array of labels, got an array of shape {y.shape}."
        )
    return y


def cluster_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Accuracy of a clustering under the best one-to-one cluster-to-class mapping.

    Clusters are matched to classes by the Hungarian algorithm
    (:func:`scipy.optimize.linear_sum_assignment`) on the contingency matrix so
    as to maximise the number of correctly classified samples. Each class is
    matched to at most one cluster and each cluster to at most one class. When
    there are more clusters than classes, the samples of unmatched clusters
    count as errors; when there are fewer, the samples of unmatched classes do.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground-truth class labels (any hashable, sortable labels).
    y_pred : array-like of shape (n_samples,)
        Cluster labels to evaluate (any hashable, sortable labels).

    Returns
    -------
    accuracy : float
        Fraction of samples, in [0, 1], whose cluster is mapped to their class.

    Raises
    ------
    ValueError
        If the inputs are not 1-D, differ in length or are empty.

    See Also
    --------
    sklearn.metrics.normalized_mutual_info_score : Another permutation-invariant score.

    Examples
    --------
    >>> from dti_sklearn.metrics import cluster_accuracy
    >>> cluster_accuracy([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
    >>> round(cluster_accuracy([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1]), 4)
    0.6667
    """
    y_true = _check_labels(y_true, "y_true")
    y_pred = _check_labels(y_pred, "y_pred")
    if y_true.shape[0] != y_pred.shape[0]:
        raise ValueError(
            "y_true and y_pred must have the same length, "
            f"got {y_true.shape[0]} and {y_pred.shape[0]}."
        )
    if y_true.shape[0] == 0:
        raise ValueError("y_true and y_pred are empty; cluster accuracy is undefined.")
    counts = contingency_matrix(y_true, y_pred)  # (n_classes, n_clusters)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / y_true.shape[0])
