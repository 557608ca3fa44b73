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
#: Power iterations for the principal direction of every cluster (``seeding="principal"``).
POWER_ITERATIONS = 20
#: How :func:`two_means_splits` may start the halves of every cluster.
_SEEDINGS = ("farthest", "principal", "both")


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


def prototype_units(residuals: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
    """Residuals in the prototypes' units: divided by each sample's value scale.

    With the colour solved per sample (``Color()``), a residual ``x - aligned``
    carries the sample's own contrast and colours: on digits drawn in random
    colours, a two-means of the raw residuals of a cluster of 3s and 5s splits
    it by colour, not by digit.  Dividing channel ``c`` by the scale ``s_c``
    from the prototype to the sample (:meth:`Color.value_scale`: the ratio of
    their contrasts, signed) undoes that.  Several channels are weighted by
    their scales (``r_c s_c / sum(s^2)``), so that a channel in which the
    sample has almost no contrast adds noise, not a blown-up residual; the
    sum of squared scales is floored at a hundredth of its mean, for nearly
    flat images.

    Parameters
    ----------
    residuals : torch.Tensor of shape (n, C, H, W)
        Every sample minus its cluster's aligned prototype.
    scales : torch.Tensor of shape (n, C) or None
        The scales (:meth:`PrototypeNetwork.value_scales`); None leaves
        the residuals as they are.

    Returns
    -------
    torch.Tensor of shape (n, C * H * W)
    """
    if scales is None:
        return residuals.flatten(1)
    power = scales.pow(2).sum(1, keepdim=True)
    weights = scales / torch.maximum(power, 1e-2 * power.mean() + 1e-12)
    return (residuals * weights[:, :, None, None]).flatten(1)


def by_polarity(residuals: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Residuals with every channel turned by the sign of its value scale.

    With the colour solved per sample, a residual is about its sample's
    scale ``s_c`` times a residual in the prototype's units, and that scale
    is negative where the sample's polarity is the prototype's reversed (a
    dark digit on a light background against a light one on dark).  On
    digits in random colours this is half of every cluster, so the plain sum
    of a half's residuals, which :func:`split_gains` measures, cancels out.
    Turning each channel by ``sign(s_c)`` makes the members of a half add
    up, and leaves the residuals unchanged (bit for bit) when no scale is
    negative, as on grey images.

    Parameters
    ----------
    residuals : torch.Tensor of shape (n, C * H * W)
        Every sample minus its cluster's aligned prototype, flattened
        channel by channel.
    scales : torch.Tensor of shape (n, C)
        The samples' value scales (:func:`prototype_units`); zero counts as
        positive.

    Returns
    -------
    torch.Tensor of shape (n, C * H * W)
    """
    n, channels = scales.shape
    signs = torch.where(scales < 0, -1.0, 1.0).to(residuals.dtype)
    return (residuals.view(n, channels, -1) * signs.unsqueeze(2)).view(n, -1)


def split_gains(
    residuals: torch.Tensor, labels: torch.Tensor, sides: torch.Tensor, k: int,
) -> torch.Tensor:
    """How much the cost falls if every cluster is split in two along ``sides``.

    Replacing a cluster's prototype by one per half, each shifted by its
    half's mean residual ``m_h``, lowers the sum of squared residual norms
    by ``sum_h n_h ||m_h||^2``.

    Parameters
    ----------
    residuals : torch.Tensor of shape (n, D)
        Scaled so that the squared norm is the sample's cost up to constants.
    labels : torch.Tensor of shape (n,)
        Cluster of every sample, in ``[0, k)``.
    sides : torch.Tensor of shape (n,)
        0 or 1: the half of its cluster every sample falls in.
    k : int
        Number of clusters.

    Returns
    -------
    torch.Tensor of shape (k,)
        Zero for a cluster with an empty half.
    """
    sums, counts = _half_sums(residuals, labels, sides, k)
    per_half = sums.pow(2).sum(2) / counts.clamp_min(1).to(residuals.dtype)
    return torch.where((counts > 0).all(1), per_half.sum(1), torch.zeros_like(per_half[:, 0]))


def _half_sums(
    residuals: torch.Tensor, labels: torch.Tensor, sides: torch.Tensor, k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, 2, D) sums of the residuals in either half of every cluster, and (k, 2) counts."""
    slot = labels * 2 + sides
    sums = torch.zeros(2 * k, residuals.shape[1], dtype=residuals.dtype, device=residuals.device)
    sums.index_add_(0, slot, residuals)
    return sums.view(k, 2, -1), torch.bincount(slot, minlength=2 * k).view(k, 2)


def two_means_splits(
    residuals: torch.Tensor, labels: torch.Tensor, k: int, seeding: str = "farthest",
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
    seeding : {"farthest", "principal", "both"}, default="farthest"
        How the two halves start (Notes).

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
    With ``"farthest"`` the two centres of a cluster start at its member
    farthest from the cluster's mean residual and at the member farthest
    from that one, a deterministic version of k-means++ seeding.  With
    ``"principal"`` the members start split by the side of the cluster's
    mean they lie on along its principal direction (power iterations), as
    in principal-direction divisive partitioning: a few outlying members
    cannot make one half of them alone.  On a cluster of 4s and 9s of
    MNIST-test whose residuals had been divided by the samples' solved
    gains, the farthest members made a half of one sample; the principal
    direction split it 831 + 8 and 141 + 930 (docs/benchmarks.md).  With
    ``"both"`` the two-means runs from either start and every cluster keeps
    the split of the larger gain (the lower inertia), as k-means keeps the
    best of several initialisations.
    """
    if seeding not in _SEEDINGS:
        raise ValueError(
            f"seeding must be one of {', '.join(map(repr, _SEEDINGS))}, got {seeding!r}."
        )
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

    starts = []
    if seeding in ("farthest", "both"):
        first = farthest_from(means)
        starts.append(torch.stack([first, farthest_from(first)], dim=1))  # (k, 2, D)
    if seeding in ("principal", "both"):
        starts.append(_principal_halves(residuals, labels, means, k))
    gains, sides = _two_means(residuals, labels, starts[0], k)
    for centres in starts[1:]:
        other_gains, other_sides = _two_means(residuals, labels, centres, k)
        better = other_gains > gains
        gains = torch.where(better, other_gains, gains)
        sides = torch.where(better[labels], other_sides, sides)
    return gains, sides


def _two_means(
    residuals: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor, k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's iterations of every cluster's two-means from (k, 2, D) ``centres``.

    Returns the (k,) gains, zero for a cluster left with an empty half, and
    the (n,) sides, as :func:`two_means_splits`.
    """
    dtype, device = residuals.dtype, residuals.device
    own = torch.stack([2 * labels, 2 * labels + 1], dim=1)  # (n, 2) rows of flat centres
    for _ in range(TWO_MEANS_ITERATIONS):
        sides = _gain_per_side(residuals, centres, own).argmax(1)
        sums, counts = _half_sums(residuals, labels, sides, k)
        updated = sums / counts.clamp_min(1).to(dtype).unsqueeze(2)
        # A half left empty keeps its previous centre.
        centres = torch.where((counts == 0).view(k, 2, 1), centres, updated)
    per_sample, sides = _gain_per_side(residuals, centres, own).max(1)
    gains = torch.zeros(k, dtype=dtype, device=device).index_add_(0, labels, per_sample)
    halves = torch.bincount(labels * 2 + sides, minlength=2 * k).view(k, 2)
    splittable = (halves > 0).all(1)
    return torch.where(splittable, gains, torch.zeros_like(gains)), sides


def _principal_halves(
    residuals: torch.Tensor, labels: torch.Tensor, means: torch.Tensor, k: int,
) -> torch.Tensor:
    """(k, 2, D) means of every cluster's members on either side of its principal direction."""
    centred = residuals - means[labels]
    # A deterministic start that is not orthogonal to the principal direction.
    direction = torch.zeros_like(means).index_add_(0, labels, centred.abs())
    for _ in range(POWER_ITERATIONS):
        direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-30)
        along = (centred * direction[labels]).sum(1, keepdim=True)
        direction = torch.zeros_like(means).index_add_(0, labels, centred * along)
    sides = ((centred * direction[labels]).sum(1) > 0).long()
    sums, counts = _half_sums(residuals, labels, sides, k)
    halves = sums / counts.clamp_min(1).to(residuals.dtype).unsqueeze(2)
    # An empty side (a cluster of one member, or all alike) starts at the mean.
    return torch.where((counts == 0).unsqueeze(2), means.unsqueeze(1), halves)


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
