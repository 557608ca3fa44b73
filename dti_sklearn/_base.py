"""The shared DTI estimator: parameters, validation, the fit loop, inference.

:class:`BaseDTI` owns everything the two estimators have in common, the way
scikit-learn's ``BaseMixture`` owns the EM loop: input validation, the
``n_init`` restarts, the epochs with their curriculum and learning-rate
decay, empty-cluster reassignment, the final assignment pass, device-safe
pickling and the plumbing of ``predict``, ``transform`` and
``get_aligned_prototypes``.  Subclasses fill a few small hooks with their
objective (see the methods marked *hook*).
"""

from __future__ import annotations

import copy
import math
from abc import abstractmethod
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from dti_sklearn._images import ImageLayout, IntensityScale, validate_images
from dti_sklearn._malloc import tune_malloc
from dti_sklearn._params import NestedTransformsParamsMixin
from dti_sklearn._persistence import DeviceSafePickleMixin
from dti_sklearn._schedule import (
    active_at,
    curriculum_starts,
    decay_start,
    learning_rate_at,
)
from dti_sklearn._split_merge import removal_costs, two_means_splits
from dti_sklearn._threads import limit_torch_threads
from dti_sklearn._torch.device import resolve_device
from dti_sklearn._torch.network import PrototypeNetwork
from dti_sklearn._torch.standardize import standardize_channels
from dti_sklearn.transforms import Identity, Transformation, make_transformations
from dti_sklearn.transforms._base import has_photometric

#: Default transformation sequence of the mixture, and of DTIKMeans on images
#: smaller than 16 x 16: the paper's MNIST modules, with the two warps next to
#: each other so that they share one sampling grid.
DEFAULT_TRANSFORMS = ("affine", "thin_plate_spline", "morphological")

#: Devices on which Adam runs as one fused kernel.
_FUSED_ADAM_DEVICES = ("cpu", "cuda")

#: Pixel values (samples x values per image) that the split-and-merge check
#: holds at most: 2,048 MNIST images, 1,365 colour images of 64 x 64.
_SPLIT_MERGE_VALUES = 2**24

#: Samples per inference batch, at most.
_INFERENCE_BATCH = 128

#: Aligned-prototype values (samples x prototypes x values per image) that an
#: inference batch holds at most on the CPU.  Past about this size the
#: element-wise passes over the aligned prototypes leave the caches: 1,024
#: random 64 x 64 RGB images, K = 10, two threads, `predict` took 4.01 s in
#: batches of 128, 1.54 s in 64, 1.28 s in 32, 1.39 s in 16; 64 x 64 grey
#: 0.55 / 0.54 / 0.59 / 0.60 s; 28 x 28 grey 0.13 / 0.15 / 0.19 / 0.30 s.
_INFERENCE_VALUES = 6 * 2**20


#: Gradient steps that ``max_iter="auto"`` aims for by default, for a sequence
#: without a colour transformation.  On MNIST-test (host B, seeds 0-4)
#: DTIKMeans reached 95.6 +- 1.4 ACC with 3,000 steps (20 epochs) and
#: 96.4 +- 0.5 with 9,000 (58 epochs).  15,000 (96 epochs) lifted seeds 2 and 3
#: to 96.8 and 96.7 but put two digits in one cluster in seeds 1 and 4 (85.3
#: and 92.5; 93.6 +- 4.5 in all).
AUTO_STEPS = 9000
#: Gradient steps of ``max_iter="auto"`` with a colour transformation, for
#: either estimator.  Its steps cost more (three channels, a wider encoder
#: input): 9,000 steps (58 epochs of MNIST-color) take 4 to 6 minutes on two
#: cores, and 20 epochs left two digits merged where 60 did not.
PHOTOMETRIC_AUTO_STEPS = 9000
#: Bounds on the number of epochs under ``max_iter="auto"``.
AUTO_EPOCHS = (20, 200)


@dataclass
class _Run:
    """Outcome of one initialisation: the network, its final costs and loss."""

    network: PrototypeNetwork
    costs: np.ndarray
    loss: float
    loss_curve: list[float] = field(default_factory=list)
    n_iter: int = 0


@dataclass
class _TrainState:
    """Counters of a training run that a tried move copies and restores."""

    counts: torch.Tensor
    iteration: int = 0
    last_check: int = 0


class _Start(NamedTuple):
    """A network in training and what trains it, in ``_train_epochs``'s argument order."""

    network: PrototypeNetwork
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    state: _TrainState


@dataclass
class _Snapshot:
    """A copy of what training changes: network, optimizer, generator and counters."""

    network: dict
    optimizer: dict
    generator: torch.Tensor
    state: _TrainState

    @classmethod
    def take(
        cls, network: PrototypeNetwork, optimizer: torch.optim.Optimizer,
        generator: torch.Generator, state: _TrainState,
    ) -> _Snapshot:
        """Copy the current state."""
        return cls(
            copy.deepcopy(network.state_dict()),
            copy.deepcopy(optimizer.state_dict()),
            generator.get_state(),
            _TrainState(state.counts.clone(), state.iteration, state.last_check),
        )

    def restore(
        self, network: PrototypeNetwork, optimizer: torch.optim.Optimizer,
        generator: torch.Generator, state: _TrainState,
    ) -> None:
        """Put the copied state back in place; the snapshot can be restored again.

        ``Optimizer.load_state_dict`` keeps the given tensors when their
        device and dtype already fit, so training after a restore would
        update the snapshot's Adam moments in place; it gets a copy.
        """
        network.load_state_dict(self.network)  # copies into the parameters
        optimizer.load_state_dict(copy.deepcopy(self.optimizer))
        generator.set_state(self.generator)
        state.counts.copy_(self.state.counts)
        state.iteration, state.last_check = self.state.iteration, self.state.last_check


class BaseDTI(
    NestedTransformsParamsMixin,
    DeviceSafePickleMixin,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
    BaseEstimator,
):
    """Base class of the DTI estimators (not for direct use).

    Parameters are documented on :class:`~dti_sklearn.DTIKMeans` and
    :class:`~dti_sklearn.DTIGaussianMixture`.
    """

    _parameter_constraints: dict = {
        "transforms": [list, tuple, str, Transformation, None],
        "max_iter": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init": [StrOptions({"random", "k-means++", "k-means"}), "array-like"],
        "curriculum": [StrOptions({"auto"}), list, tuple],
        "image_shape": [None, list, tuple],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    #: Clusters that receive less than this share of 1/K of the samples
    #: between two checks are restarted from the largest cluster.
    empty_cluster_share = 0.2
    #: Iterations between two empty-cluster checks.
    reassign_every = 40
    #: Training images sampled for the split-and-merge check at the end of
    #: an epoch before the learning-rate decay (fewer for large images, see
    #: ``_SPLIT_MERGE_VALUES``; 0 switches the moves off).
    split_merge_samples = 2048
    #: Gradient steps between two split-and-merge checks at least: every epoch
    #: of the 10,000 MNIST-test images at batch 64 (157 steps), every sixth
    #: epoch of scikit-learn's 1,797 ``load_digits`` images (29 steps).
    split_merge_every = 150
    #: Whether a fit tries one split-and-merge move by training the rest of
    #: the schedule with and without it (see ``_try_move``).
    try_moves = True
    #: Starts that each initialisation races through its first epochs with a
    #: shape-changing transformation; the one with the lowest objective then
    #: is trained to the end (see ``_race``).  1, the default, runs no race:
    #: with 3, DTIKMeans on MNIST-test rose from 97.0 +- 0.3 to 97.4 +- 0.1
    #: ACC, but fell on MNIST resized to 16 x 16 (two seeds, 96.9 and 96.8
    #: -> 96.6 and 95.9) and on ``load_digits`` (docs/benchmarks.md).
    n_candidates = 1
    #: Epochs that the race trains with the first shape-changing
    #: transformation on, at least.
    race_epochs = 2
    #: Gradient steps that the race trains with the first shape-changing
    #: transformation on, at least: two epochs of MNIST-test's 10,000 images
    #: at batch 64 (314 steps), eleven of scikit-learn's 1,797 ``load_digits``
    #: images, where two epochs (58 steps) picked a start that ended with two
    #: digits in one cluster in one seed of five.
    race_steps = 300
    #: Weight decay of the encoder and heads (the paper's 1e-6).
    weight_decay = 1e-6
    #: Gradient steps that ``max_iter="auto"`` aims for without a colour
    #: transformation (see ``_auto_steps``).
    auto_steps = AUTO_STEPS

    # ------------------------------------------------------------------ hooks
    @property
    @abstractmethod
    def _n_clusters(self) -> int:
        """Number of clusters K (hook)."""

    def _transform_specs(self, images: np.ndarray):
        """The ``transforms`` to build for these ``(N, C, H, W)`` images (hook)."""
        return self.transforms

    def _build_transformations(self, images: np.ndarray) -> list[Transformation]:
        """Fresh transformation objects for these ``(N, C, H, W)`` images, sizes resolved."""
        height, width = images.shape[2:]
        specs = make_transformations(self._transform_specs(images))
        return [t.for_image_size(height, width) for t in specs]

    def _resolve_auto_parameters(self, images: np.ndarray) -> None:
        """Set the fitted values of parameters given as ``"auto"`` (hook)."""

    def _network_kwargs(self, data: torch.Tensor, centres: torch.Tensor) -> dict:
        """Extra keyword arguments of :class:`PrototypeNetwork` (hook)."""
        return {}

    @abstractmethod
    def _batch_loss(
        self, network: PrototypeNetwork, x: torch.Tensor, active: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss of a batch and the cluster of each sample (hook)."""

    @abstractmethod
    def _costs(
        self, network: PrototypeNetwork, x: torch.Tensor, means: torch.Tensor,
        deviations: torch.Tensor | None,
    ) -> torch.Tensor:
        """(B, K) float64 costs, lower for a better fit (hook)."""

    @abstractmethod
    def _final_loss(self, costs: np.ndarray) -> float:
        """The objective on the whole training set, from its costs (hook)."""

    @abstractmethod
    def _set_fitted_attributes(self, network: PrototypeNetwork, costs: np.ndarray) -> None:
        """Store the estimator's fitted attributes (hook)."""

    def _split_residuals(
        self, residuals: torch.Tensor, deviations: torch.Tensor | None,
    ) -> torch.Tensor:
        """Scale ``x - aligned`` so that its squared norm is the cost up to constants (hook).

        Both arguments are ``(n, D)``: each sample's residual against its
        cluster's aligned prototype and, for the mixture, that prototype's
        aligned deviations.  K-means costs are squared residuals already.
        """
        return residuals

    def _auto_steps(self, transformations: list[Transformation]) -> int:
        """Gradient steps that ``max_iter="auto"`` aims for with this sequence (hook)."""
        if has_photometric(transformations):
            return PHOTOMETRIC_AUTO_STEPS
        return self.auto_steps

    def _after_reassignment(
        self, network: PrototypeNetwork, small: torch.Tensor, largest: int,
    ) -> None:
        """Adjust parameters after clusters were copied from the largest (hook)."""

    # --------------------------------------------------------------- fitting
    @_fit_context(prefer_skip_nested_validation=True)
    @limit_torch_threads
    def fit(self, X, y=None):
        """Learn the prototypes and the transformation predictor.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W), (n_samples, H, W, C) or (n_samples, d)
            Training images; ``uint8`` values are scaled to ``[0, 1]``.  Any
            value range works: the network sees them mapped onto ``[0, 1]``
            (``data_min_``, ``data_range_``) and outputs come back in the
            units of ``X``.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        tune_malloc()
        images = validate_images(self, X, image_shape=self.image_shape, reset=True)
        scale = IntensityScale.of(images)
        self.data_min_, self.data_range_ = scale.minimum, scale.span
        images = scale.to_model(images)
        n_samples, k = images.shape[0], self._n_clusters
        if n_samples < k:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={k}.")
        self._resolve_auto_parameters(images)
        transformations = self._build_transformations(images)
        self._epochs = _auto_epochs(
            self.max_iter, n_samples, self.batch_size, self._auto_steps(transformations)
        )
        starts = curriculum_starts(self.curriculum, transformations, self._epochs)
        device = resolve_device(self.device)
        rng = check_random_state(self.random_state)
        data = torch.from_numpy(images).to(device)

        best: _Run | None = None
        for init_index in range(self.n_init):
            seed = int(rng.randint(np.iinfo(np.int32).max))
            run = self._fit_single(data, images, transformations, starts, seed, init_index)
            if best is None or run.loss < best.loss:
                best = run
        assert best is not None
        self.network_ = best.network
        self.device_ = device
        self.transforms_ = transformations
        self.loss_curve_ = [self._cost_to_user_units(loss, 1) for loss in best.loss_curve]
        self.n_iter_ = best.n_iter
        self._set_fitted_attributes(
            best.network, self._cost_to_user_units(best.costs, self.n_features_in_)
        )
        return self

    @property
    def _intensity_scale(self) -> IntensityScale:
        """The map between the caller's pixel values and the network's."""
        # Models pickled before the scale existed were trained on raw values.
        return IntensityScale(getattr(self, "data_min_", 0.0), getattr(self, "data_range_", 1.0))

    def _cost_to_user_units(self, cost, n_values: int):
        """A cost of ``n_values`` pixels, from the network's values to the caller's (hook)."""
        raise NotImplementedError

    def _initial_centres(
        self, images: np.ndarray, seed: int, colour_blind: bool = False,
    ) -> np.ndarray:
        """(K, C, H, W) starting prototypes from ``init``.

        With ``colour_blind`` (a photometric transformation in the sequence)
        the string inits pick among colour-standardised images, which the
        colour transformation can then recolour to fit any sample.
        """
        k = self._n_clusters
        layout: ImageLayout = self._layout
        if colour_blind and isinstance(self.init, str):
            images = standardize_channels(torch.from_numpy(images)).numpy()
        flat = images.reshape(len(images), -1)
        init = self.init
        if isinstance(init, str) and init == "random":
            idx = np.random.RandomState(seed).choice(len(images), k, replace=False)
            return images[idx].copy()
        if isinstance(init, str) and init == "k-means++":
            centres, _ = kmeans_plusplus(flat, k, random_state=seed)
        elif isinstance(init, str) and init == "k-means":
            centres = KMeans(k, n_init=1, random_state=seed).fit(flat).cluster_centers_
        else:
            given = np.asarray(init)
            scale = 1.0 / 255.0 if given.dtype == np.uint8 else 1.0
            given = given.astype(np.float32) * scale
            if given.shape[0] != k or given.size != k * layout.n_features:
                raise ValueError(
                    f"init array must hold {k} prototypes of shape {layout.image_shape} "
                    f"(or {layout.n_features} values each), got shape {given.shape}."
                )
            if not np.isfinite(given).all():
                raise ValueError("init array contains NaN or infinity.")
            user = given.reshape(k, *layout.image_shape)
            return self._intensity_scale.to_model(_user_to_nchw(user, layout))
        return centres.reshape(k, *images.shape[1:]).astype(np.float32)

    def _fit_single(
        self, data: torch.Tensor, images: np.ndarray, transformations: list[Transformation],
        starts: list[int], seed: int, init_index: int,
    ) -> _Run:
        """Train one network from one initialisation (after a race between starts)."""
        race_end = self._race_end(transformations, starts, len(data))
        n_candidates = 1 if race_end is None else self.n_candidates
        progress = tqdm(
            total=self._epochs + (n_candidates - 1) * (race_end or 0),
            disable=not self.verbose, leave=False,
            desc=f"{type(self).__name__} init {init_index + 1}/{self.n_init}",
        )
        if n_candidates == 1:
            best, loss_curve = self._start_training(data, images, transformations, seed), []
        else:
            best, loss_curve = self._race(
                data, images, transformations, starts, seed, race_end, progress
            )
        loss_curve += self._train_epochs(
            *best, data, starts, len(loss_curve), progress,
            self._trial_epoch(transformations, starts),
        )
        progress.close()
        network = best.network
        network.eval()
        costs = self._compute_costs(data, network)
        return _Run(network, costs, self._final_loss(costs), loss_curve, self._epochs)

    def _race(
        self, data: torch.Tensor, images: np.ndarray, transformations: list[Transformation],
        starts: list[int], seed: int, race_end: int, progress: tqdm,
    ) -> tuple[_Start, list[float]]:
        """Train ``n_candidates`` starts up to ``race_end``; return the best and its losses.

        Runs from different starts part early: on MNIST-test the training
        losses of five runs fell in two groups one or two epochs after the
        affine transformation came on, and kept that order to the end (final
        losses about 0.011 against 0.013 per value, the lower group the more
        accurate).  So the starts (the first from ``seed``, the others from
        seeds drawn from it) are trained until ``race_end`` (``race_epochs``
        epochs and ``race_steps`` steps at least after the first
        shape-changing transformation starts, see :meth:`_race_end`), and
        scored by their objective on the training set; only the best goes on.
        """
        seeds = [seed, *np.random.RandomState(seed).randint(
            np.iinfo(np.int32).max, size=self.n_candidates - 1
        )]
        best, best_losses, best_objective = None, [], math.inf
        for candidate_seed in seeds:
            candidate = self._start_training(data, images, transformations, int(candidate_seed))
            losses = self._train_epochs(
                *candidate, data, starts, 0, progress, last=race_end
            )
            objective = self._training_objective(data, candidate.network)
            if best is None or objective < best_objective:
                best, best_losses, best_objective = candidate, losses, objective
        assert best is not None
        return best, best_losses

    def _start_training(
        self, data: torch.Tensor, images: np.ndarray, transformations: list[Transformation],
        seed: int,
    ) -> _Start:
        """A new network in training mode, its optimizer, batch generator and counters."""
        device = data.device
        generator = torch.Generator().manual_seed(seed)
        colour_blind = has_photometric(transformations)
        centres = torch.from_numpy(self._initial_centres(images, seed, colour_blind))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = PrototypeNetwork(
                centres, copy.deepcopy(transformations), **self._network_kwargs(data, centres)
            ).to(device)
        optimizer = self._make_optimizer(network)
        state = _TrainState(counts=torch.zeros(self._n_clusters, device=device))
        network.train()
        return _Start(network, optimizer, generator, state)

    def _training_objective(self, data: torch.Tensor, network: PrototypeNetwork) -> float:
        """Objective of a network in training on the whole training set; it stays in training."""
        objective = self._final_loss(self._compute_costs(data, network))
        network.train()
        return objective

    def _race_end(
        self, transformations: list[Transformation], starts: list[int], n_samples: int,
    ) -> int | None:
        """The epoch at which the race between starts ends, or None for no race.

        ``race_epochs`` epochs and ``race_steps`` steps at least after the
        first shape-changing transformation starts, if that is before the
        learning-rate decay and the trial epoch.
        """
        shaping = [start for start, t in zip(starts, transformations) if _changes_shapes(t)]
        if self.n_candidates < 2 or not shaping:
            return None
        steps_per_epoch = math.ceil(n_samples / min(self.batch_size, n_samples))
        end = min(shaping) + max(self.race_epochs, math.ceil(self.race_steps / steps_per_epoch))
        trial = self._trial_epoch(transformations, starts)
        limit = decay_start(self._epochs) if trial is None else trial + 1
        return end if end < limit else None

    def _train_epochs(
        self, network: PrototypeNetwork, optimizer: torch.optim.Optimizer,
        generator: torch.Generator, state: _TrainState, data: torch.Tensor,
        starts: list[int], first: int, progress: tqdm, trial_epoch: int | None = None,
        last: int | None = None,
    ) -> list[float]:
        """Train epochs ``first`` to ``last`` (exclusive, default the end); return their losses.

        After an epoch, at most once every ``split_merge_every`` steps and
        not during the learning-rate decay, the split-and-merge check runs.
        At ``trial_epoch`` it runs in any case and, if it makes no move, the
        rest of the schedule is tried with and without one (:meth:`_try_move`).
        """
        losses: list[float] = []
        for epoch in range(first, self._epochs if last is None else last):
            losses.append(
                self._train_epoch(network, optimizer, data, starts, epoch, generator, state)
            )
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.5f}")
            due = state.iteration - state.last_check >= self.split_merge_every
            if (due or epoch == trial_epoch) and epoch + 1 < decay_start(self._epochs):
                moved = self._split_and_merge(
                    network, optimizer, data, active_at(starts, epoch), generator
                )
                state.last_check = state.iteration
                if epoch == trial_epoch and not moved:
                    return losses + self._try_move(
                        network, optimizer, data, starts, epoch, generator, state, progress
                    )
        return losses

    def _train_epoch(
        self, network: PrototypeNetwork, optimizer: torch.optim.Optimizer, data: torch.Tensor,
        starts: list[int], epoch: int, generator: torch.Generator, state: _TrainState,
    ) -> float:
        """Train one epoch, with its empty-cluster checks; return its mean loss."""
        active = active_at(starts, epoch)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(self.learning_rate, epoch, self._epochs)
        n_samples, device = data.shape[0], data.device
        order = torch.randperm(n_samples, generator=generator).to(device)
        total = torch.zeros((), device=device)
        counts = state.counts
        for batch in _batches(order, min(self.batch_size, n_samples)):
            loss, assigned = self._train_step(network, optimizer, data[batch], active)
            total += loss * len(batch)
            # index_add_ instead of bincount: on CUDA bincount reads the
            # largest label back to the host, a synchronisation per step.
            counts.index_add_(0, assigned, torch.ones_like(assigned, dtype=counts.dtype))
            state.iteration += 1
            if state.iteration % self.reassign_every == 0:
                self._reassign_empty(network, optimizer, counts, generator)
                counts.zero_()
        epoch_loss = float(total) / n_samples
        if not (math.isfinite(epoch_loss) and _all_finite(network.parameters())):
            raise FloatingPointError(
                f"Training diverged at epoch {epoch} (loss {epoch_loss}, or a network "
                "weight not finite); try a lower learning_rate."
            )
        return epoch_loss

    def _trial_epoch(
        self, transformations: list[Transformation], starts: list[int],
    ) -> int | None:
        """The epoch after which a move may be tried (see :meth:`_try_move`), or None.

        Two epochs after the last transformation is switched on, if that is
        before the learning-rate decay.  None without a transformation that
        changes shapes (identity and colour ones leave the check's estimate
        exact or nearly so).
        """
        shaping = any(_changes_shapes(t) for t in transformations)
        if not shaping or not self.try_moves or self.split_merge_samples < 2:
            return None
        epoch = max(starts) + 2
        return epoch if epoch + 1 < decay_start(self._epochs) else None

    def _try_move(
        self, network: PrototypeNetwork, optimizer: torch.optim.Optimizer, data: torch.Tensor,
        starts: list[int], epoch: int, generator: torch.Generator, state: _TrainState,
        progress: tqdm,
    ) -> list[float]:
        """Train the rest of the schedule with and without one split-and-merge move.

        :meth:`_split_and_merge` estimates a move's gain to first order,
        with the transformations as they are.  Once strong warps are on they
        bend one prototype over two kinds of images, and the gain of
        separating them appears only after retraining, and late: on
        MNIST-test, a correct move still lost on the objective after 2,400
        steps, and won at the end of the schedule.  So the run is copied and
        trained to the end twice, on the same batches at first: without a
        move, and from the copy with the largest cluster split into the slot
        of the one cheapest to remove.  Each branch makes its own
        split-and-merge checks.  The branch with the lower objective on the
        training set is kept.  Returns its epoch losses.
        """
        start = _Snapshot.take(network, optimizer, generator, state)
        branches = []
        for move in (False, True):
            if move:
                start.restore(network, optimizer, generator, state)
                moved = self._split_and_merge(
                    network, optimizer, data, active_at(starts, epoch), generator, force=True
                )
                if not moved:
                    break
                generator.set_state(start.generator)  # the same batches as without
                progress.total += self._epochs - epoch - 1
            losses = self._train_epochs(
                network, optimizer, generator, state, data, starts, epoch + 1, progress
            )
            objective = self._training_objective(data, network)
            branches.append(
                (objective, losses, _Snapshot.take(network, optimizer, generator, state))
            )
        _, losses, kept = min(branches, key=lambda branch: branch[0])
        kept.restore(network, optimizer, generator, state)
        return losses

    def _train_step(
        self, network: PrototypeNetwork, optimizer: torch.optim.Optimizer,
        x: torch.Tensor, active: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One gradient step on a batch: the detached loss and each sample's cluster.

        Nothing in it reads a value back to the host, so on a GPU the steps
        of an epoch are queued without waiting for one another.
        """
        loss, assigned = self._batch_loss(network, x, active)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), assigned

    def _make_optimizer(self, network: PrototypeNetwork) -> torch.optim.Optimizer:
        """Adam; weight decay on the predictor only, never on the prototypes."""
        predictor = list(network.encoder.parameters()) + list(network.heads.parameters())
        ids = {id(p) for p in predictor}
        others = [p for p in network.parameters() if id(p) not in ids]
        # The fused kernel updates all tensors in one pass: measured 0.7 ms
        # against 6.7-8.0 ms per step for the per-tensor loop on the CPU
        # (771,000 parameters of the default MNIST network, two threads).
        fused = network.prototypes.device.type in _FUSED_ADAM_DEVICES
        return torch.optim.Adam(
            [
                {"params": predictor, "weight_decay": self.weight_decay},
                {"params": others, "weight_decay": 0.0},
            ],
            lr=self.learning_rate,
            fused=fused or None,
        )

    @torch.no_grad()
    def _reassign_empty(
        self, network: PrototypeNetwork, optimizer: torch.optim.Optimizer,
        counts: torch.Tensor, generator: torch.Generator,
    ) -> None:
        """Restart clusters that received too few samples from the largest one."""
        k = network.n_prototypes
        share = (counts / counts.sum().clamp_min(1)).cpu()
        small = torch.nonzero(share < self.empty_cluster_share / k).flatten()
        if len(small) == 0 or len(small) == k:
            return
        largest = int(share.argmax())
        small = small.to(counts.device)
        _copy_clusters(network, optimizer, small, largest)
        noise = torch.randn(
            (len(small), *network.prototypes.shape[1:]), generator=generator
        ).to(counts.device)
        network.prototypes[small] += 1e-3 * noise
        self._after_reassignment(network, small, largest)

    @torch.no_grad()
    def _split_and_merge(
        self, network: PrototypeNetwork, optimizer: torch.optim.Optimizer,
        data: torch.Tensor, active: list[int], generator: torch.Generator,
        force: bool = False,
    ) -> bool:
        """Restart the most redundant cluster as one half of the most mixed one.

        On a random sample of ``split_merge_samples`` training images, the
        gain of splitting every cluster in two (a two-means of its members'
        residuals) is compared with the cost of removing every cluster (its
        members' rise to their second-best cluster).  When the best split
        gains more than the cheapest removal costs, that cluster is removed
        and the split one is copied into its slot (parameters and optimizer
        state), each copy's prototype shifted by the mean residual of its
        half.  With ``force`` (see :meth:`_try_move`) the largest cluster is
        split, on unscaled residuals, and the move is made whatever the
        comparison.  Returns whether a move was made.
        """
        k, n = network.n_prototypes, data.shape[0]
        if k < 2 or self.split_merge_samples < 2:
            return False
        values = data[0].numel()
        n_sample = min(self.split_merge_samples, max(_SPLIT_MERGE_VALUES // values, 256))
        sample = torch.randperm(n, generator=generator)[:n_sample]
        network.eval()
        costs, raw, spreads = [], [], []
        for x, n_valid in _inference_chunks(data[sample.to(data.device)], network):
            means, deviations = network(x, active)
            chunk_costs = self._costs(network, x, means, deviations)[:n_valid]
            rows = torch.arange(n_valid, device=x.device)
            best = chunk_costs.argmin(1)
            costs.append(chunk_costs)
            raw.append((x[:n_valid] - means[rows, best]).flatten(1))
            if deviations is not None:
                spreads.append(deviations[rows, best].flatten(1))
        network.train()
        costs, raw = torch.cat(costs), torch.cat(raw)
        labels = costs.argmin(1)
        removal = removal_costs(costs)
        # A tried move is judged by retraining, so it may split the largest
        # cluster, as the paper's restart of empty clusters copies it: once
        # warps bend one prototype over two kinds of images, the residuals
        # no longer single that cluster out (traces in docs/benchmarks.md).
        if force:
            residuals = raw
        else:
            residuals = self._split_residuals(raw, torch.cat(spreads) if spreads else None)
        gains, sides = two_means_splits(residuals.double(), labels, k)
        if force:
            split = int(torch.bincount(labels, minlength=k).argmax())
        else:
            split = int(gains.argmax())
        removal[split] = math.inf
        removed = int(removal.argmin())
        if not gains[split] > (0.0 if force else removal[removed]):
            return False
        halves = []
        for side in (0, 1):
            chosen = (labels == split) & (sides == side)
            halves.append(raw[chosen].mean(0).view(network.prototypes.shape[1:]))
        target = torch.tensor([removed], device=network.prototypes.device)
        _copy_clusters(network, optimizer, target, split)
        network.prototypes[split] += halves[0].to(network.prototypes.dtype)
        network.prototypes[removed] += halves[1].to(network.prototypes.dtype)
        self._after_reassignment(network, target, split)
        return True

    # ------------------------------------------------------------- inference
    @torch.no_grad()
    def _compute_costs(
        self, data: torch.Tensor, network: PrototypeNetwork | None = None,
    ) -> np.ndarray:
        """(n, K) float64 costs of every sample against every aligned prototype."""
        tune_malloc()
        network = self.network_ if network is None else network
        network.eval()
        costs = torch.empty((data.shape[0], network.prototypes.shape[0]), dtype=torch.float64)
        return _fill_in_chunks(
            costs, data, network, lambda x: self._costs(network, x, *network(x)),
        ).numpy()

    def _validated_tensor(self, X) -> torch.Tensor:
        check_is_fitted(self)
        images = validate_images(self, X, image_shape=self.image_shape, reset=False)
        return torch.from_numpy(self._intensity_scale.to_model(images)).to(self.device_)

    def _costs_of(self, X) -> np.ndarray:
        """(n, K) costs of ``X`` against every aligned prototype, in the caller's units."""
        costs = self._compute_costs(self._validated_tensor(X))
        return self._cost_to_user_units(costs, self.n_features_in_)

    def predict(self, X):
        """Assign each sample to the cluster whose aligned prototype fits best.

        Parameters
        ----------
        X : array-like of images, in the layout used for fit
            New samples.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Index of the cluster each sample belongs to.
        """
        return self._costs_of(X).argmin(axis=1)

    def fit_predict(self, X, y=None):
        """Fit, then return the cluster of every training sample.

        Parameters
        ----------
        X : array-like of images
            Training images.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Same as ``labels_`` after fit.
        """
        return self.fit(X).labels_

    def get_aligned_prototypes(self, X):
        """Every prototype transformed to fit every sample.

        Parameters
        ----------
        X : array-like of images, in the layout used for fit
            Samples to align the prototypes to.

        Returns
        -------
        aligned : ndarray of shape (n_samples, n_clusters, *image_shape)
            In the input's layout: ``(n, K, H, W)``, ``(n, K, H, W, C)``, or
            ``(n, K, d)`` for flattened 2-D input.
        """
        data = self._validated_tensor(X)
        network = self.network_
        network.eval()
        aligned = torch.empty(
            (data.shape[0], *network.prototypes.shape), dtype=torch.float64,
        )
        with torch.no_grad():
            _fill_in_chunks(aligned, data, network, lambda x: network(x)[0])
        aligned = self._intensity_scale.to_user(self._layout.to_user(aligned.numpy()))
        if self._layout.flat:
            aligned = aligned.reshape(aligned.shape[0], aligned.shape[1], -1)
        return aligned

    def _prototype_images(self) -> np.ndarray:
        """The fitted prototypes as (K, *image_shape) float64."""
        raw = self.network_.prototypes.detach().cpu().double().numpy()
        return self._intensity_scale.to_user(self._layout.to_user(raw))

    # ------------------------------------------------------------ estimator
    @property
    def _n_features_out(self) -> int:
        """Columns of :meth:`transform`, one per cluster (fitted estimators only).

        Used by :meth:`get_feature_names_out` (``dtikmeans0``, ``dtikmeans1``,
        ...) and by ``set_output``.
        """
        return len(self.prototypes_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


def _auto_epochs(
    max_iter: int | str, n_samples: int, batch_size: int, steps: int = AUTO_STEPS,
) -> int:
    """Resolve ``max_iter``: ``"auto"`` aims for ``steps`` gradient steps.

    With DTIKMeans's 9,000 steps that is 58 epochs of the 10,000 MNIST-test
    images at batch size 64, and the 200-epoch ceiling for the 1,797 images
    of scikit-learn's ``load_digits``; never fewer than 20 epochs nor more
    than 200.
    """
    if max_iter != "auto":
        return int(max_iter)
    low, high = AUTO_EPOCHS
    return min(high, max(low, _epochs_for_steps(steps, n_samples, batch_size)))


def _epochs_for_steps(steps: int, n_samples: int, batch_size: int) -> int:
    """Whole epochs that hold at least ``steps`` gradient steps (one batch may be short)."""
    return math.ceil(steps / math.ceil(n_samples / batch_size))


def _inference_batch(network: PrototypeNetwork) -> int:
    """Samples per inference batch for ``network``: fixed by its shape and device alone.

    128, or on the CPU the largest power of two whose aligned prototypes
    hold at most ``_INFERENCE_VALUES`` values (32 for K = 10 prototypes of
    64 x 64 RGB images; 128 up to 64 x 64 grey).
    """
    prototypes = network.prototypes
    if prototypes.device.type != "cpu":
        return _INFERENCE_BATCH
    fits = _INFERENCE_VALUES // prototypes.numel()
    return min(_INFERENCE_BATCH, 1 << max(fits.bit_length() - 1, 0))


def _inference_chunks(data: torch.Tensor, network: PrototypeNetwork):
    """Yield ``(chunk, n_valid)``: chunks for ``network``, the last one zero-padded.

    Every inference call sees exactly :func:`_inference_batch` samples
    (fixed per model), so a sample's outputs do not depend on how
    many others it is predicted with (float32 convolutions and matrix
    products round differently for other batch sizes), as scikit-learn's
    invariance checks require.
    """
    size = _inference_batch(network)
    for start in range(0, data.shape[0], size):
        chunk = data[start:start + size]
        n_valid = chunk.shape[0]
        if n_valid < size:
            chunk = torch.cat([chunk, chunk.new_zeros((size - n_valid, *chunk.shape[1:]))])
        yield chunk, n_valid


def _fill_in_chunks(
    out: torch.Tensor, data: torch.Tensor, network: PrototypeNetwork, compute,
) -> torch.Tensor:
    """Write ``compute(chunk)`` for every chunk of ``data`` into the rows of ``out``.

    Chunks are those of :func:`_inference_chunks` for ``network``.

    ``out`` is allocated once by the caller: a small result tensor kept per
    chunk would land in the heap between that chunk's large temporaries and
    keep their space from being reused (resident memory grew by about 20 MB
    per chunk on 64 x 64 images, docs/benchmarks.md).
    """
    start = 0
    for x, n_valid in _inference_chunks(data, network):
        out[start:start + n_valid].copy_(compute(x)[:n_valid])
        start += n_valid
    return out


def _changes_shapes(transformation: Transformation) -> bool:
    """Whether a transformation moves pixels (not the identity nor a photometric one)."""
    return not (isinstance(transformation, Identity) or transformation.photometric)


def _all_finite(tensors) -> bool:
    """Whether every value of every tensor is finite (one read-back in all)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


def _batches(order: torch.Tensor, batch_size: int):
    """Split a permutation into batches, folding a last batch of one sample."""
    n = order.shape[0]
    bounds = list(range(0, n, batch_size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        bounds.pop(-2)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        yield order[lo:hi]


def _copy_clusters(
    network: PrototypeNetwork, optimizer: torch.optim.Optimizer,
    targets: torch.Tensor, source: int,
) -> None:
    """Overwrite clusters ``targets`` with cluster ``source``: parameters and Adam state."""
    for param in network.cluster_parameters():
        param[targets] = param[source].clone()
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][targets] = state[key][source].clone()


def _user_to_nchw(images: np.ndarray, layout: ImageLayout) -> np.ndarray:
    """(K, *image_shape) user images to (K, C, H, W) float32."""
    if len(layout.image_shape) == 2:
        return np.ascontiguousarray(images[:, None], dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(images, -1, 1), dtype=np.float32)
