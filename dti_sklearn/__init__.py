"""Deep Transformation-Invariant (DTI) image clustering for scikit-learn.

The public estimators are :class:`DTIKMeans` and :class:`DTIGaussianMixture`;
transformation objects live in :mod:`dti_sklearn.transforms`.
"""

from dti_sklearn.kmeans import DTIKMeans
from dti_sklearn.mixture import DTIGaussianMixture

__version__ = "0.1.0"

__all__ = ["DTIKMeans", "DTIGaussianMixture", "__version__"]
