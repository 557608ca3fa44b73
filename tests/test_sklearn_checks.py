"""scikit-learn's estimator checks, and parameter validation.

The checks feed small 2-D tabular arrays, which the estimators read as
``1 x d`` grayscale images, so every check runs the encoder and the whole
default transformation sequence (affine, thin-plate spline, morphological)
on degenerate images.  Settings are tiny (two epochs, batches of 16): the
whole file takes seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.utils import estimator_checks
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from dti_sklearn import DTIGaussianMixture, DTIKMeans
from dti_sklearn.transforms import Morphological

#: Why the mixture's two batch-invariance checks cannot pass reliably.
_BATCH_ROUNDING = (
    "per-row outputs depend on the rows predicted alongside, by more than the check's "
    "atol=rtol=1e-7: inference runs in float32, and its matrix products and convolutions "
    "round differently with the batch size and with a row's position in the batch (7e-9 on "
    "the predicted affine parameters of rows permuted within one fixed-size chunk). The "
    "mixture's costs divide squared errors by variances down to var_min, which amplifies "
    "this: on the check's data and on 4 of 10 other seeds the mixture exceeds the tolerance "
    "up to 4.9-fold. Float64 inference (encoder, heads and alignment) removes it: worst case "
    "4e-8 of the tolerance, verified with a patched BaseDTI._compute_costs. Whether the "
    "check's own data passes also depends on where the arrays lie in memory: with glibc's "
    "default allocator thresholds (DTI_SKLEARN_TUNE_MALLOC=0) both checks passed; with the "
    "package's thresholds the sample-order check failed. Since the costs go into one "
    "preallocated array (039806d) it passes in some runs and not in others: two fresh-clone "
    "CI runs of the same package code gave two passes, then one pass and one failure."
)


def expected_failed_checks(estimator) -> dict[str, str]:
    """Checks that are not guaranteed to pass, with the reason.

    Parameters
    ----------
    estimator : estimator
        One of the estimators given to :func:`parametrize_with_checks`.

    Returns
    -------
    dict
        Check name mapped to the reason it may fail (pytest reports a pass as
        XPASS, not as an error).
    """
    if isinstance(estimator, DTIGaussianMixture):
        return {
            "check_methods_subset_invariance": _BATCH_ROUNDING,
            "check_methods_sample_order_invariance": _BATCH_ROUNDING,
        }
    return {}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Run torch on one thread: tiny problems gain nothing from more, and on a
    busy machine OpenMP's spinning threads make them ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _small(estimator_class, **params):
    return estimator_class(max_iter=2, batch_size=16, device="cpu", random_state=0, **params)


CHECKED = [_small(DTIKMeans, n_clusters=3), _small(DTIGaussianMixture, n_components=3)]


@parametrize_with_checks(CHECKED, expected_failed_checks=expected_failed_checks)
def test_sklearn_compatible_estimator(estimator, check):
    """Every scikit-learn estimator check, on the CPU (deterministic)."""
    check(estimator)


#: Output checks that scikit-learn runs on its own transformers but does not
#: yield from parametrize_with_checks; the pandas and polars ones skip
#: themselves when the library is missing.
OUTPUT_CHECKS = [
    "check_get_feature_names_out_error",
    "check_transformer_get_feature_names_out",
    "check_transformer_get_feature_names_out_pandas",
    "check_set_output_transform",
    "check_set_output_transform_pandas",
    "check_global_output_transform_pandas",
    "check_set_output_transform_polars",
    "check_global_set_output_transform_polars",
]


@pytest.mark.parametrize("check_name", OUTPUT_CHECKS)
@pytest.mark.parametrize("estimator", CHECKED, ids=lambda e: type(e).__name__)
def test_sklearn_output_checks(estimator, check_name):
    """Feature names out and set_output, as scikit-learn checks its own transformers."""
    check = getattr(estimator_checks, check_name)
    check(type(estimator).__name__, clone(estimator))


# ---------------------------------------------------------------- validation
X_SMALL = np.random.RandomState(0).rand(12, 4, 4)

INVALID = [
    ("max_iter", 0),
    ("max_iter", 1.5),
    ("batch_size", 0),
    ("learning_rate", 0.0),
    ("learning_rate", -1e-3),
    ("n_init", 0),
    ("init", "kmeans++"),
    ("curriculum", "fast"),
    ("curriculum", 3),
    ("image_shape", 16),
    ("image_shape", "4x4"),
    ("device", 0),
    ("random_state", "seed"),
    ("verbose", "yes"),
    ("transforms", 3),
    ("transforms", {"aff": 1}),
]


@pytest.mark.parametrize("estimator_class", [DTIKMeans, DTIGaussianMixture])
@pytest.mark.parametrize("name, value", INVALID)
def test_invalid_parameter_raises(estimator_class, name, value):
    """Wrong types and out-of-range values raise InvalidParameterError naming the parameter."""
    params = {"max_iter": 1, name: value}
    estimator = estimator_class(**params)
    with pytest.raises(InvalidParameterError, match=f"The '{name}' parameter of"):
        estimator.fit(X_SMALL)


@pytest.mark.parametrize(
    "estimator_class, name, value",
    [
        (DTIKMeans, "n_clusters", 0),
        (DTIKMeans, "n_clusters", 2.0),
        (DTIGaussianMixture, "n_components", 0),
        (DTIGaussianMixture, "var_min", 0.0),
        (DTIGaussianMixture, "init_std", -0.1),
    ],
)
def test_invalid_specific_parameter_raises(estimator_class, name, value):
    """The estimator-specific parameters are validated too."""
    with pytest.raises(InvalidParameterError, match=f"The '{name}' parameter of"):
        estimator_class(max_iter=1, **{name: value}).fit(X_SMALL)


def test_invalid_parameter_error_is_a_value_error():
    """InvalidParameterError subclasses ValueError and TypeError (scikit-learn's contract)."""
    with pytest.raises(ValueError):
        DTIKMeans(max_iter=-1).fit(X_SMALL)
    with pytest.raises(TypeError):
        DTIKMeans(max_iter="10").fit(X_SMALL)


@pytest.mark.parametrize(
    "params",
    [
        {"transforms": ["aff", "mor"]},
        {"transforms": ("aff",)},
        {"transforms": "aff"},
        {"transforms": Morphological(kernel_size=3)},
        {"transforms": None},
        {"init": "random"},
        {"init": "k-means"},
        {"curriculum": [0, 1]},
        {"image_shape": (4, 4)},
        {"device": torch.device("cpu")},
        {"random_state": np.random.RandomState(0)},
    ],
)
def test_valid_parameters_accepted(params):
    """Values of every accepted type pass validation and fit."""
    X = X_SMALL.reshape(12, 16) if "image_shape" in params else X_SMALL
    params = {"transforms": ["aff", "mor"], **params} if "curriculum" in params else params
    model = DTIKMeans(n_clusters=2, max_iter=1, batch_size=8, **params).fit(X)
    assert model.labels_.shape == (12,)


def test_validation_happens_in_fit_not_init():
    """Constructors store values untouched; fit validates (scikit-learn's convention)."""
    model = DTIKMeans(max_iter=-5, transforms=3)
    assert model.max_iter == -5 and model.transforms == 3
    with pytest.raises(InvalidParameterError):
        model.fit(X_SMALL)
