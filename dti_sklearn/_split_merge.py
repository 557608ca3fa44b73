"""Split-and-merge moves: restart a redundant cluster as half of a mixed one.

Gradient training, like Lloyd's K-means, only moves prototypes locally: a
cluster that holds two kinds of images (on MNIST, 4s and 9s) while two other
clusters share one kind stays that way, and by the end of training the
transformations have bent the shared prototype to fit both kinds about as
well as two would.  During training the mistake is still visible in the
objective: splitting the mixed cluster in two lowers the cost by more than
dropping one of the redundant clusters raises it.  These functions measure
both quantities on a sample of the training set, for all clusters at once
(no loop over clusters); :meth:`TrainingLoop._split_and_merge` acts on them.
"""

from __future__ import annotations

import torch

#: Lloyd iterations of the two-means split of every cluster.
TWO_MEANS_ITERATIONS = 10


def removal_costs(costs: torch.Tensor) -> torch.Tensor:
    """How much the objective rises if each cluster is removed.

    Parameters
    ----------
    costs : torch.Tensor of shape (n, K)
        Cost of every sample under every cluster, lower is better.

    Returns
    -------
    torch.Tensor of shape (K,)
        For every cluster, the sum over its members of the second-lowest
        minus the lowest cost: their members' cost rise when they move to
        their next-best cluster.  Zero for a cluster without members.
    """
    k = costs.shape[1]
    lowest = costs.topk(min(2, k), dim=1, largest=False)
    rise = lowest.values[:, -1] - lowest.values[:, 0]
    return torch.zeros(k, dtype=costs.dtype, device=costs.device).index_add_(
        0, lowest.indices[:, 0], rise
    )


def two_means_splits(
    residuals: torch.Tensor, labels: torch.Tensor, k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split every cluster's residuals in two with a batched two-means.

    Parameters
    ----------
    residuals : torch.Tensor of shape (n, D)
        Every sample minus its cluster's aligned prototype, scaled so that
        its squared norm is the sample's cost up to terms that do not depend
        on the prototype.
    labels : torch.Tensor of shape (n,)
        Cluster of every sample, in ``[0, k)``.
    k : int
        Number of clusters.

    Returns
    -------
    gains : torch.Tensor of shape (k,)
        Sum of squared residual norms of the cluster's members minus the
        two-means inertia: how much the cost falls if the cluster's
        prototype is replaced by two.  Zero for a cluster that cannot be
        split in two non-empty halves (fewer than two members, or all alike).
    sides : torch.Tensor of shape (n,)
        0 or 1: the half of its cluster every sample falls in.

    Notes
    -----
    The two centres of a cluster start at its member farthest from the
    cluster's mean residual and at the member farthest from that one, a
    deterministic version of k-means++ seeding.
    """
    n = residuals.shape[0]
    dtype, device = residuals.dtype, residuals.device
    member = torch.zeros(k, n, dtype=torch.bool, device=device)
    member[labels, torch.arange(n, device=device)] = True
    sizes = member.sum(1).clamp_min(1)
    means = torch.zeros(k, residuals.shape[1], dtype=dtype, device=device).index_add_(
        0, labels, residuals
    ) / sizes.unsqueeze(1).to(dtype)

    def farthest_from(points: torch.Tensor) -> torch.Tensor:
        # (k, D) reference points -> (k, D) the farthest member of each cluster.
        distance = (residuals - points[labels]).pow(2).sum(1)
        masked = torch.where(member, distance.unsqueeze(0), distance.new_tensor(-1.0))
        return residuals[masked.argmax(1)]

    first = farthest_from(means)
    centres = torch.stack([first, farthest_from(first)], dim=1)  # (k, 2, D)
    own = torch.stack([2 * labels, 2 * labels + 1], dim=1)  # (n, 2) rows of flat centres
    for _ in range(TWO_MEANS_ITERATIONS):
        sides = _gain_per_side(residuals, centres, own).argmax(1)
        slot = labels * 2 + sides
        sums = torch.zeros(2 * k, residuals.shape[1], dtype=dtype, device=device)
        sums.index_add_(0, slot, residuals)
        counts = torch.bincount(slot, minlength=2 * k).to(dtype).unsqueeze(1)
        updated = (sums / counts.clamp_min(1)).view(k, 2, -1)
        # A half left empty keeps its previous centre.
        centres = torch.where((counts == 0).view(k, 2, 1), centres, updated)
    per_sample, sides = _gain_per_side(residuals, centres, own).max(1)
    gains = torch.zeros(k, dtype=dtype, device=device).index_add_(0, labels, per_sample)
    halves = torch.bincount(labels * 2 + sides, minlength=2 * k).view(k, 2)
    splittable = (halves > 0).all(1)
    return torch.where(splittable, gains, torch.zeros_like(gains)), sides


def _gain_per_side(
    residuals: torch.Tensor, centres: torch.Tensor, own: torch.Tensor,
) -> torch.Tensor:
    """(n, 2) ``||r||^2 - ||r - c||^2 = 2 r.c - ||c||^2`` for both centres of r's cluster.

    One matrix product against all ``2k`` centres: nothing of size
    ``n x 2 x D`` is materialised, and the gain needs no difference of two
    large sums.
    """
    flat = centres.reshape(-1, centres.shape[2])  # (2k, D)
    dots = (residuals @ flat.T).gather(1, own)
    return 2 * dots - flat.pow(2).sum(1)[own]
