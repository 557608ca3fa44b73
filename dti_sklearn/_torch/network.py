"""Prototypes, encoder, heads and the transformation sequence in one module."""

from __future__ import annotations

import torch
from torch import nn

from dti_sklearn._torch.encoder import Encoder
from dti_sklearn._torch.heads import PrototypeHeads
from dti_sklearn.transforms import Transformation


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
        Whether to hold free mixing logits (Gaussian mixture only).
    encoder_width : int, default=16
        Stem width of the :class:`~dti_sklearn._torch.encoder.Encoder`.
    n_features : int, default=128
        Encoder output size.
    hidden : int, default=128
        Hidden units of every head.
    """

    def __init__(
        self,
        prototypes: torch.Tensor,
        transformations: list[Transformation],
        *,
        log_deviations: torch.Tensor | None = None,
        mixing_logits: bool = False,
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
            nn.Parameter(torch.zeros(n_prototypes)) if mixing_logits else None
        )
        self.encoder = Encoder(n_channels, (height, width), encoder_width, n_features)
        n_parameters = [t.n_parameters(n_channels) for t in self.transformations]
        self.heads = PrototypeHeads(n_prototypes, n_features, n_parameters, hidden)
        for m, t in enumerate(self.transformations):
            self.register_buffer(f"identity_{m}", t.identity_parameters(n_channels).float())
        self._parametric = [m for m, p in enumerate(n_parameters) if p > 0]

    @property
    def n_prototypes(self) -> int:
        """Number of prototypes K."""
        return self.prototypes.shape[0]

    def cluster_parameters(self) -> list[nn.Parameter]:
        """Every parameter whose first dimension indexes the K clusters."""
        params = [self.prototypes, self.heads.hidden_weight, self.heads.hidden_bias]
        params += list(self.heads.out_weight) + list(self.heads.out_bias)
        params += [p for p in (self.log_deviations, self.mixing_logits) if p is not None]
        return params

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
        means : torch.Tensor of shape (B, K, C, H, W)
            Aligned prototypes (a broadcast view when nothing is active).
        deviations : torch.Tensor of shape (B, K, C, H, W) or None
            Aligned standard deviations, when the network holds them.
        """
        batch = images.shape[0]
        k, c, height, width = self.prototypes.shape
        if active is None:
            active = list(range(len(self.transformations)))
        active = [m for m in active if m in self._parametric]
        means = self.prototypes.unsqueeze(0).expand(batch, k, c, height, width)
        stds = None if self.log_deviations is None else self.log_deviations.exp()
        if not active:
            if stds is not None:
                stds = stds.unsqueeze(0).expand(batch, k, c, height, width)
            return means, stds

        params = self.heads(self.encoder(images), active)
        means = means.reshape(batch * k, c, height, width)
        if stds is not None:
            stds = stds.unsqueeze(0).expand(batch, k, c, height, width)
            stds = stds.reshape(batch * k, c, height, width)
        for m, beta in zip(active, params):
            transformation = self.transformations[m]
            beta = beta.reshape(batch * k, -1) + getattr(self, f"identity_{m}")
            if transformation.spatial and stds is not None:
                both = transformation.apply(torch.cat([means, stds], dim=1), beta)
                means, stds = both[:, :c], both[:, c:]
            else:
                means = transformation.apply(means, beta)
        means = means.view(batch, k, c, height, width)
        if stds is not None:
            stds = stds.view(batch, k, c, height, width)
        return means, stds
