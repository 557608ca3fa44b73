"""Prototypes, encoder, heads and the transformation sequence in one module."""

from __future__ import annotations

import torch
from torch import nn

from dti_sklearn._torch.encoder import Encoder
from dti_sklearn._torch.heads import PrototypeHeads
from dti_sklearn._torch.standardize import standardize_channels
from dti_sklearn.transforms import Transformation
from dti_sklearn.transforms._base import has_photometric
from dti_sklearn.transforms.spatial import _Warp, apply_warps, apply_warps_to_each, composable


class PrototypeNetwork(nn.Module):
    """Predict, for every sample, every prototype transformed to fit it.

    One forward pass handles all ``B x K`` (sample, prototype) pairs: the
    encoder runs once on the ``B`` samples, the heads predict all ``K``
    parameter sets of every active transformation at once, and every
    transformation is applied to the ``B * K`` prototype copies in one
    batched call.

    Parameters
    ----------
    prototypes : torch.Tensor of shape (K, C, H, W)
        Initial prototypes (cluster means).
    transformations : list of Transformation
        The sequence applied to a prototype, in order.
    log_deviations : torch.Tensor of shape (K, C, H, W), optional
        Initial log standard deviations (Gaussian mixture only).  Spatial
        transformations warp them with the same parameters as the means.
    mixing_logits : bool, default=False
        Whether to hold mixing logits (Gaussian mixture only), zero at
        first: equal mixing weights.
    learn_mixing_logits : bool, default=True
        Whether training updates the mixing logits; if not, they stay zero
        (``requires_grad=False``) and the weights equal.
    encoder_width : int, default=16
        Stem width of the :class:`~dti_sklearn._torch.encoder.Encoder`.
    n_features : int, default=128
        Encoder output size.
    hidden : int, default=128
        Hidden units of every head.

    Notes
    -----
    When a transformation of the sequence is ``photometric`` (colour), the
    encoder reads every image's colour-standardised copy
    (:func:`~dti_sklearn._torch.standardize.standardize_channels`), which
    gives the spatial heads the same input whatever the colours.  A colour
    solved in closed form (the default ``Color()``) needs nothing else, so
    the predicted transformations ignore the colours altogether.  For a
    predicted colour (``Color(closed_form=False)``) the encoder reads ``2C``
    channels: the image itself as well, and its per-channel mean, minimum,
    maximum and standard deviation go to the encoder's projection, giving
    the colour heads the colours to predict.
    """

    #: Whether the encoder also reads a colour-standardised copy of the
    #: images (set from the sequence; False for networks pickled before it).
    standardized_copy: bool = False
    #: Whether the encoder also reads the raw images and their channels'
    #: statistics beside the copy: only for a predicted colour transformation,
    #: whose heads need the colours (True for networks pickled before it).
    raw_colours: bool = True
    #: Lower precision (``torch.bfloat16``) for the encoder's convolutions
    #: under :func:`torch.autocast`, or None for float32 throughout.  The
    #: heads, the transformations and the loss stay in float32.
    encoder_autocast: torch.dtype | None = None

    def __init__(
        self,
        prototypes: torch.Tensor,
        transformations: list[Transformation],
        *,
        log_deviations: torch.Tensor | None = None,
        mixing_logits: bool = False,
        learn_mixing_logits: bool = True,
        encoder_width: int = 16,
        n_features: int = 128,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        n_prototypes, n_channels, height, width = prototypes.shape
        self.transformations = list(transformations)
        self.prototypes = nn.Parameter(prototypes.clone())
        self.log_deviations = (
            None if log_deviations is None else nn.Parameter(log_deviations.clone())
        )
        self.mixing_logits = (
            nn.Parameter(torch.zeros(n_prototypes), requires_grad=learn_mixing_logits)
            if mixing_logits else None
        )
        self.standardized_copy = has_photometric(self.transformations)
        self.raw_colours = self.standardized_copy and any(
            t.photometric and not t.solved for t in self.transformations
        )
        self.encoder = Encoder(
            2 * n_channels if self.raw_colours else n_channels, (height, width),
            encoder_width, n_features,
            statistics_channels=n_channels if self.raw_colours else 0,
        )
        # A solved transformation (Color(closed_form=True)) gets no head.
        n_parameters = [
            0 if t.solved else t.n_parameters(n_channels) for t in self.transformations
        ]
        self.heads = PrototypeHeads(n_prototypes, n_features, n_parameters, hidden)
        for m, t in enumerate(self.transformations):
            self.register_buffer(f"identity_{m}", t.identity_parameters(n_channels).float())
        self._parametric = [m for m, p in enumerate(n_parameters) if p > 0]

    @property
    def n_prototypes(self) -> int:
        """Number of prototypes K."""
        return self.prototypes.shape[0]

    @property
    def predicted(self) -> list[int]:
        """Indices of the transformations whose parameters the heads predict."""
        return list(self._parametric)

    def cluster_parameters(self) -> list[nn.Parameter]:
        """Every parameter whose first dimension indexes the K clusters."""
        params = [self.prototypes, self.heads.hidden_weight, self.heads.hidden_bias]
        params += list(self.heads.out_weight) + list(self.heads.out_bias)
        params += [p for p in (self.log_deviations, self.mixing_logits) if p is not None]
        return params

    @staticmethod
    def _runs(transformations: list[Transformation], betas: list[torch.Tensor]):
        """Group consecutive composable warps; yield (transformations, parameters)."""
        start = 0
        for i in range(1, len(transformations) + 1):
            if i == len(transformations) or not composable(
                transformations[i - 1], transformations[i]
            ):
                yield transformations[start:i], betas[start:i]
                start = i

    @staticmethod
    def _apply_run(
        images: torch.Tensor, run: list[Transformation], betas: list[torch.Tensor],
    ) -> torch.Tensor:
        """Apply one transformation, or consecutive warps through one grid."""
        if len(run) > 1:
            return apply_warps(images, run, betas)
        return run[0].apply(images, betas[0])

    def _active(self, active: list[int] | None) -> list[int]:
        """The switched-on transformations that have parameters."""
        if active is None:
            active = list(range(len(self.transformations)))
        return [m for m in active if m in self._parametric]

    def _solved(self, active: list[int] | None) -> list[Transformation]:
        """The switched-on transformations solved for against each sample."""
        indices = range(len(self.transformations)) if active is None else active
        return [self.transformations[m] for m in indices if self.transformations[m].solved]

    def predict_parameters(
        self, images: torch.Tensor, active: list[int] | None = None,
    ) -> list[torch.Tensor]:
        """Parameters of every active transformation for every (sample, prototype).

        Parameters
        ----------
        images : torch.Tensor of shape (B, C, H, W)
        active : list of int, optional
            Indices of the transformations switched on (all by default).

        Returns
        -------
        list of torch.Tensor of shape (B, K, P_m)
            Identity value plus the heads' output, one per active parametric
            transformation.
        """
        active = self._active(active)
        if not active:
            return []
        if self.standardized_copy:
            copy = standardize_channels(images)
            images = torch.cat([images, copy], dim=1) if self.raw_colours else copy
        params = self.heads(self._encode(images), active)
        return [beta + getattr(self, f"identity_{m}") for m, beta in zip(active, params)]

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's features, in float32 whatever ``encoder_autocast``."""
        if self.encoder_autocast is None:
            return self.encoder(images)
        # A CUDA graph must not record autocast's cache of cast weights.
        recording = images.is_cuda and torch.cuda.is_current_stream_capturing()
        with torch.autocast(images.device.type, dtype=self.encoder_autocast,
                            cache_enabled=not recording):
            features = self.encoder(images)
        return features.float()

    def align(
        self,
        params: list[torch.Tensor],
        batch: int,
        active: list[int] | None = None,
        clusters: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Transform prototypes with predicted parameters.

        Parameters
        ----------
        params : list of torch.Tensor of shape (B, K, P_m)
            From :meth:`predict_parameters` with the same ``active``.
        batch : int
            B, the number of samples.
        active : list of int, optional
            Indices of the transformations switched on (all by default).
        clusters : torch.Tensor of shape (B, R), optional
            Align only prototypes ``clusters[b]`` to sample ``b`` (K = R in
            the output).  DTI K-means back-propagates through the nearest
            prototype only, so its training step aligns all ``B x K`` pairs
            without gradient and then only these ``B`` with gradient.
        images : torch.Tensor of shape (B, C, H, W), optional
            The samples, needed when a transformation solved for against
            each of them (``Color(closed_form=True)``) is active: it is
            applied to the means last, after every predicted one.

        Returns
        -------
        means : torch.Tensor of shape (B, K, C, H, W)
            Aligned prototypes (a broadcast view when nothing is active).
        deviations : torch.Tensor of shape (B, K, C, H, W) or None
            Aligned standard deviations, when the network holds them.
        """
        solved = self._solved(active)
        if solved and images is None:
            raise ValueError(
                f"align needs the images to solve {type(solved[0]).__name__} against them."
            )
        active = self._active(active)
        k, c, height, width = self.prototypes.shape
        means = self.prototypes
        stds = None if self.log_deviations is None else self.log_deviations.exp()
        if clusters is not None:
            k = clusters.shape[1]
            # index_select, not means[clusters]: the backward of advanced
            # indexing accumulates in a thread-dependent order on the CPU,
            # which made training differ between runs with the same seed.
            flat, shape = clusters.reshape(-1), (batch, k, c, height, width)
            means = means.index_select(0, flat).view(shape)
            stds = None if stds is None else stds.index_select(0, flat).view(shape)
            index = clusters.unsqueeze(2)
            params = [p.gather(1, index.expand(batch, k, p.shape[2])) for p in params]
        else:
            means = means.unsqueeze(0)
            stds = None if stds is None else stds.unsqueeze(0)
        means = means.expand(batch, k, c, height, width)
        stds = None if stds is None else stds.expand(batch, k, c, height, width)
        means, stds = self._warp(means, stds, params, active, shared=clusters is None)
        for transformation in solved:
            means, stds = transformation.solve_with_deviations(means, stds, images)
        return means, stds

    def value_scales(
        self, params: list[torch.Tensor], images: torch.Tensor, active: list[int] | None,
        clusters: torch.Tensor,
    ) -> torch.Tensor | None:
        """How much the solved transformations scale prototype ``clusters[b]`` to sample ``b``.

        Parameters
        ----------
        params : list of torch.Tensor of shape (B, K, P_m)
            From :meth:`predict_parameters` with the same ``active``.
        images : torch.Tensor of shape (B, C, H, W)
            The samples.
        active : list of int or None
            Indices of the transformations switched on (all by default).
        clusters : torch.Tensor of shape (B,)
            One prototype per sample.

        Returns
        -------
        torch.Tensor of shape (B, C), or None
            The product of the per-channel scales of the active solved
            transformations (:meth:`Transformation.value_scale`); None when
            none is active or one of them does not rescale values.
        """
        solved = self._solved(active)
        if not solved:
            return None
        aligned, _ = self.align(params, images.shape[0], self._active(active),
                                clusters=clusters.unsqueeze(1))
        total = None
        for position, transformation in enumerate(solved):
            gain = transformation.value_scale(aligned, images)
            if gain is None:
                return None
            total = gain if total is None else total * gain
            if position + 1 < len(solved):  # the next one scales what this one solved
                aligned = transformation.solve(aligned, images)
        return total[:, 0]

    def _warp(
        self, means: torch.Tensor, stds: torch.Tensor | None,
        params: list[torch.Tensor], active: list[int], shared: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply the active predicted transformations to (B, K, C, H, W) copies.

        ``shared`` says that the copies are the K prototypes broadcast over
        the batch: a leading run of warps then samples the prototypes
        themselves (:func:`~dti_sklearn.transforms.spatial.apply_warps_to_each`).
        """
        if not active:
            return means, stds
        batch, k, c, height, width = means.shape
        runs = list(self._runs(
            [self.transformations[m] for m in active],
            [beta.reshape(batch * k, -1) for beta in params],
        ))
        if shared and _samples_each(runs[0][0]):
            run = runs.pop(0)[0]
            both = means[0] if stds is None else torch.cat([means[0], stds[0]], dim=1)
            warped = apply_warps_to_each(
                both, run, [beta.transpose(0, 1) for beta in params[: len(run)]],
            )
            # One copy back to the (B, K) order of the pairs.
            warped = warped.transpose(0, 1).reshape(batch * k, -1, height, width)
            means = warped[:, :c]
            stds = None if stds is None else warped[:, c:]
        else:
            means = means.reshape(batch * k, c, height, width)
            stds = None if stds is None else stds.reshape(batch * k, c, height, width)
        for run, run_betas in runs:
            if run[0].spatial and stds is not None:
                both = self._apply_run(torch.cat([means, stds], dim=1), run, run_betas)
                means, stds = both[:, :c], both[:, c:]
            else:
                means = self._apply_run(means, run, run_betas)
        means = means.reshape(batch, k, c, height, width)
        stds = None if stds is None else stds.reshape(batch, k, c, height, width)
        return means, stds

    def forward(
        self, images: torch.Tensor, active: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Transform every prototype to fit every sample.

        Parameters
        ----------
        images : torch.Tensor of shape (B, C, H, W)
        active : list of int, optional
            Indices of the transformations switched on (all by default).

        Returns
        -------
        means, deviations : see :meth:`align`.
        """
        params = self.predict_parameters(images, active)
        return self.align(params, images.shape[0], active, images=images)


def _samples_each(run: list[Transformation]) -> bool:
    """Whether a run is warps that :func:`apply_warps_to_each` can apply.

    A single warp qualifies only with the shared ``apply``, so that a
    subclass overriding it keeps its own.
    """
    if not all(isinstance(t, _Warp) for t in run):
        return False
    return len(run) > 1 or type(run[0]).apply is _Warp.apply
