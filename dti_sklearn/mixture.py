"""DTI Gaussian mixture: a diagonal GMM whose components align to each sample."""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
import torch
from scipy.special import logsumexp, softmax
from sklearn.utils._param_validation import Interval, StrOptions

from dti_sklearn._base import DEFAULT_TRANSFORMS, BaseDTI
from dti_sklearn._torch.network import PrototypeNetwork

_LOG_2PI = math.log(2 * math.pi)
#: ``var_min="auto"`` is the number of values per image divided by this: the
#: paper's floor (``0.25**2``) at 14 x 14 grey images, ``0.25`` at 28 x 28,
#: ``0.0204`` at 8 x 8.
AUTO_VAR_MIN_DIVISOR = 56**2


def _float64_log_weights(network: PrototypeNetwork) -> torch.Tensor:
    """(K,) log mixing weights in float64, as the costs add them."""
    return torch.log_softmax(network.mixing_logits.double(), dim=0)


class DTIGaussianMixture(BaseDTI):
    """Deep Transformation-Invariant Gaussian mixture.

    Each component has a mean image, a per-pixel standard-deviation image and
    a mixing weight.  For every sample a neural network predicts the
    transformations that align each component to it; spatial ones (affine,
    projective, thin-plate spline) warp the mean and the deviation image
    alike, the solved colour scales the deviations by its absolute gain, and
    the predicted colour and the morphological transformation change the
    mean only.  Training
    minimises the expected complete-data negative log-likelihood with
    responsibilities computed from the current parameters and not
    back-propagated through: an EM step written as a gradient step
    (Monnier et al., NeurIPS 2020).

    Parameters
    ----------
    n_components : int, default=1
        Number of mixture components.
    transforms : sequence of str or Transformation, or None
        Default ``("affine", "thin_plate_spline", "morphological")``.
        The transformations applied to a component, in order (see
        :class:`DTIKMeans`).
    max_iter : int or "auto", default="auto"
        Number of epochs; ``"auto"`` aims for 9,000 gradient steps, within 20
        to 200 epochs: 58 epochs for 10,000 images at batch size 64.
    batch_size : int, default=64
        Samples per gradient step.
    learning_rate : float, default=1e-3
        Adam's learning rate; a tenth of it for the last 10% of the epochs.
    n_init : int, default=1
        Independent runs; the one with the lowest final loss (highest
        likelihood) is kept.  A run whose training diverges is dropped with
        a ``RuntimeWarning``; only all of them diverging (or the only one)
        raises ``FloatingPointError``.
    init : {"random", "k-means++", "k-means"} or array-like, default="k-means++"
        Initial means (see :class:`DTIKMeans`).
    curriculum : "auto" or sequence of int, default="auto"
        When each transformation is switched on (see :class:`DTIKMeans`).
    image_shape : tuple of int, default=None
        How to read 2-D input (see :class:`DTIKMeans`).
    var_min : float or "auto", default="auto"
        Variance floor added to every squared deviation, which keeps the
        likelihood bounded, in the units of ``X`` squared.  ``"auto"`` sets
        it on the images mapped onto ``[0, 1]`` (see ``data_range_``), in
        proportion to the number of values per image ``D = C * H * W``:
        ``D / 56**2``, the paper's ``0.25**2`` for 14 x 14 grey images, 0.25
        for 28 x 28, 1.31 for 64 x 64 and 0.0204 for 8 x 8.  A sample's
        squared error against a component is a sum over ``D`` values, and a
        floor proportional to ``D`` keeps the log-densities, and how sharply
        they separate the components, on the same scale whatever the image
        size.  Measured (``docs/benchmarks.md``): on MNIST-test at 28 x 28 the
        fixed ``0.0625`` left two runs of five with two digits in one
        component and ``0.25`` none; on the 8 x 8 ``load_digits`` (ten
        seeds, one machine) this rule gave 94.2 ACC against 91.2 for the
        paper's ``0.0625``, which an earlier version kept below 196 values.
        On digits this floor dominates: the learned squared deviations add
        a median 6e-5 to it on MNIST-test (0.25) and at 16 x 16 (0.0816),
        so the components are close to isotropic and ``variances_`` nearly
        constant; a smaller floor lets them carry each pixel's spread.
    init_std : float, default=0.1
        Initial per-pixel standard deviation (before the floor), as a
        fraction of ``data_range_``.
    mixing_weights : {"equal", "learned"}, default="equal"
        ``"equal"`` holds every mixing weight at ``1 / n_components`` (a
        mixture of equal proportions, as mclust's ``equalPro``);
        ``"learned"`` fits them with the means.  Learned weights reward a
        component for being large whatever its fit: an image that two
        components fit about equally goes to the larger one, which grows
        further, and during training a component can come to hold two kinds
        of images while another kind is split in two.  On MNIST resized to
        16 x 16 (ten seeds, one machine) ``"learned"`` left three runs with
        two digits in one component, 91.7 +- 4.6 ACC, and ``"equal"`` none,
        94.2 +- 1.1 (``docs/benchmarks.md``).  Choose ``"learned"`` where
        the clusters' sizes differ widely.
    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU.
    cuda_graphs : bool, default=False
        On CUDA, record the training step once as a CUDA graph and replay it,
        as :class:`DTIKMeans` does by default (about six times faster).  Off
        by default for the mixture: on MNIST-test seed 1 merged two digits
        in a graph-replayed fit and in no eager one, cause not yet found
        (docs/benchmarks.md).  Ignored on other devices.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation, the network and the batch order.
    verbose : int, default=0
        Show a progress bar over epochs with the current loss.

    Attributes
    ----------
    means_ : ndarray of shape (n_components, n_features)
        Component means as flattened rows (channels last).
    prototypes_ : ndarray of shape (n_components, *image_shape)
        Component means as images.
    variances_ : ndarray of shape (n_components, *image_shape)
        Diagonal covariances (squared deviation plus ``var_min_``) as images.
    var_min_ : float
        The variance floor used, ``var_min`` resolved, in the units of ``X``
        squared.
    weights_ : ndarray of shape (n_components,)
        Mixing weights; all ``1 / n_components`` with
        ``mixing_weights="equal"``.
    labels_ : ndarray of shape (n_samples,)
        Most responsible component of every training sample.
    lower_bound_ : float
        Mean log-likelihood of the training data under the fitted model.
    converged_ : bool
        Whether the last epoch changed the training loss by less than 0.1%
        of its value.
    n_iter_ : int
        Number of epochs run.
    n_images_trained_ : int
        Images passed through gradient steps, over every run (``n_init``),
        start and branch of the tried move: ``n_iter_`` epochs of the
        training set at the least.  Divided by the time of ``fit``, the
        training throughput.
    loss_curve_ : list of float
        Training loss of every epoch: the expected negative log-likelihood
        per sample divided by the number of values per image.
    data_min_ : float
        Smallest value of the training images (``uint8`` ones in ``[0, 1]``).
    data_range_ : float
        Their largest value minus ``data_min_`` (1 for constant images).  The
        network sees ``(X - data_min_) / data_range_``; means, variances and
        log-densities are reported in the units of ``X``.
    transforms_ : list of Transformation
        The resolved transformation objects.
    n_features_in_ : int
        Values per image, ``H * W * C``.
    image_shape_ : tuple of int
        Shape of one image as given.
    device_ : torch.device
        Where the network lives.
    network_ : torch.nn.Module
        The fitted components, encoder and heads.

    Notes
    -----
    Training makes the split-and-merge moves described in
    :class:`DTIKMeans`, judged on this model's costs (minus log-likelihoods);
    with learned weights the split component's weight is shared by its two
    halves.  The tried move's two branches (and the race's starts) are
    compared on their likelihood with the mixing weights set equal (with
    ``mixing_weights="equal"`` simply their likelihood): the weights' share
    of the likelihood rewards unequal sizes whatever the fit, so a run that
    holds two kinds of images in one component would otherwise gain from
    that alone.  The race between starts described there is off by default
    here too.

    The default transformations hold no colour transformation, so on
    images whose colours vary at random (MNIST-color) the mixture clusters
    by colour (13.1 % ACC on 2,000 images); put
    :class:`~dti_sklearn.preprocessing.ImageStandardizer` in front of it
    there (93.4 %; on the 10,000 images 96.6 +- 0.2 with learned weights,
    96.1 on one seed with the default equal ones, ``docs/user_guide.md``).

    See Also
    --------
    DTIKMeans : The hard-assignment counterpart.
    sklearn.mixture.GaussianMixture : A Gaussian mixture on raw pixels.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from dti_sklearn import DTIGaussianMixture
    >>> X = load_digits().images[:200] / 16
    >>> gmm = DTIGaussianMixture(n_components=10, transforms=["aff"], max_iter=2,
    ...                          random_state=0).fit(X)
    >>> gmm.predict_proba(X[:3]).shape
    (3, 10)
    >>> bool(abs(gmm.predict_proba(X[:3]).sum(axis=1) - 1).max() < 1e-6)
    True
    """

    _parameter_constraints: dict = {
        **BaseDTI._parameter_constraints,
        "n_components": [BaseDTI._parameter_constraints["max_iter"][0]],
        "var_min": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "init_std": [Interval(Real, 0, None, closed="neither")],
        "mixing_weights": [StrOptions({"equal", "learned"})],
    }

    def __init__(
        self,
        n_components: int = 1,
        *,
        transforms=DEFAULT_TRANSFORMS,
        max_iter: int | str = "auto",
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        n_init: int = 1,
        init="k-means++",
        curriculum="auto",
        image_shape=None,
        var_min: float | str = "auto",
        init_std: float = 0.1,
        mixing_weights: str = "equal",
        device="auto",
        cuda_graphs: bool = False,
        random_state=None,
        verbose: int = 0,
    ) -> None:
        self.n_components = n_components
        self.transforms = transforms
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.n_init = n_init
        self.init = init
        self.curriculum = curriculum
        self.image_shape = image_shape
        self.var_min = var_min
        self.init_std = init_std
        self.mixing_weights = mixing_weights
        self.device = device
        self.cuda_graphs = cuda_graphs
        self.random_state = random_state
        self.verbose = verbose

    #: Components per sample whose densities are back-propagated through.
    gradient_components = 2
    #: One epoch of learning-rate warm-up for the encoder and heads once the
    #: first predicted transformation switches on (``TrainingLoop``'s
    #: ``warmup_epochs``, off for DTIKMeans).  Over five seeds it raised the
    #: likelihood of every MNIST-test fit and repaired the one that put two
    #: digits in one component: 93.6 -> 96.4 ACC on MNIST-test, 90.7 -> 94.0
    #: on ``load_digits``, 92.2 -> 94.6 on MNIST resized to 16 x 16
    #: (docs/benchmarks.md).
    warmup_epochs = 1
    #: Every split of a mixture starts along the principal direction
    #: (``TrainingLoop``'s ``split_seeding``, "farthest" for DTIKMeans): a
    #: component's outlying members cannot make a half of their own.  On one
    #: machine: MNIST-test 90.9 +- 6.6 -> 96.3 +- 0.3 ACC from a clean
    #: checkout (five seeds, two had merged the 4s and the 9s); MNIST at
    #: 16 x 16 90.4 -> 94.5 on seeds 0-4, but seeds 5-9 then gave 86.4 (no run
    #: merged there once the weights were held equal, ``mixing_weights``);
    #: ``load_digits`` (8 x 8) 92.2 -> 90.7 (docs/benchmarks.md).
    split_seeding = "principal"
    # ``max_iter="auto"`` aims for DTIKMeans's 9,000 gradient steps since the
    # tried move (``TrainingLoop._try_move``): on MNIST-test, 95.9 +- 0.4 ACC with
    # 3,000 steps, 93.6 +- 5.1 with 9,000 before that move (seed 1 put two
    # digits in one component), 96.1 +- 0.3 with 9,000 and the move, 96.2 +- 0.3
    # with its branches trained to the end of the schedule (docs/benchmarks.md).

    @property
    def _n_clusters(self) -> int:
        return self.n_components

    # ----------------------------------------------------------------- hooks
    def _resolve_auto_parameters(self, images):
        # ``images`` span [0, 1]; the "auto" floor is set on that scale, a
        # given floor is in the caller's units.
        user_variance = self._intensity_scale.span**2
        if self.var_min == "auto":
            floor = images[0].size / AUTO_VAR_MIN_DIVISOR
            self.var_min_ = floor * user_variance
        else:
            self.var_min_ = float(self.var_min)

    @property
    def _variance_floor(self) -> float:
        """The variance floor on the network's scale."""
        # Mixtures pickled before ``var_min_`` existed hold a float var_min.
        floor = getattr(self, "var_min_", self.var_min)
        return floor / self._intensity_scale.span**2

    def _network_kwargs(self, data, centres):
        log_std = torch.full_like(centres, math.log(self.init_std))
        return {
            "log_deviations": log_std,
            "mixing_logits": True,
            "learn_mixing_logits": self._learns_weights,
        }

    @property
    def _learns_weights(self) -> bool:
        """Whether training fits the mixing weights (``mixing_weights="learned"``)."""
        # Mixtures pickled before ``mixing_weights`` existed learned them.
        return getattr(self, "mixing_weights", "learned") == "learned"

    def _log_density(self, x, means, deviations, sum_dtype=None) -> torch.Tensor:
        """(B, R) ``log N(x | aligned mean, aligned variance)`` per component.

        The per-pixel terms are in the network's precision; ``sum_dtype``
        (e.g. float64 for the costs) is that of their sums over the pixels.
        """
        variances = deviations.pow(2) + self._variance_floor
        sq = (x.unsqueeze(1) - means).pow(2) / variances
        return -0.5 * (sq + variances.log() + _LOG_2PI).flatten(2).sum(2, dtype=sum_dtype)

    def _batch_loss(self, network, x, active):
        # All B x K pairs are aligned without gradient to get the
        # responsibilities and the exact loss; the densities are then
        # recomputed with gradient for the `gradient_components` most
        # responsible components of each sample only.  The others carry
        # responsibilities that are vanishingly small on images (a density
        # over hundreds of pixels is sharply peaked), so the gradient is the
        # EM gradient up to those terms, for a fraction of the work.
        batch, n_values = x.shape[0], float(x[0].numel())
        params = network.predict_parameters(x, active)
        log_weights = torch.log_softmax(network.mixing_logits, dim=0)
        with torch.no_grad():
            means, deviations = network.align([p.detach() for p in params], batch, active, images=x)
            log_joint = log_weights + self._log_density(x, means, deviations)
            responsibilities = torch.softmax(log_joint, dim=1)
            exact = -(responsibilities * log_joint).sum(1).mean() / n_values
        top = responsibilities.topk(min(self.gradient_components, means.shape[1]), dim=1)
        means, deviations = network.align(params, batch, active, clusters=top.indices, images=x)
        partial = -(
            (responsibilities * log_weights).sum(1)
            + (top.values * self._log_density(x, means, deviations)).sum(1)
        ).mean() / n_values
        loss = partial + (exact - partial).detach()  # exact value, truncated gradient
        return loss, top.indices[:, 0]

    def _costs(self, network, x, means, deviations):
        # Float64 sums of float32 terms: the costs of float64 terms to 3e-8
        # (relative), about 7 times faster on MNIST-sized chunks.
        log_weights = _float64_log_weights(network)
        return -(log_weights + self._log_density(x, means, deviations, torch.float64))

    def _final_loss(self, costs: np.ndarray) -> float:
        return float(-logsumexp(-costs, axis=1).mean() / self.n_features_in_)

    def _comparison_loss(self, costs: np.ndarray, network: PrototypeNetwork) -> float:
        # The final loss with the mixing weights set equal.  Their share of
        # the log-likelihood, the sum over samples of log(weight of the
        # sample's component), rewards unequal sizes whatever the fit: a run
        # that holds two kinds of images in one component and one kind in
        # two gains about log(2) per image of a kind from the weights alone.
        # On MNIST at 16 x 16 (seed 6) the tried move's branch that parted the
        # 4s from the 9s fitted the images better and lost on the likelihood
        # by 1e-4 per value, less than that term (docs/benchmarks.md).
        log_weights = _float64_log_weights(network).detach().cpu().numpy()
        equal = costs + log_weights + math.log(len(log_weights))
        return self._final_loss(equal)

    def _cost_to_user_units(self, cost, n_values):
        # A density over n_values pixels scales with 1 / span**n_values.
        return cost + n_values * math.log(self._intensity_scale.span)

    def _split_residuals(self, residuals, deviations):
        # The cost's quadratic term: ||(x - mean) / sqrt(2 variance)||^2.
        return residuals / (2 * (deviations.pow(2) + self._variance_floor)).sqrt()

    def _after_reassignment(self, network: PrototypeNetwork, small, largest) -> None:
        # The largest component's weight is shared with its copies.
        if not self._learns_weights:
            return
        share = math.log(1 + len(small))
        with torch.no_grad():
            network.mixing_logits[small] -= share
            network.mixing_logits[largest] -= share

    def _set_fitted_attributes(self, network: PrototypeNetwork, costs: np.ndarray) -> None:
        k = self.n_components
        self.labels_ = costs.argmin(axis=1)
        self.lower_bound_ = float(logsumexp(-costs, axis=1).mean())
        self.prototypes_ = self._prototype_images()
        self.means_ = self.prototypes_.reshape(k, -1)
        std = network.log_deviations.detach().cpu().double().exp().numpy()
        variances = (std**2 + self._variance_floor) * self._intensity_scale.span**2
        self.variances_ = self._layout.to_user(variances)
        logits = network.mixing_logits.detach().cpu().double().numpy()
        self.weights_ = softmax(logits)
        curve = self.loss_curve_
        self.converged_ = bool(
            len(curve) >= 2 and abs(curve[-1] - curve[-2]) <= 1e-3 * abs(curve[-2])
        )

    # -------------------------------------------------------------- public
    def predict_proba(self, X):
        """Responsibility of every component for every sample.

        Parameters
        ----------
        X : array-like of images, in the layout used for fit
            New samples.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_components)
            Rows sum to 1.
        """
        return softmax(-self._costs_of(X), axis=1)

    def score_samples(self, X):
        """Log of the mixture density of every sample.

        Every component is aligned to the sample before its density is
        evaluated; the mixture density sums over components in log space.

        Parameters
        ----------
        X : array-like of images, in the layout used for fit
            New samples.

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
        """
        return logsumexp(-self._costs_of(X), axis=1)

    def score(self, X, y=None):
        """Mean log-likelihood of the samples (higher is better).

        Parameters
        ----------
        X : array-like of images, in the layout used for fit
            New samples.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        log_likelihood : float
        """
        return float(self.score_samples(X).mean())

    def transform(self, X):
        """Negative log-likelihood of every sample under every aligned component.

        The mixture's analogue of a distance: the mixing weight is left out.

        Parameters
        ----------
        X : array-like of images, in the layout used for fit
            New samples.

        Returns
        -------
        nll : ndarray of shape (n_samples, n_components)
        """
        return self._costs_of(X) + np.log(self.weights_)

    def _n_parameters(self) -> int:
        """Number of free parameters counted by :meth:`bic` and :meth:`aic`."""
        network = self.network_
        per_image = 2 * self.n_components * self.n_features_in_
        used = network.predicted  # transformations that have parameters
        predictor = 0
        if used:
            heads = network.heads
            predictor = sum(p.numel() for p in network.encoder.parameters())
            predictor += sum(
                heads.hidden_weight[:, m].numel() + heads.hidden_bias[:, m].numel()
                + heads.out_weight[m].numel() + heads.out_bias[m].numel()
                for m in used
            )
        weights = self.n_components - 1 if self._learns_weights else 0
        return per_image + weights + predictor

    def bic(self, X):
        """Bayesian information criterion of the model on ``X`` (lower is better).

        Free parameters: the means and deviation images, ``n_components - 1``
        mixing weights (none when they are held equal), and every weight of
        the encoder and of the heads of the transformations that have
        parameters (none with the identity alone, which makes the count that
        of a diagonal Gaussian mixture).  The network's weights are fitted to
        the data like the images are, so they count; a longer transformation
        sequence adds heads and is penalised for it.  The count overstates the
        effective degrees of freedom of a neural network, so read the
        criterion as a comparison between sequences, not as an exact
        posterior approximation.

        Parameters
        ----------
        X : array-like of images
            Samples to evaluate on.

        Returns
        -------
        bic : float
        """
        log_likelihood = self.score_samples(X)
        n = len(log_likelihood)
        return -2 * log_likelihood.sum() + self._n_parameters() * math.log(n)

    def aic(self, X):
        """Akaike information criterion of the model on ``X`` (lower is better).

        Parameters are counted as in :meth:`bic`.

        Parameters
        ----------
        X : array-like of images
            Samples to evaluate on.

        Returns
        -------
        aic : float
        """
        return -2 * self.score_samples(X).sum() + 2 * self._n_parameters()


__all__ = ["DTIGaussianMixture"]
