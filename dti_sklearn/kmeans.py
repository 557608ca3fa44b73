"""DTI K-means: K-means in pixel space with prototypes aligned to each sample."""

from __future__ import annotations

import numpy as np
import torch

from dti_sklearn._base import DEFAULT_TRANSFORMS, BaseDTI
from dti_sklearn._torch.network import PrototypeNetwork

#: Smallest height and width at which ``transforms="auto"`` solves a colour.
#: On scikit-learn's 8 x 8 ``load_digits`` (seeds 0-4) DTIKMeans reached 93.5
#: mean ACC with the colour and 94.2 without; on 16 x 16 and 28 x 28 MNIST the
#: colour helped (docs/benchmarks.md).
AUTO_COLOUR_MIN_SIDE = 16


def auto_transforms(height: int, width: int) -> tuple[str, ...]:
    """The sequence that ``DTIKMeans(transforms="auto")`` builds for images of this size.

    On images of at least 16 x 16 pixels, the solved colour (each sample's
    least-squares gain and offset per channel for every aligned prototype)
    in front of the affine, thin-plate spline and morphological warps.  On
    MNIST-test it lifted the good runs from 96.1-96.9 to 96.6-97.4 ACC
    (docs/benchmarks.md).  Smaller images, and rows of tabular data read as
    ``1 x d`` images, get the warps only: with few pixels a gain and an
    offset fit much of a sample (on the 8 x 8 ``load_digits`` the colour
    cost 0.7 points of mean ACC).  The morphological window follows the
    image size as well (:func:`~dti_sklearn.transforms.morphological.auto_kernel_size`).

    Parameters
    ----------
    height, width : int
        Image size in pixels.

    Returns
    -------
    tuple of str
        Transformation names, in the order they are applied.

    Examples
    --------
    >>> from dti_sklearn.kmeans import auto_transforms
    >>> auto_transforms(28, 28)
    ('color', 'affine', 'thin_plate_spline', 'morphological')
    >>> auto_transforms(8, 8)
    ('affine', 'thin_plate_spline', 'morphological')
    """
    if min(height, width) >= AUTO_COLOUR_MIN_SIDE:
        return ("color", *DEFAULT_TRANSFORMS)
    return DEFAULT_TRANSFORMS


class DTIKMeans(BaseDTI):
    """Deep Transformation-Invariant K-means.

    Every cluster is a prototype image.  Before a sample is compared to a
    prototype, a neural network looks at the sample and predicts the
    parameters of a sequence of transformations (colour, affine,
    morphological, thin-plate spline, ...) that bend the prototype to fit it.
    The sample joins the cluster whose transformed prototype is nearest in
    mean squared pixel error.  Prototypes and predictor are learned jointly by
    gradient descent (Monnier et al., NeurIPS 2020).  With ``transforms=None``
    (identity only) this is mini-batch gradient K-means in pixel space.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters (prototypes).
    transforms : "auto", sequence of str or Transformation, or None, default="auto"
        ``"auto"``: ``("color", "affine", "thin_plate_spline", "morphological")``
        for images of at least 16 x 16 pixels (each prototype is warped to the
        sample, then every channel gets its least-squares gain and offset
        onto the sample's; see :class:`~dti_sklearn.transforms.Color`), the
        same without ``"color"`` for smaller ones (:func:`auto_transforms`).
        The transformations applied to a prototype, in order.  Names: ``"id"``,
        ``"col"``, ``"aff"``, ``"proj"``, ``"tps"``, ``"mor"`` (or their long
        forms), or objects from :mod:`dti_sklearn.transforms`, your own
        included.  ``None`` means the identity only.
    max_iter : int or "auto", default="auto"
        Number of epochs (passes over the training set), as in
        ``MLPClassifier``.  ``"auto"`` aims for 9,000 gradient steps, within
        20 to 200 epochs: 58 epochs for 10,000 images at batch size 64.
    batch_size : int, default=64
        Samples per gradient step.
    learning_rate : float, default=1e-3
        Adam's learning rate; a tenth of it for the last 10% of the epochs.
    n_init : int, default=1
        Independent runs; the one with the lowest final loss is kept (the
        paper's "minLoss" protocol).  A run whose training diverges is
        dropped with a ``RuntimeWarning``; only all of them diverging (or
        the only one) raises ``FloatingPointError``.
    init : {"random", "k-means++", "k-means"} or array-like, default="k-means++"
        Initial prototypes: random training samples, scikit-learn's k-means++
        seeding, the centres of a scikit-learn ``KMeans`` run, or an array of
        shape ``(n_clusters, *image_shape)`` in the units of ``X``.
    curriculum : "auto" or sequence of int, default="auto"
        When each transformation is switched on.  ``"auto"``: the identity
        only for the first 15% of the epochs (plain K-means), then the others
        one after the other, simplest first (colour, affine, projective,
        morphological, thin-plate spline, then your own), over the next 35%.  A sequence
        gives one start epoch per transformation.
    image_shape : tuple of int, default=None
        ``(H, W)`` or ``(H, W, C)``: how to read 2-D input whose rows are
        flattened images (channels last).  Without it a 2-D ``(n, d)`` array is
        read as ``n`` grayscale ``1 x d`` images, so tabular data still runs.
        3-D ``(n, H, W)`` and 4-D ``(n, H, W, C)`` arrays need no
        ``image_shape``.
    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU.
    cuda_graphs : bool, default=True
        On CUDA, record the training step once as a CUDA graph (per set of
        active transformations and batch shape) and replay it: about six
        times faster fits on MNIST-sized images.  False runs eager steps,
        for instance for a custom transformation that reads values back to
        the host.  Ignored on other devices.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation, the network and the batch order (through a
        private generator: the global torch seed is left alone).  The same
        seed gives the same labels on the CPU.
    verbose : int, default=0
        Show a progress bar over epochs with the current loss.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        Prototypes as flattened rows (channels last), like ``KMeans``.
    prototypes_ : ndarray of shape (n_clusters, *image_shape)
        Prototypes as images.
    labels_ : ndarray of shape (n_samples,)
        Cluster of every training sample.
    inertia_ : float
        Sum over training samples of the squared distance to the aligned
        prototype of their cluster, in the units of ``X``.
    n_iter_ : int
        Number of epochs run.
    n_images_trained_ : int
        Images passed through gradient steps, over every run (``n_init``),
        start and branch of the tried move: ``n_iter_`` epochs of the
        training set at the least.  Divided by the time of ``fit``, the
        training throughput.
    loss_curve_ : list of float
        Training loss (mean squared pixel error, in the units of ``X``) of
        every epoch.
    data_min_ : float
        Smallest value of the training images (``uint8`` ones in ``[0, 1]``).
    data_range_ : float
        Their largest value minus ``data_min_`` (1 for constant images).  The
        network sees ``(X - data_min_) / data_range_``, so images in
        ``[0, 255]`` or ``[0, 1]`` give the same clusters.
    transforms_ : list of Transformation
        The resolved transformation objects.
    n_features_in_ : int
        Values per image, ``H * W * C``.
    image_shape_ : tuple of int
        Shape of one image as given (``(1, d)`` for tabular input).
    device_ : torch.device
        Where the network lives.
    network_ : torch.nn.Module
        The fitted prototypes, encoder and heads.

    Notes
    -----
    With ``model.n_candidates = 3`` each initialisation first races three
    starts (its own seed and two derived ones) through the first epochs of
    the first transformation that changes shapes (two epochs and 300
    gradient steps at least), and trains only the one with the lowest
    objective on the training set to the end: runs part there into a
    lower- and a higher-loss group and keep that order.  It always lowered
    the final loss, but the accuracy only at 28 x 28: on MNIST-test 97.4 +-
    0.1 ACC against 97.0 +- 0.3 (five seeds), on MNIST resized to 16 x 16
    96.6 and 95.9 against 96.9 and 96.8 (two seeds), so it is off by default
    (docs/benchmarks.md).

    Besides the paper's recipe (curriculum, learning-rate drop, restart of
    nearly empty clusters), training makes split-and-merge moves: at the end
    of an epoch (at most once every 150 gradient steps, and not during the
    learning-rate drop), the cluster that would lower the objective most if
    split in two replaces the one whose removal costs least, whenever the
    split gains more than the removal costs.
    This repairs runs in which one cluster holds two kinds of images while
    two others share one kind (MNIST-test, five seeds: 92.1 +- 4.8 ACC
    without the moves, 96.1 +- 0.2 with them; see docs/benchmarks.md).
    Once strong warps are on, they bend one prototype over two kinds of
    images and that estimate no longer sees the mixture, so once per fit,
    two epochs after the last transformation is switched on, a move is
    *tried*: the rest of the schedule is trained twice, without a move and
    with the largest cluster split into the slot of the one cheapest to
    remove, and the branch with the lower final objective is kept.  With
    the default schedule that trains about 60% more epochs (a MNIST-test
    fit on two cores: 225 s instead of 173 s); ``model.try_moves = False``
    skips it.

    See Also
    --------
    DTIGaussianMixture : The probabilistic counterpart.
    sklearn.cluster.KMeans : K-means on raw pixels.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from dti_sklearn import DTIKMeans
    >>> X = load_digits().images[:200] / 16
    >>> model = DTIKMeans(n_clusters=10, transforms=["aff"], max_iter=2,
    ...                   random_state=0).fit(X)
    >>> model.prototypes_.shape
    (10, 8, 8)
    >>> model.transform(X[:3]).shape
    (3, 10)
    >>> bool((model.predict(X) == model.labels_).all())
    True
    """

    _parameter_constraints: dict = {
        **BaseDTI._parameter_constraints,
        "n_clusters": [BaseDTI._parameter_constraints["max_iter"][0]],
    }

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        transforms="auto",
        max_iter: int | str = "auto",
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        n_init: int = 1,
        init="k-means++",
        curriculum="auto",
        image_shape=None,
        device="auto",
        cuda_graphs: bool = True,
        random_state=None,
        verbose: int = 0,
    ) -> None:
        self.n_clusters = n_clusters
        self.transforms = transforms
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.n_init = n_init
        self.init = init
        self.curriculum = curriculum
        self.image_shape = image_shape
        self.device = device
        self.cuda_graphs = cuda_graphs
        self.random_state = random_state
        self.verbose = verbose

    @property
    def _n_clusters(self) -> int:
        return self.n_clusters

    def _transform_specs(self, images):
        if isinstance(self.transforms, str) and self.transforms == "auto":
            return auto_transforms(*images.shape[2:])
        return self.transforms

    def _batch_loss(self, network, x, active):
        # The loss only flows through each sample's nearest aligned prototype,
        # so all B x K pairs are aligned without gradient to find it, and only
        # those B pairs again with gradient: the same loss and gradient as
        # back-propagating through all pairs, for about a third of the work.
        batch = x.shape[0]
        params = network.predict_parameters(x, active)
        with torch.no_grad():
            means, _ = network.align([p.detach() for p in params], batch, active, images=x)
            assigned = _distances(x, means).argmin(dim=1)
        nearest, _ = network.align(
            params, batch, active, clusters=assigned.unsqueeze(1), images=x
        )
        return (x - nearest[:, 0]).pow(2).mean(), assigned

    def _costs(self, network, x, means, deviations):
        return _distances(x, means).double().pow(2)

    def _final_loss(self, costs: np.ndarray) -> float:
        return float(costs.min(axis=1).mean() / self.n_features_in_)

    def _cost_to_user_units(self, cost, n_values):
        # A squared distance scales with the square of the pixel values.
        return cost * self._intensity_scale.span**2

    def _set_fitted_attributes(self, network: PrototypeNetwork, costs: np.ndarray) -> None:
        self.labels_ = costs.argmin(axis=1)
        self.inertia_ = float(costs.min(axis=1).sum())
        self.prototypes_ = self._prototype_images()
        self.cluster_centers_ = self.prototypes_.reshape(self.n_clusters, -1)

    def transform(self, X):
        """Distance of every sample to every prototype aligned to it.

        Parameters
        ----------
        X : array-like of images, in the layout used for fit
            New samples.

        Returns
        -------
        distances : ndarray of shape (n_samples, n_clusters)
            Euclidean distances, float64.
        """
        return np.sqrt(self._costs_of(X))

    def score(self, X, y=None):
        """Minus the mean squared distance to the best aligned prototype.

        Parameters
        ----------
        X : array-like of images, in the layout used for fit
            New samples.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        score : float
            Higher is better.
        """
        return -float(self._costs_of(X).min(axis=1).mean())


def _distances(x: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """(B, K) Euclidean distances between samples and their aligned prototypes.

    ``vector_norm`` reduces in one pass without materialising the squares:
    2.5 times faster than ``(x - means).pow(2).sum()`` in float64 on a chunk
    of 128 MNIST images (relative difference 3e-7).
    """
    return torch.linalg.vector_norm((x.unsqueeze(1) - means).flatten(2), dim=2)


__all__ = ["DTIKMeans"]
