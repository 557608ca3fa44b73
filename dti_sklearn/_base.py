"""The shared DTI estimator: parameters, validation, the fit entry point, inference.

:class:`BaseDTI` owns everything the two estimators have in common, the way
scikit-learn's ``BaseMixture`` owns the EM loop: input validation, the
``n_init`` restarts and the choice of the best, the final fitted
attributes, device-safe pickling and the plumbing of ``predict``,
``transform`` and ``get_aligned_prototypes``.  The training of one
initialisation (epochs, curriculum, learning-rate decay, empty-cluster
reassignment, split-and-merge moves, the race between starts) is
:class:`~dti_sklearn._training.TrainingLoop`, mixed in.  Subclasses fill a
few small hooks with their objective (see the methods marked *hook*).
"""

from __future__ import annotations

import math
import warnings
from abc import abstractmethod
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from dti_sklearn._images import ImageLayout, IntensityScale, validate_images
from dti_sklearn._inference import fill_in_chunks
from dti_sklearn._malloc import tune_malloc
from dti_sklearn._params import NestedTransformsParamsMixin
from dti_sklearn._persistence import DeviceSafePickleMixin
from dti_sklearn._schedule import curriculum_starts
from dti_sklearn._threads import limit_torch_threads
from dti_sklearn._torch.device import resolve_device
from dti_sklearn._torch.network import PrototypeNetwork
from dti_sklearn._torch.standardize import standardize_channels
from dti_sklearn._training import TrainingLoop, _Run
from dti_sklearn.transforms import Transformation, make_transformations
from dti_sklearn.transforms._base import has_photometric

#: Default transformation sequence of the mixture, and of DTIKMeans on images
#: smaller than 16 x 16: the paper's MNIST modules, with the two warps next to
#: each other so that they share one sampling grid.
DEFAULT_TRANSFORMS = ("affine", "thin_plate_spline", "morphological")

#: Gradient steps that ``max_iter="auto"`` aims for by default, for a sequence
#: without a colour transformation.  On MNIST-test (host B, seeds 0-4)
#: DTIKMeans reached 95.6 +- 1.4 ACC with 3,000 steps (20 epochs) and
#: 96.4 +- 0.5 with 9,000 (58 epochs).  15,000 (96 epochs) lifted seeds 2 and 3
#: to 96.8 and 96.7 but put two digits in one cluster in seeds 1 and 4 (85.3
#: and 92.5; 93.6 +- 4.5 in all).
AUTO_STEPS = 9000
#: Gradient steps of ``max_iter="auto"`` with a colour transformation, for
#: either estimator.  Its steps cost more (three channels, a wider encoder
#: input): 9,000 steps (58 epochs of MNIST-color) take 4 to 9 minutes on two
#: cores, and 20 epochs left two digits merged where 60 did not.
PHOTOMETRIC_AUTO_STEPS = 9000
#: Bounds on the number of epochs under ``max_iter="auto"``.
AUTO_EPOCHS = (20, 200)


class BaseDTI(
    TrainingLoop,
    NestedTransformsParamsMixin,
    DeviceSafePickleMixin,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
    BaseEstimator,
):
    """Base class of the DTI estimators (not for direct use).

    Parameters are documented on :class:`~dti_sklearn.DTIKMeans` and
    :class:`~dti_sklearn.DTIGaussianMixture`.
    """

    _parameter_constraints: dict = {
        "transforms": [list, tuple, str, Transformation, None],
        "max_iter": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init": [StrOptions({"random", "k-means++", "k-means"}), "array-like"],
        "curriculum": [StrOptions({"auto"}), list, tuple],
        "image_shape": [None, list, tuple],
        "device": [str, torch.device],
        "cuda_graphs": ["boolean"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    #: Gradient steps that ``max_iter="auto"`` aims for without a colour
    #: transformation (see ``_auto_steps``).
    auto_steps = AUTO_STEPS

    # ------------------------------------------------------------------ hooks
    @property
    @abstractmethod
    def _n_clusters(self) -> int:
        """Number of clusters K (hook)."""

    def _transform_specs(self, images: np.ndarray):
        """The ``transforms`` to build for these ``(N, C, H, W)`` images (hook)."""
        return self.transforms

    def _build_transformations(self, images: np.ndarray) -> list[Transformation]:
        """Fresh transformation objects for these ``(N, C, H, W)`` images, sizes resolved."""
        height, width = images.shape[2:]
        specs = make_transformations(self._transform_specs(images))
        return [t.for_image_size(height, width) for t in specs]

    def _resolve_auto_parameters(self, images: np.ndarray) -> None:
        """Set the fitted values of parameters given as ``"auto"`` (hook)."""

    def _network_kwargs(self, data: torch.Tensor, centres: torch.Tensor) -> dict:
        """Extra keyword arguments of :class:`PrototypeNetwork` (hook)."""
        return {}

    @abstractmethod
    def _batch_loss(
        self, network: PrototypeNetwork, x: torch.Tensor, active: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss of a batch and the cluster of each sample (hook)."""

    @abstractmethod
    def _costs(
        self, network: PrototypeNetwork, x: torch.Tensor, means: torch.Tensor,
        deviations: torch.Tensor | None,
    ) -> torch.Tensor:
        """(B, K) float64 costs, lower for a better fit (hook)."""

    @abstractmethod
    def _final_loss(self, costs: np.ndarray) -> float:
        """The objective on the whole training set, from its costs (hook)."""

    def _comparison_loss(self, costs: np.ndarray, network: PrototypeNetwork) -> float:
        """The objective by which training compares runs of one initialisation (hook).

        The race's starts and the tried move's two branches are ranked by it
        on the whole training set, lower is better; by default the final loss.
        """
        return self._final_loss(costs)

    @abstractmethod
    def _set_fitted_attributes(self, network: PrototypeNetwork, costs: np.ndarray) -> None:
        """Store the estimator's fitted attributes (hook)."""

    def _split_residuals(
        self, residuals: torch.Tensor, deviations: torch.Tensor | None,
    ) -> torch.Tensor:
        """Scale ``x - aligned`` so that its squared norm is the cost up to constants (hook).

        Both arguments are ``(n, D)``: each sample's residual against its
        cluster's aligned prototype and, for the mixture, that prototype's
        aligned deviations.  K-means costs are squared residuals already.
        """
        return residuals

    def _auto_steps(self, transformations: list[Transformation]) -> int:
        """Gradient steps that ``max_iter="auto"`` aims for with this sequence (hook)."""
        if has_photometric(transformations):
            return PHOTOMETRIC_AUTO_STEPS
        return self.auto_steps

    def _after_reassignment(
        self, network: PrototypeNetwork, small: torch.Tensor, largest: int,
    ) -> None:
        """Adjust parameters after clusters were copied from the largest (hook)."""

    # --------------------------------------------------------------- fitting
    @_fit_context(prefer_skip_nested_validation=True)
    @limit_torch_threads
    def fit(self, X, y=None):
        """Learn the prototypes and the transformation predictor.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W), (n_samples, H, W, C) or (n_samples, d)
            Training images; ``uint8`` values are scaled to ``[0, 1]``.  Any
            value range works: the network sees them mapped onto ``[0, 1]``
            (``data_min_``, ``data_range_``) and outputs come back in the
            units of ``X``.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        tune_malloc()
        images = validate_images(self, X, image_shape=self.image_shape, reset=True)
        scale = IntensityScale.of(images)
        self.data_min_, self.data_range_ = scale.minimum, scale.span
        images = scale.to_model(images)
        n_samples, k = images.shape[0], self._n_clusters
        if n_samples < k:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={k}.")
        self._resolve_auto_parameters(images)
        transformations = self._build_transformations(images)
        self._epochs = _auto_epochs(
            self.max_iter, n_samples, self.batch_size, self._auto_steps(transformations)
        )
        starts = curriculum_starts(self.curriculum, transformations, self._epochs)
        device = resolve_device(self.device)
        rng = check_random_state(self.random_state)
        data = torch.from_numpy(images).to(device)

        best: _Run | None = None
        diverged: FloatingPointError | None = None
        self._images_trained = 0
        for init_index in range(self.n_init):
            seed = int(rng.randint(np.iinfo(np.int32).max))
            try:
                run = self._fit_single(data, images, transformations, starts, seed, init_index)
            except FloatingPointError as error:
                if self.n_init == 1:
                    raise
                diverged = error
                warnings.warn(
                    f"Run {init_index + 1} of n_init={self.n_init} diverged ({error}); "
                    "it is dropped.", RuntimeWarning, stacklevel=2,
                )
                continue
            if best is None or run.loss < best.loss:
                best = run
        if best is None:
            raise diverged  # every run diverged
        self.network_ = best.network
        self.device_ = device
        self.transforms_ = transformations
        self.loss_curve_ = [self._cost_to_user_units(loss, 1) for loss in best.loss_curve]
        self.n_iter_ = best.n_iter
        self.n_images_trained_ = self._images_trained
        self._set_fitted_attributes(
            best.network, self._cost_to_user_units(best.costs, self.n_features_in_)
        )
        return self

    @property
    def _intensity_scale(self) -> IntensityScale:
        """The map between the caller's pixel values and the network's."""
        # Models pickled before the scale existed were trained on raw values.
        return IntensityScale(getattr(self, "data_min_", 0.0), getattr(self, "data_range_", 1.0))

    def _cost_to_user_units(self, cost, n_values: int):
        """A cost of ``n_values`` pixels, from the network's values to the caller's (hook)."""
        raise NotImplementedError

    def _initial_centres(
        self, images: np.ndarray, seed: int, colour_blind: bool = False,
    ) -> np.ndarray:
        """(K, C, H, W) starting prototypes from ``init``.

        With ``colour_blind`` (a photometric transformation in the sequence)
        the string inits pick among colour-standardised images, which the
        colour transformation can then recolour to fit any sample.
        """
        k = self._n_clusters
        layout: ImageLayout = self._layout
        if colour_blind and isinstance(self.init, str):
            images = standardize_channels(torch.from_numpy(images)).numpy()
        flat = images.reshape(len(images), -1)
        init = self.init
        if isinstance(init, str) and init == "random":
            idx = np.random.RandomState(seed).choice(len(images), k, replace=False)
            return images[idx].copy()
        if isinstance(init, str) and init == "k-means++":
            centres, _ = kmeans_plusplus(flat, k, random_state=seed)
        elif isinstance(init, str) and init == "k-means":
            centres = KMeans(k, n_init=1, random_state=seed).fit(flat).cluster_centers_
        else:
            given = np.asarray(init)
            scale = 1.0 / 255.0 if given.dtype == np.uint8 else 1.0
            given = given.astype(np.float32) * scale
            if given.shape[0] != k or given.size != k * layout.n_features:
                raise ValueError(
                    f"init array must hold {k} prototypes of shape {layout.image_shape} "
                    f"(or {layout.n_features} values each), got shape {given.shape}."
                )
            if not np.isfinite(given).all():
                raise ValueError("init array contains NaN or infinity.")
            user = given.reshape(k, *layout.image_shape)
            return self._intensity_scale.to_model(_user_to_nchw(user, layout))
        return centres.reshape(k, *images.shape[1:]).astype(np.float32)


    # ------------------------------------------------------------- inference
    @torch.no_grad()
    def _compute_costs(
        self, data: torch.Tensor, network: PrototypeNetwork | None = None,
    ) -> np.ndarray:
        """(n, K) float64 costs of every sample against every aligned prototype."""
        tune_malloc()
        network = self.network_ if network is None else network
        network.eval()
        costs = torch.empty((data.shape[0], network.prototypes.shape[0]), dtype=torch.float64)
        return fill_in_chunks(
            costs, data, network, lambda x: self._costs(network, x, *network(x)),
        ).numpy()

    def _validated_tensor(self, X) -> torch.Tensor:
        check_is_fitted(self)
        images = validate_images(self, X, image_shape=self.image_shape, reset=False)
        return torch.from_numpy(self._intensity_scale.to_model(images)).to(self.device_)

    def _costs_of(self, X) -> np.ndarray:
        """(n, K) costs of ``X`` against every aligned prototype, in the caller's units."""
        costs = self._compute_costs(self._validated_tensor(X))
        return self._cost_to_user_units(costs, self.n_features_in_)

    def predict(self, X):
        """Assign each sample to the cluster whose aligned prototype fits best.

        Parameters
        ----------
        X : array-like of images, in the layout used for fit
            New samples.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Index of the cluster each sample belongs to.
        """
        return self._costs_of(X).argmin(axis=1)

    def fit_predict(self, X, y=None):
        """Fit, then return the cluster of every training sample.

        Parameters
        ----------
        X : array-like of images
            Training images.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Same as ``labels_`` after fit.
        """
        return self.fit(X).labels_

    def get_aligned_prototypes(self, X):
        """Every prototype transformed to fit every sample.

        Parameters
        ----------
        X : array-like of images, in the layout used for fit
            Samples to align the prototypes to.

        Returns
        -------
        aligned : ndarray of shape (n_samples, n_clusters, *image_shape)
            In the input's layout: ``(n, K, H, W)``, ``(n, K, H, W, C)``, or
            ``(n, K, d)`` for flattened 2-D input.
        """
        data = self._validated_tensor(X)
        network = self.network_
        network.eval()
        aligned = torch.empty(
            (data.shape[0], *network.prototypes.shape), dtype=torch.float64,
        )
        with torch.no_grad():
            fill_in_chunks(aligned, data, network, lambda x: network(x)[0])
        aligned = self._intensity_scale.to_user(self._layout.to_user(aligned.numpy()))
        if self._layout.flat:
            aligned = aligned.reshape(aligned.shape[0], aligned.shape[1], -1)
        return aligned

    def _prototype_images(self) -> np.ndarray:
        """The fitted prototypes as (K, *image_shape) float64."""
        raw = self.network_.prototypes.detach().cpu().double().numpy()
        return self._intensity_scale.to_user(self._layout.to_user(raw))

    # ------------------------------------------------------------ estimator
    @property
    def _n_features_out(self) -> int:
        """Columns of :meth:`transform`, one per cluster (fitted estimators only).

        Used by :meth:`get_feature_names_out` (``dtikmeans0``, ``dtikmeans1``,
        ...) and by ``set_output``.
        """
        return len(self.prototypes_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


def _auto_epochs(
    max_iter: int | str, n_samples: int, batch_size: int, steps: int = AUTO_STEPS,
) -> int:
    """Resolve ``max_iter``: ``"auto"`` aims for ``steps`` gradient steps.

    With DTIKMeans's 9,000 steps that is 58 epochs of the 10,000 MNIST-test
    images at batch size 64, and the 200-epoch ceiling for the 1,797 images
    of scikit-learn's ``load_digits``; never fewer than 20 epochs nor more
    than 200.
    """
    if max_iter != "auto":
        return int(max_iter)
    low, high = AUTO_EPOCHS
    return min(high, max(low, _epochs_for_steps(steps, n_samples, batch_size)))


def _epochs_for_steps(steps: int, n_samples: int, batch_size: int) -> int:
    """Whole epochs that hold at least ``steps`` gradient steps (one batch may be short)."""
    return math.ceil(steps / math.ceil(n_samples / batch_size))


def _user_to_nchw(images: np.ndarray, layout: ImageLayout) -> np.ndarray:
    """(K, *image_shape) user images to (K, C, H, W) float32."""
    if len(layout.image_shape) == 2:
        return np.ascontiguousarray(images[:, None], dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(images, -1, 1), dtype=np.float32)
