"""Nested parameters, pipelines, grid search and torch threads in joblib workers.

Tiny data (60 digits of 8 x 8 pixels), one or two epochs: these tests check
the plumbing, not clustering quality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from joblib import Parallel, cpu_count, delayed, parallel_config
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from dti_sklearn import DTIGaussianMixture, DTIKMeans
from dti_sklearn._threads import torch_thread_budget
from dti_sklearn.transforms import Affine, Morphological, ThinPlateSpline

_DIGITS = load_digits()
#: 60 flattened 8 x 8 digits of classes 0, 1 and 2 (values 0..16), and their labels.
X_FLAT = _DIGITS.data[_DIGITS.target < 3][:60]
Y = _DIGITS.target[_DIGITS.target < 3][:60]
#: The same digits as (n, 8, 8) images in [0, 1].
X_IMAGES = X_FLAT.reshape(-1, 8, 8) / 16.0

SMALL = {"n_clusters": 3, "max_iter": 2, "batch_size": 32, "random_state": 0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------ nested params
def test_get_params_exposes_transformation_parameters():
    model = DTIKMeans(transforms=[Affine(), Morphological(kernel_size=3)])
    params = model.get_params(deep=True)
    assert params["transforms__0"] is model.transforms[0]
    assert params["transforms__0__padding_mode"] == "border"
    assert params["transforms__1__kernel_size"] == 3
    shallow = model.get_params(deep=False)
    assert not any(key.startswith("transforms__") for key in shallow)
    assert shallow.items() <= params.items()


def test_get_params_lists_named_elements_without_nested_keys():
    params = DTIKMeans(transforms=("aff", "mor")).get_params()
    assert params["transforms__0"] == "aff" and params["transforms__1"] == "mor"
    assert not any(key.count("__") > 1 for key in params)


def test_set_params_nested_does_not_mutate_shared_objects():
    morph = Morphological(kernel_size=3)
    objects = [Affine(), morph]
    model = DTIKMeans(transforms=objects)
    twin = clone(model)
    model.set_params(transforms__1__kernel_size=5, transforms__0__padding_mode="zeros")
    assert model.transforms[1].kernel_size == 5
    assert model.transforms[0].padding_mode == "zeros"
    assert morph.kernel_size == 3 and objects[1] is morph  # caller's list and object
    assert twin.transforms[1].kernel_size == 3  # the clone's own copy
    assert model.get_params()["transforms__1__kernel_size"] == 5


def test_set_params_replaces_elements_and_keeps_the_sequence_type():
    model = DTIKMeans(transforms=("aff", "mor"))
    model.set_params(transforms__1=ThinPlateSpline(grid_size=3))
    assert isinstance(model.transforms, tuple)
    assert model.transforms[0] == "aff"
    assert model.transforms[1].grid_size == 3
    model.set_params(transforms__1__grid_size=2)
    assert model.transforms[1].grid_size == 2


def test_set_params_sets_transforms_before_its_elements():
    model = DTIKMeans(transforms=["aff"])
    model.set_params(transforms=[Affine(), Morphological()], transforms__1__kernel_size=5)
    assert model.transforms[1].kernel_size == 5


def test_set_params_single_transformation_object():
    morph = Morphological(kernel_size=3)
    model = DTIKMeans(transforms=morph).set_params(transforms__kernel_size=5)
    assert model.transforms.kernel_size == 5 and morph.kernel_size == 3


@pytest.mark.parametrize(
    "params, message",
    [
        ({"transforms__2__kernel_size": 5}, "transforms has 2 elements"),
        ({"transforms__x": 5}, "transforms has 2 elements"),
        ({"transforms__0__kernel_size": 5}, "not a Transformation object"),
        ({"transforms__1__size": 5}, "Invalid parameter 'size'"),
        ({"n_cluster": 5}, "Invalid parameter 'n_cluster'"),
    ],
)
def test_set_params_invalid(params, message):
    model = DTIKMeans(transforms=["aff", Morphological()])
    with pytest.raises(ValueError, match=message):
        model.set_params(**params)


def test_nested_params_reach_the_fitted_model():
    model = DTIKMeans(transforms=[Affine(), Morphological(kernel_size=3)], **SMALL)
    model.set_params(transforms__1__kernel_size=5).fit(X_IMAGES)
    assert model.transforms_[1].kernel_size == 5


# ----------------------------------------------------------------- pipelines
def _to_images(X):
    """Flat rows of 64 values in 0..16 to (n, 8, 8) images in [0, 1]."""
    return np.asarray(X, dtype=np.float64).reshape(-1, 8, 8) / 16.0


@pytest.mark.parametrize(
    "pipeline",
    [
        # Scaling keeps the rows flat: image_shape tells the estimator how to read them.
        make_pipeline(
            FunctionTransformer(lambda X: X / 16.0), DTIKMeans(image_shape=(8, 8), **SMALL)
        ),
        # Reshaping hands (n, 8, 8) images over: no image_shape needed.
        make_pipeline(FunctionTransformer(_to_images), DTIKMeans(**SMALL)),
    ],
    ids=["scale+image_shape", "reshape"],
)
def test_pipeline_methods(pipeline):
    direct = DTIKMeans(**SMALL).fit(X_IMAGES)
    labels = pipeline.fit_predict(X_FLAT)
    np.testing.assert_array_equal(labels, direct.labels_)
    np.testing.assert_array_equal(pipeline.predict(X_FLAT[:7]), direct.predict(X_IMAGES[:7]))
    np.testing.assert_allclose(pipeline.transform(X_FLAT[:7]), direct.transform(X_IMAGES[:7]))
    assert pipeline.score(X_FLAT) == pytest.approx(direct.score(X_IMAGES))
    assert pipeline[-1].prototypes_.shape == (3, 8, 8)


def test_pipeline_mixture_predict_proba():
    pipe = make_pipeline(
        FunctionTransformer(_to_images),
        DTIGaussianMixture(n_components=3, max_iter=1, batch_size=32, random_state=0),
    ).fit(X_FLAT)
    proba = pipe.predict_proba(X_FLAT[:5])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert np.isfinite(pipe.score(X_FLAT))


# --------------------------------------------------------------- grid search
def _grid(param_grid, **kwargs):
    base = DTIKMeans(**{**SMALL, "max_iter": 1})
    return GridSearchCV(base, param_grid, cv=2, **kwargs)


def test_grid_search_over_transformation_names():
    sequences = [["aff"], ["aff", "mor"], ["aff", "mor", "tps"]]
    search = _grid({"transforms": sequences}).fit(X_IMAGES)
    assert list(search.cv_results_["param_transforms"]) == sequences
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_params_["transforms"] in sequences
    assert search.best_estimator_.labels_.shape == (60,)


def test_grid_search_over_transformation_objects_leaves_the_grid_untouched():
    candidates = [[Affine()], [Affine(), Morphological(kernel_size=5)]]
    search = _grid({"transforms": candidates}).fit(X_IMAGES)
    best = search.best_estimator_.transforms
    assert all(b is not c for b in best for seq in candidates for c in seq)  # clones
    assert candidates[1][1].kernel_size == 5
    assert search.best_estimator_.transforms_[0].__class__ is Affine


def test_grid_search_over_nested_parameters():
    base = DTIKMeans(transforms=[Affine(), Morphological(kernel_size=3)], **SMALL)
    search = GridSearchCV(
        base, {"transforms__0__padding_mode": ["border", "zeros"],
               "transforms__1__kernel_size": [3, 5]}, cv=2,
    ).fit(X_IMAGES)
    assert len(search.cv_results_["params"]) == 4
    best = search.best_params_
    assert search.best_estimator_.transforms[1].kernel_size == best["transforms__1__kernel_size"]
    assert base.transforms[0].padding_mode == "border"  # the base estimator is untouched
    assert base.transforms[1].kernel_size == 3


def test_grid_search_with_a_label_based_scorer():
    search = _grid(
        {"transforms": [["aff"], ["aff", "mor"]]}, scoring="adjusted_rand_score"
    ).fit(X_IMAGES, Y)
    scores = search.cv_results_["mean_test_score"]
    assert ((scores >= -1) & (scores <= 1)).all()


# ------------------------------------------------------- threads in workers
def _probe_threads() -> tuple[int, int]:
    return torch.get_num_threads(), torch_thread_budget()


def _share(n_jobs: int) -> int:
    return max(cpu_count() // n_jobs, 1)


def test_loky_workers_already_limit_torch_threads():
    """loky sets OMP_NUM_THREADS=cpu_count()//n_jobs in its workers; torch honours it."""
    results = Parallel(n_jobs=2)(delayed(_probe_threads)() for _ in range(2))
    for threads, budget in results:
        assert threads <= _share(2)
        assert budget <= _share(2)


def test_threading_backend_workers_get_one_thread():
    """The threading backend sets no limit: a fit inside one of its workers uses one thread."""
    torch.set_num_threads(2)
    with parallel_config(backend="threading"):
        results = Parallel(n_jobs=2)(delayed(_probe_threads)() for _ in range(2))
    assert [budget for _, budget in results] == [1, 1]
    assert torch.get_num_threads() == 2


class _RecordThreads(Affine):
    """An affine transformation that notes torch's thread count during training."""

    def apply(self, images, params):
        if torch.is_grad_enabled():
            self.__dict__.setdefault("seen_threads", set()).add(torch.get_num_threads())
        return super().apply(images, params)


def _fit_threads(model) -> set[int]:
    return model.network_.transformations[0].__dict__.get("seen_threads", set())


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_grid_search_n_jobs_2_fits_within_the_worker_share(backend):
    """Each GridSearchCV worker trains with at most its share of the CPUs."""
    torch.set_num_threads(min(2, cpu_count()))
    before = torch.get_num_threads()
    model = DTIKMeans(transforms=[_RecordThreads()], **{**SMALL, "max_iter": 1})
    with parallel_config(backend=backend):
        search = GridSearchCV(
            model, {"batch_size": [16, 32]}, cv=2, n_jobs=2,
            scoring=lambda est, X, y=None: max(_fit_threads(est)), error_score="raise",
        ).fit(X_IMAGES)
    assert (search.cv_results_["mean_test_score"] <= _share(2)).all()
    assert torch.get_num_threads() == before  # restored in the parent
