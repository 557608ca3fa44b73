"""Pickle and joblib persistence, fitted state size, and CUDA-to-CPU loading."""

from __future__ import annotations

import io
import pickle

import joblib
import numpy as np
import pytest
import torch

from dti_sklearn import DTIGaussianMixture, DTIKMeans

RNG = np.random.RandomState(0)
X = RNG.rand(97, 8, 8)

ESTIMATORS = [
    DTIKMeans(n_clusters=3, transforms=["aff", "mor"], max_iter=2, batch_size=32,
              random_state=0),
    DTIGaussianMixture(n_components=3, transforms=["aff", "mor"], max_iter=2, batch_size=32,
                       random_state=0),
]
IDS = ["kmeans", "mixture"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=ESTIMATORS, ids=IDS)
def fitted(request):
    """A fitted copy of each estimator (fitted once per module)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model = pickle.loads(pickle.dumps(request.param)).fit(X)
    torch.set_num_threads(before)
    return model


def _outputs(model, X_new):
    out = {"predict": model.predict(X_new), "transform": model.transform(X_new)}
    if hasattr(model, "predict_proba"):
        out["predict_proba"] = model.predict_proba(X_new)
    return out


def _assert_same_outputs(a, b, X_new):
    expected, got = _outputs(a, X_new), _outputs(b, X_new)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_pickle_round_trip(fitted):
    loaded = pickle.loads(pickle.dumps(fitted))
    _assert_same_outputs(fitted, loaded, X[:20])
    np.testing.assert_array_equal(loaded.labels_, fitted.labels_)
    assert loaded.device_ == torch.device("cpu")


def test_joblib_round_trip(fitted, tmp_path):
    path = tmp_path / "model.joblib"
    joblib.dump(fitted, path)
    loaded = joblib.load(path)
    _assert_same_outputs(fitted, loaded, X[:20])
    assert loaded.score(X) == fitted.score(X)


def test_joblib_compressed_round_trip(fitted):
    buffer = io.BytesIO()
    joblib.dump(fitted, buffer, compress=3)
    buffer.seek(0)
    _assert_same_outputs(fitted, joblib.load(buffer), X[:20])


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=IDS)
def test_unfitted_estimator_pickles(estimator):
    loaded = pickle.loads(pickle.dumps(estimator))
    assert loaded.get_params(deep=False).keys() == estimator.get_params(deep=False).keys()
    assert repr(loaded) == repr(estimator)
    assert not hasattr(loaded, "network_")


def test_fitted_state_holds_no_training_data(fitted):
    """Only labels_ has one row per training sample; the pickle does not grow with the data."""
    n_samples = X.shape[0]
    per_sample = {
        name for name, value in vars(fitted).items()
        if getattr(value, "shape", ())[:1] == (n_samples,)
        or (isinstance(value, (list, tuple)) and len(value) == n_samples)
    }
    assert per_sample == {"labels_"}
    for name, tensor in list(fitted.network_.named_parameters()) + list(
        fitted.network_.named_buffers()
    ):
        assert tensor.shape[:1] != (n_samples,), name

    # Ten times the data: the pickle grows by the labels_ alone (8 bytes a sample).
    big = np.random.RandomState(1).rand(10 * n_samples, 8, 8)
    small_size = len(pickle.dumps(fitted))
    big_model = pickle.loads(pickle.dumps(fitted)).set_params(max_iter=1).fit(big)
    growth = len(pickle.dumps(big_model)) - small_size
    assert growth <= 8 * 9 * n_samples + 2048


def test_pickle_far_smaller_than_the_data():
    data = np.random.RandomState(2).rand(6000, 8, 8)  # 3 MB of float64
    model = DTIKMeans(n_clusters=2, transforms=["aff"], max_iter=1, batch_size=512,
                      random_state=0).fit(data)
    size = len(pickle.dumps(model))
    assert size < data.nbytes / 4, (size, data.nbytes)


def test_getstate_returns_a_copy(fitted):
    """Pickling never alters the live estimator (Python >= 3.11 hands out __dict__ itself)."""
    state = fitted.__getstate__()
    assert state is not fitted.__dict__
    state["device_"] = "elsewhere"
    assert fitted.device_ == torch.device("cpu")


def test_cuda_fitted_model_loads_without_cuda(fitted, monkeypatch):
    """Simulate a model fitted on CUDA: the stored device_ is cuda, this machine has none."""
    state = fitted.__getstate__()
    state["device_"] = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = type(fitted).__new__(type(fitted))
    with pytest.warns(UserWarning, match="fitted on cuda:0 but CUDA is not available"):
        loaded.__setstate__(state)
    assert loaded.device_ == torch.device("cpu")
    assert next(loaded.network_.parameters()).device.type == "cpu"
    _assert_same_outputs(fitted, loaded, X[:20])


def test_cuda_fitted_model_unpickles_without_cuda(fitted, monkeypatch):
    """The same through pickle.loads: the warning fires, predictions run on the CPU."""
    model = pickle.loads(pickle.dumps(fitted))
    model.device_ = torch.device("cuda")  # as if fitted on a GPU machine
    payload = pickle.dumps(model)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        loaded = pickle.loads(payload)
    assert loaded.device_.type == "cpu"
    _assert_same_outputs(fitted, loaded, X[:20])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=IDS)
def test_fit_on_cuda_pickle_and_load(estimator, recwarn):
    model = pickle.loads(pickle.dumps(estimator)).set_params(device="cuda").fit(X)
    assert model.device_.type == "cuda"
    state = model.__getstate__()
    assert next(state["network_"].parameters()).device.type == "cpu"  # portable pickle
    assert next(model.network_.parameters()).device.type == "cuda"  # the model is untouched
    loaded = pickle.loads(pickle.dumps(model))
    assert loaded.device_.type == "cuda"
    assert next(loaded.network_.parameters()).device.type == "cuda"
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    np.testing.assert_allclose(loaded.transform(X), model.transform(X), rtol=1e-6)
    assert not [w for w in recwarn if "CUDA is not available" in str(w.message)]
