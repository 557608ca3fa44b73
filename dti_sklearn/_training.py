"""The training loop: one initialisation, from its starts to its final costs.

:class:`TrainingLoop` is the part of :class:`~dti_sklearn._base.BaseDTI`
that trains a network, in small steps that a subclass or a test can
override one at a time: the race between starts (``_race``), the epochs
with their curriculum, learning-rate decay and split-and-merge checks
(``_train_epochs``, ``_train_epoch``), a gradient step (``_train_step``),
empty-cluster reassignment and the tried move (``_try_move``).  The
objective comes from the estimator's hooks, declared on ``BaseDTI``
(``_batch_loss``, ``_costs``, ``_final_loss``, ``_comparison_loss``,
``_split_residuals``, ``_after_reassignment``), as do the initial prototypes
(``_initial_centres``) and the costs on the whole training set
(``_compute_costs``).
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from dti_sklearn._inference import inference_chunks
from dti_sklearn._schedule import active_at, decay_start, learning_rate_at, warmup_rate
from dti_sklearn._split_merge import (
    by_polarity,
    prototype_units,
    removal_costs,
    split_gains,
    two_means_splits,
)
from dti_sklearn._torch.cuda_graphs import (
    GraphedSteps,
    graphable_optimizer_kwargs,
    graphs_available,
    set_learning_rate,
)
from dti_sklearn._torch.network import PrototypeNetwork
from dti_sklearn.transforms import Identity, Transformation
from dti_sklearn.transforms._base import has_photometric

#: Devices on which Adam runs as one fused kernel.
_FUSED_ADAM_DEVICES = ("cpu", "cuda")

#: Pixel values (samples x values per image) that the split-and-merge check
#: holds at most: 2,048 MNIST images, 1,365 colour images of 64 x 64.
_SPLIT_MERGE_VALUES = 2**24


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
    #: The run's training steps replayed from CUDA graphs, or None (eager steps).
    graphs: GraphedSteps | None = None


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
        update the snapshot's Adam moments in place; it gets a copy.  That
        replaces the optimizer's tensors, so recorded CUDA graphs are dropped.
        """
        network.load_state_dict(self.network)  # copies into the parameters
        optimizer.load_state_dict(copy.deepcopy(self.optimizer))
        if state.graphs is not None:
            state.graphs.clear()
        generator.set_state(self.generator)
        state.counts.copy_(self.state.counts)
        state.iteration, state.last_check = self.state.iteration, self.state.last_check


class TrainingLoop:
    """Training of one initialisation, mixed into :class:`~dti_sklearn._base.BaseDTI`.

    The class attributes below are the loop's settings; they are not
    estimator parameters (``get_params`` does not list them) and can be
    changed on an instance or a subclass.
    """

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
    #: How the two halves of every split start when no solved colour rescales
    #: the residuals (``seeding`` of
    #: :func:`~dti_sklearn._split_merge.two_means_splits`: "farthest",
    #: "principal" or "both"; with a solved colour they always start along
    #: the principal direction).  DTIGaussianMixture sets "principal" (see
    #: there); for DTIKMeans it lowered ``load_digits`` (95.9 -> 94.3, three
    #: seeds), and "both" lowered the mixture at 16 x 16 (90.4 -> 86.1 at a
    #: lower final loss on all five seeds), so they are options here
    #: (docs/benchmarks.md).
    split_seeding = "farthest"
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
    #: Epochs over which the learning rate of the encoder and heads rises
    #: linearly from zero once the first transformation with predicted
    #: parameters is switched on (see
    #: :func:`~dti_sklearn._schedule.warmup_rate`; rounded up to whole
    #: gradient steps); 0 trains them at the full rate from their first
    #: step.  Off for DTIKMeans: with one epoch every loss fell, but the
    #: accuracy did not rise (MNIST-test 97.2 at 93.6 against 93.0 NMI;
    #: ``load_digits`` lower on two machines, one merged run on one of them).
    #: DTIGaussianMixture turns it on (docs/benchmarks.md).
    warmup_epochs: float = 0

    # --------------------------------------------------------------- training
    #: Images passed through gradient steps so far in ``fit``, over every
    #: run, start and branch (the fitted ``n_images_trained_``).
    _images_trained = 0

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
        best.state.graphs = None  # frees the graphs' memory
        best.optimizer.zero_grad(set_to_none=True)
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
        if self._records_graphs(network):
            state.graphs = GraphedSteps(functools.partial(self._train_step, network, optimizer))
        network.train()
        return _Start(network, optimizer, generator, state)

    def _training_objective(self, data: torch.Tensor, network: PrototypeNetwork) -> float:
        """Comparison objective of a network in training on the whole training set.

        The estimator's ``_comparison_loss`` of its costs; the network stays
        in training mode.
        """
        objective = self._comparison_loss(self._compute_costs(data, network), network)
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
        rate = learning_rate_at(self.learning_rate, epoch, self._epochs)
        set_learning_rate(optimizer, rate)
        step = state.graphs
        if step is None:
            step = functools.partial(self._train_step, network, optimizer)
        n_samples, device = data.shape[0], data.device
        order = torch.randperm(n_samples, generator=generator).to(device)
        total = torch.zeros((), device=device)
        counts = state.counts
        batches = list(_batches(order, min(self.batch_size, n_samples)))
        warmup = functools.partial(
            warmup_rate, rate, epoch,
            start=min((starts[m] for m in network.predicted), default=None),
            steps_per_epoch=len(batches),
            warmup_steps=math.ceil(self.warmup_epochs * len(batches)),
        )
        warming = warmup(0) < rate  # then the predictor's rate is set at every step
        for index, batch in enumerate(batches):
            if warming:
                set_learning_rate(optimizer, warmup(index), _PREDICTOR_GROUP)
            loss, assigned = step(data[batch], active)
            total += loss * len(batch)
            # index_add_ instead of bincount: on CUDA bincount reads the
            # largest label back to the host, a synchronisation per step.
            counts.index_add_(0, assigned, torch.ones_like(assigned, dtype=counts.dtype))
            state.iteration += 1
            self._images_trained += len(batch)
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
        training set (the estimator's ``_comparison_loss``) is kept.  A
        branch that diverges is dropped with a warning and the other one
        kept; only when both diverge does the error reach the caller.
        Returns the kept branch's epoch losses.
        """
        start = _Snapshot.take(network, optimizer, generator, state)
        branches = []
        diverged: FloatingPointError | None = None
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
            try:
                losses = self._train_epochs(
                    network, optimizer, generator, state, data, starts, epoch + 1, progress
                )
            except FloatingPointError as error:
                diverged = error
                which = "with" if move else "without"
                warnings.warn(
                    f"Of the tried move's two branches, the one {which} the move diverged "
                    f"({error}); it is dropped.", RuntimeWarning, stacklevel=2,
                )
                continue
            objective = self._training_objective(data, network)
            branches.append(
                (objective, losses, _Snapshot.take(network, optimizer, generator, state))
            )
        if not branches:
            raise diverged  # the only branch, or both, diverged
        _, losses, kept = min(branches, key=lambda branch: branch[0])
        kept.restore(network, optimizer, generator, state)
        return losses

    def _train_step(
        self, network: PrototypeNetwork, optimizer: torch.optim.Optimizer,
        x: torch.Tensor, active: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One gradient step on a batch: the detached loss and each sample's cluster.

        Nothing in it reads a value back to the host, so on a GPU the steps
        of an epoch are queued without waiting for one another, and the step
        can be recorded as a CUDA graph (the estimators' ``cuda_graphs``).
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
        device = network.prototypes.device
        if self._records_graphs(network):
            options = graphable_optimizer_kwargs(self.learning_rate, device)
        else:
            options = {"lr": self.learning_rate,
                       "fused": (device.type in _FUSED_ADAM_DEVICES) or None}
        groups = [
            {"params": predictor, "weight_decay": self.weight_decay},
            {"params": others, "weight_decay": 0.0},
        ]
        if isinstance(options["lr"], torch.Tensor):
            # Each group its own rate tensor: the predictor's warms up alone.
            for group in groups:
                group["lr"] = options["lr"].clone()
        return torch.optim.Adam(groups, **options)

    def _records_graphs(self, network: PrototypeNetwork) -> bool:
        """Whether the network's training steps are replayed from CUDA graphs.

        The estimators' ``cuda_graphs`` parameter, on a CUDA device; False
        for a model unpickled from a version without that parameter.
        """
        wanted = bool(getattr(self, "cuda_graphs", False))
        return wanted and graphs_available(network.prototypes.device)

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
        half.  With a solved colour the halves and the shifts are computed
        on residuals in the prototypes' units
        (:func:`~dti_sklearn._split_merge.prototype_units`), the gain in the
        cost's with each channel turned by the sign of its scale
        (:func:`~dti_sklearn._split_merge.by_polarity`).  With ``force``
        (see :meth:`_try_move`) the largest cluster is split, on unscaled
        residuals, and the move is made whatever the comparison.  Returns
        whether a move was made.
        """
        k, n = network.n_prototypes, data.shape[0]
        if k < 2 or self.split_merge_samples < 2:
            return False
        values = data[0].numel()
        n_sample = min(self.split_merge_samples, max(_SPLIT_MERGE_VALUES // values, 256))
        sample = torch.randperm(n, generator=generator)[:n_sample]
        network.eval()
        costs, raw, spreads, units, all_scales = [], [], [], [], []
        for x, n_valid in inference_chunks(data[sample.to(data.device)], network):
            params = network.predict_parameters(x, active)
            means, deviations = network.align(params, x.shape[0], active, images=x)
            chunk_costs = self._costs(network, x, means, deviations)[:n_valid]
            rows = torch.arange(n_valid, device=x.device)
            best = chunk_costs.argmin(1)
            costs.append(chunk_costs)
            residual = x[:n_valid] - means[rows, best]
            scales = network.value_scales(
                [p[:n_valid] for p in params], x[:n_valid], active, best
            )
            raw.append(residual.flatten(1))
            if scales is not None:  # the same active transformations in every chunk
                all_scales.append(scales)
                units.append(prototype_units(residual, scales))
            if deviations is not None:
                spreads.append(deviations[rows, best].flatten(1))
        network.train()
        costs, raw = torch.cat(costs), torch.cat(raw)
        rescaled = bool(all_scales)
        units = torch.cat(units) if rescaled else raw  # without scales, the residuals themselves
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
        if rescaled:
            # With a solved colour, the halves are found in the prototypes'
            # units (by shape, not by each sample's colours), and their gain
            # is measured in the cost's, each channel turned by the sign of
            # its scale so that samples of either polarity add up.
            _, sides = two_means_splits(units.double(), labels, k, seeding="principal")
            signed = by_polarity(residuals, torch.cat(all_scales))
            gains = split_gains(signed.double(), labels, sides, k)
        else:
            gains, sides = two_means_splits(
                residuals.double(), labels, k, seeding=self.split_seeding,
            )
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
            halves.append(units[chosen].mean(0).view(network.prototypes.shape[1:]))
        target = torch.tensor([removed], device=network.prototypes.device)
        _copy_clusters(network, optimizer, target, split)
        network.prototypes[split] += halves[0].to(network.prototypes.dtype)
        network.prototypes[removed] += halves[1].to(network.prototypes.dtype)
        self._after_reassignment(network, target, split)
        return True


#: Index of the encoder's and heads' group in the optimizer (``_make_optimizer``).
_PREDICTOR_GROUP = 0


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
