"""Output feature names and ``set_output`` of ``transform``."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from dti_sklearn import DTIGaussianMixture, DTIKMeans

X = np.random.RandomState(0).rand(40, 6, 6)
X_FLAT = X.reshape(40, 36)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _kmeans(**params):
    return DTIKMeans(n_clusters=3, transforms=["aff"], max_iter=1, batch_size=32,
                     random_state=0, **params)


def _mixture(**params):
    return DTIGaussianMixture(n_components=3, transforms=["aff"], max_iter=1, batch_size=32,
                              random_state=0, **params)


@pytest.mark.parametrize(
    "make, prefix", [(_kmeans, "dtikmeans"), (_mixture, "dtigaussianmixture")]
)
def test_get_feature_names_out(make, prefix):
    model = make().fit(X)
    names = model.get_feature_names_out()
    assert names.dtype == object
    assert list(names) == [f"{prefix}{k}" for k in range(3)]
    assert len(names) == model.transform(X[:2]).shape[1]


def test_get_feature_names_out_unfitted():
    with pytest.raises(NotFittedError):
        _kmeans().get_feature_names_out()


def test_get_feature_names_out_checks_input_features():
    model = _kmeans().fit(X_FLAT)
    assert len(model.get_feature_names_out([f"x{i}" for i in range(36)])) == 3
    with pytest.raises(ValueError):
        model.get_feature_names_out(["a", "b"])


def test_set_output_default_returns_arrays():
    model = _kmeans().set_output(transform="default")
    out = model.fit_transform(X)
    assert isinstance(out, np.ndarray) and out.shape == (40, 3)
    assert isinstance(model.transform(X[:5]), np.ndarray)


def test_set_output_pandas():
    pd = pytest.importorskip("pandas")
    model = _kmeans().set_output(transform="pandas").fit(X_FLAT)
    frame = pd.DataFrame(X_FLAT[:5], columns=[f"p{i}" for i in range(36)],
                         index=list("abcde"))
    model.fit(pd.DataFrame(X_FLAT, columns=frame.columns))
    out = model.transform(frame)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["dtikmeans0", "dtikmeans1", "dtikmeans2"]
    assert list(out.index) == list("abcde")
    plain = model.set_output(transform="default").transform(frame)
    np.testing.assert_allclose(out.to_numpy(), plain)


def test_set_output_pandas_in_a_pipeline():
    pd = pytest.importorskip("pandas")
    pipe = make_pipeline(
        FunctionTransformer(lambda Z: np.asarray(Z) / 2.0, feature_names_out="one-to-one"),
        _mixture(image_shape=(6, 6)),
    ).set_output(transform="pandas")
    out = pipe.fit(X_FLAT).transform(X_FLAT[:4])
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == [f"dtigaussianmixture{k}" for k in range(3)]
