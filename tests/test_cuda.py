"""The CUDA path: training steps that never wait for the device, fits and predictions.

Every test here needs a CUDA device and is skipped without one (CI has none).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from dti_sklearn import DTIGaussianMixture, DTIKMeans
from dti_sklearn._torch.network import PrototypeNetwork

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

X = (load_digits().images[:256] / 16).astype(np.float32)
ESTIMATORS = [DTIKMeans, DTIGaussianMixture]


def _fitted_on_cuda(cls):
    return cls(4, max_iter=1, batch_size=32, curriculum=[0, 0, 0], device="cuda",
               random_state=0).fit(X)


@pytest.mark.parametrize("cls", ESTIMATORS, ids=["kmeans", "mixture"])
def test_training_steps_never_wait_for_the_device(cls):
    model = _fitted_on_cuda(cls)
    network = model.network_.train()
    optimizer = model._make_optimizer(network)
    data = torch.from_numpy(X[:, None]).to("cuda")
    active = list(range(len(network.transformations)))
    model._train_step(network, optimizer, data[:32], active)  # lazy initialisations
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for start in (32, 64, 96):
            loss, assigned = model._train_step(network, optimizer, data[start:start + 32],
                                                active)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss.device.type == "cuda" and assigned.device.type == "cuda"
    assert torch.isfinite(loss).item()


@pytest.mark.parametrize("cls", ESTIMATORS, ids=["kmeans", "mixture"])
def test_fit_on_cuda_is_finite_and_predicts_its_labels(cls):
    model = _fitted_on_cuda(cls)
    assert model.device_.type == "cuda"
    assert np.isfinite(model.prototypes_).all()
    np.testing.assert_array_equal(model.predict(X), model.labels_)


def test_bfloat16_encoder_keeps_float32_parameters_and_the_identity():
    model = _fitted_on_cuda(DTIKMeans)
    network = model.network_.eval()
    x = torch.from_numpy(X[:8, None]).to("cuda")
    reference = network.predict_parameters(x)
    try:
        network.encoder_autocast = torch.bfloat16
        lowered = network.predict_parameters(x)
    finally:
        del network.encoder_autocast  # back to the class default
    assert all(p.dtype == torch.float32 for p in lowered)
    for ref, low in zip(reference, lowered):
        torch.testing.assert_close(low, ref, atol=2e-2, rtol=2e-2)
    fresh = PrototypeNetwork(network.prototypes.detach(), network.transformations).cuda()
    fresh.encoder_autocast = torch.bfloat16
    identity = [getattr(fresh, f"identity_{m}") for m in range(len(fresh.transformations))]
    for got, want in zip(fresh.predict_parameters(x), identity):
        assert torch.equal(got, want.expand_as(got))


@pytest.mark.parametrize("cls", ESTIMATORS, ids=["kmeans", "mixture"])
def test_a_cuda_model_loads_on_a_machine_without_cuda(cls, monkeypatch):
    import pickle

    model = _fitted_on_cuda(cls)
    blob = pickle.dumps(model)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        loaded = pickle.loads(blob)
    assert next(loaded.network_.parameters()).device.type == "cpu"
    monkeypatch.undo()
    np.testing.assert_allclose(loaded.transform(X), model.transform(X), rtol=1e-4, atol=1e-5)
    # float32 rounding differs between the devices: a near-tie may flip
    assert (loaded.predict(X) == model.labels_).mean() >= 0.99
