"""When each transformation is switched on, and the learning-rate schedule."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

from dti_sklearn.transforms import Identity, Transformation

#: Fraction of the epochs spent with the identity only (plain K-means) under
#: ``curriculum="auto"``; the paper spends 50 of 300 epochs.
IDENTITY_PHASE = 0.15
#: Fraction of the epochs over which the transformations are switched on,
#: one after the other, under ``curriculum="auto"``.
RAMP_PHASE = 0.35
#: Fraction of the epochs, at the end, trained at a tenth of the learning rate.
DECAY_PHASE = 0.1


def curriculum_starts(
    curriculum: str | Sequence[int],
    transformations: list[Transformation],
    max_iter: int,
) -> list[int]:
    """Epoch at which each transformation of the sequence is switched on.

    Parameters
    ----------
    curriculum : "auto" or sequence of int
        ``"auto"``: the identity only for the first ``IDENTITY_PHASE`` of the
        epochs, then the parametric transformations one after the other,
        simplest first (by their ``curriculum_rank``, ties in the given
        order), evenly over the next ``RAMP_PHASE``.  Photometric ones
        (colour) are on from epoch 0.  A sequence gives the
        start epoch of every transformation explicitly.
    transformations : list of Transformation
        The sequence, in order.
    max_iter : int
        Number of epochs.

    Returns
    -------
    list of int
    """
    if isinstance(curriculum, str):
        if curriculum != "auto":
            raise ValueError(
                f"curriculum must be 'auto' or a sequence of epochs, got {curriculum!r}."
            )
        parametric = sorted(
            (i for i, t in enumerate(transformations) if not isinstance(t, Identity)),
            key=lambda i: (transformations[i].curriculum_rank, i),
        )
        starts = [0] * len(transformations)
        # Photometric ones (colour) are on from the first epoch: they make
        # that phase colour-blind K-means instead of K-means on the colours.
        parametric = [i for i in parametric if not transformations[i].photometric]
        for rank, i in enumerate(parametric):
            fraction = IDENTITY_PHASE + RAMP_PHASE * rank / max(len(parametric), 1)
            starts[i] = int(round(fraction * max_iter))
        return starts
    starts = list(curriculum)
    if len(starts) != len(transformations) or not all(
        isinstance(s, Integral) and not isinstance(s, bool) and s >= 0 for s in starts
    ):
        raise ValueError(
            "curriculum must be 'auto' or one non-negative start epoch per "
            f"transformation ({len(transformations)}), got {curriculum!r}."
        )
    return [int(s) for s in starts]


def active_at(starts: list[int], epoch: int) -> list[int]:
    """Indices of the transformations switched on at ``epoch``."""
    return [i for i, s in enumerate(starts) if s <= epoch]


def decay_start(max_iter: int) -> int:
    """First epoch trained at a tenth of the learning rate (``max_iter`` if none)."""
    if max_iter < 10:
        return max_iter
    return max_iter - int(round(DECAY_PHASE * max_iter))


def learning_rate_at(base: float, epoch: int, max_iter: int) -> float:
    """Learning rate of ``epoch``: the base rate, a tenth of it at the end."""
    return base * 0.1 if epoch >= decay_start(max_iter) else base




def warmup_rate(
    rate: float, epoch: int, step: int, start: int | None, steps_per_epoch: int,
    warmup_steps: int,
) -> float:
    """Learning rate of the encoder and heads at ``step`` of ``epoch``.

    The rate rises linearly over ``warmup_steps`` gradient steps from
    ``start``, the epoch at which the first transformation with predicted
    parameters is switched on (``rate / warmup_steps`` at its first step,
    ``rate`` from step ``warmup_steps`` on): until then the encoder and
    heads get no gradient, and a linear warm-up keeps Adam's first steps
    on them, taken from moment estimates of a few batches, small.
    ``rate`` before ``start``, without one (None) and when
    ``warmup_steps`` is 0.

    Parameters
    ----------
    rate : float
        The epoch's learning rate (:func:`learning_rate_at`).
    epoch, step : int
        The epoch, and the gradient step within it (from 0).
    start : int or None
        Start epoch of the first transformation with predicted parameters.
    steps_per_epoch : int
        Gradient steps in one epoch.
    warmup_steps : int
        Length of the warm-up in gradient steps.

    Returns
    -------
    float
    """
    if warmup_steps <= 0 or start is None or epoch < start:
        return rate
    since = (epoch - start) * steps_per_epoch + step
    return rate * (since + 1) / warmup_steps if since < warmup_steps else rate
