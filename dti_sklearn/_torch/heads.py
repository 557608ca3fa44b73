"""Per-prototype, per-transformation MLP heads, evaluated as one batch."""

from __future__ import annotations

import math

import torch
from torch import nn


class PrototypeHeads(nn.Module):
    """K x M small MLPs mapping features to transformation parameters.

    Head ``(k, m)`` predicts the parameters of transformation ``m`` for
    prototype ``k``: ``Linear(F, hidden) -> ReLU -> Linear(hidden, P_m)``.
    All heads of one layer are stored in one tensor with the prototype index
    first, so a forward pass is a few batched matrix products (no Python loop
    over prototypes) and a cluster's heads are copied by indexing that first
    dimension.  The last layer starts at zero: every head outputs zero, the
    identity, at initialisation.

    Parameters
    ----------
    n_prototypes : int
        K.
    n_features : int
        F, the size of the encoder's features.
    n_parameters : list of int
        ``P_m`` for every transformation of the sequence.
    hidden : int, default=128
        Hidden units of every head.
    """

    def __init__(
        self, n_prototypes: int, n_features: int, n_parameters: list[int], hidden: int = 128,
    ) -> None:
        super().__init__()
        self.n_parameters = list(n_parameters)
        n_heads = len(n_parameters)
        bound = 1.0 / math.sqrt(n_features)
        self.hidden_weight = nn.Parameter(
            torch.empty(n_prototypes, n_heads, n_features, hidden).uniform_(-bound, bound)
        )
        self.hidden_bias = nn.Parameter(
            torch.empty(n_prototypes, n_heads, hidden).uniform_(-bound, bound)
        )
        self.out_weight = nn.ParameterList(
            [nn.Parameter(torch.zeros(n_prototypes, hidden, p)) for p in n_parameters]
        )
        self.out_bias = nn.ParameterList(
            [nn.Parameter(torch.zeros(n_prototypes, p)) for p in n_parameters]
        )

    def _active_hidden(self, active: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden-layer weights and biases of the active heads.

        Selected by slicing (or stacking slices), never through an index
        tensor: building one from the list on a CUDA device is a host copy
        that waits for the device, once per step.
        """
        first, last = active[0], active[-1]
        if active == list(range(first, last + 1)):
            return (self.hidden_weight[:, first:last + 1],
                    self.hidden_bias[:, first:last + 1])
        return (torch.stack([self.hidden_weight[:, m] for m in active], dim=1),
                torch.stack([self.hidden_bias[:, m] for m in active], dim=1))

    def forward(self, features: torch.Tensor, active: list[int]) -> list[torch.Tensor]:
        """Predict parameters for the active transformations.

        Parameters
        ----------
        features : torch.Tensor of shape (B, F)
        active : list of int
            Indices of the transformations switched on.

        Returns
        -------
        list of torch.Tensor of shape (B, K, P_m)
            One entry per active transformation, in order.
        """
        if not active:
            return []
        weight, bias = self._active_hidden(active)  # (K, A, F, H), (K, A, H)
        k, a, f, h = weight.shape
        flat = weight.permute(2, 0, 1, 3).reshape(f, k * a * h)
        bias = bias.reshape(k * a * h)
        hidden = torch.relu(torch.addmm(bias, features, flat)).view(-1, k, a, h)
        outputs = []
        for slot, m in enumerate(active):
            per_head = hidden[:, :, slot].transpose(0, 1)  # (K, B, H)
            out = torch.baddbmm(
                self.out_bias[m][:, None, :], per_head, self.out_weight[m]
            )  # (K, B, P)
            outputs.append(out.transpose(0, 1))
        return outputs
