"""Tests of the predictor's heads: per-prototype heads and the shared pose head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from dti_sklearn import DTIGaussianMixture, DTIKMeans
from dti_sklearn._torch.heads import PrototypeHeads
from dti_sklearn._torch.network import PrototypeNetwork
from dti_sklearn.transforms import (
    Affine,
    Color,
    Morphological,
    Projective,
    ThinPlateSpline,
)

K, F, HIDDEN = 4, 16, 8


@pytest.fixture(scope="module")
def digits():
    return (load_digits().images[:120] / 16.0).astype(np.float32)


def _heads(shared=(0,)) -> PrototypeHeads:
    torch.manual_seed(0)
    return PrototypeHeads(K, F, [6, 3], HIDDEN, shared)


def test_shared_head_starts_at_zero():
    heads = _heads()
    outputs = heads(torch.randn(5, F), [0, 1])
    assert all(torch.equal(out, torch.zeros_like(out)) for out in outputs)


def test_shared_output_is_the_same_for_every_prototype():
    heads = _heads()
    with torch.no_grad():
        heads.shared_out_weight[0].normal_()
        heads.shared_out_bias[0].normal_()
    features = torch.randn(5, F)
    affine, other = heads(features, [0, 1])
    assert affine.shape == (5, K, 6)
    assert torch.allclose(affine, affine[:, :1].expand_as(affine))  # prototypes alike
    assert not torch.allclose(affine[0], affine[1])  # samples differ
    assert torch.equal(other, torch.zeros_like(other))  # no shared head there


def test_shared_head_learns_from_any_prototype_pair():
    # A loss on prototype 2's parameters only: its own head and the shared
    # head get a gradient, the other prototypes' heads none.
    heads = _heads()
    with torch.no_grad():
        heads.out_weight[0].normal_()
    affine = heads(torch.randn(5, F), [0])[0]
    affine[:, 2].pow(2).sum().backward()
    assert heads.shared_out_weight[0].grad.abs().sum() > 0
    assert heads.out_weight[0].grad[2].abs().sum() > 0
    for k in (0, 1, 3):
        assert not heads.out_weight[0].grad[k].any()


def test_prototype_heads_are_drawn_as_without_a_shared_head():
    plain, shared = _heads(()), _heads((0,))
    assert torch.equal(plain.hidden_weight, shared.hidden_weight)
    assert torch.equal(plain.hidden_bias, shared.hidden_bias)
    assert not hasattr(plain, "shared_hidden_weight")


def test_a_head_pickled_before_shared_heads_still_predicts():
    heads = _heads(())
    del heads.shared  # as unpickled from before the attribute: the class default
    assert heads.shared == ()
    assert heads(torch.randn(2, F), [0])[0].shape == (2, K, 6)


def test_only_pose_transformations_get_a_shared_head():
    prototypes = torch.rand(3, 3, 16, 16)
    sequence = [Color(), Affine(), Projective(), ThinPlateSpline(), Morphological(kernel_size=3)]
    network = PrototypeNetwork(prototypes, sequence, shared_pose=True)
    assert network.heads.shared == (1, 2)
    assert PrototypeNetwork(prototypes, sequence).heads.shared == ()


def test_shared_pose_network_is_the_identity_at_initialisation():
    torch.manual_seed(0)
    prototypes = torch.rand(3, 1, 12, 12)
    network = PrototypeNetwork(prototypes, [Affine(), ThinPlateSpline()], shared_pose=True)
    x = torch.rand(4, 1, 12, 12)
    means, _ = network(x)
    assert torch.allclose(means, prototypes[None].expand_as(means), atol=1e-6)


def test_dtikmeans_trains_a_shared_pose_head(digits):
    model = DTIKMeans(3, transforms=["aff", "mor"], max_iter=2, curriculum=[0, 1],
                      random_state=0).fit(digits)
    heads = model.network_.heads
    assert heads.shared == (0,)
    assert heads.shared_out_weight[0].abs().sum() > 0  # moved from its zeros
    assert np.isfinite(model.prototypes_).all()

    off = DTIKMeans(3, transforms=["aff", "mor"], max_iter=2, curriculum=[0, 1],
                    random_state=0)
    off.shared_pose = False
    assert off.fit(digits).network_.heads.shared == ()


def test_mixture_counts_shared_heads_in_its_parameters(digits):
    params = {"transforms": ["aff"], "max_iter": 1, "curriculum": [0], "random_state": 0}
    plain = DTIGaussianMixture(2, **params).fit(digits)
    assert plain.network_.heads.shared == ()  # off for the mixture by default
    shared = DTIGaussianMixture(2, **params)
    shared.shared_pose = True
    shared.fit(digits)
    extra = sum(
        p.numel() for name, p in shared.network_.heads.named_parameters()
        if name.startswith("shared_")
    )
    features = hidden = 128  # the network's defaults
    assert extra == features * hidden + hidden + hidden * 6 + 6  # one affine head
    assert shared._n_parameters() - plain._n_parameters() == extra
