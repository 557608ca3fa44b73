"""Training steps replayed from CUDA graphs (``dti_sklearn._torch.cuda_graphs``).

The first tests run anywhere: the learning-rate plumbing and the CPU path,
which must not change.  The others need a CUDA device and are skipped
without one (CI has none).
"""

from __future__ import annotations

import copy
import gc

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from dti_sklearn import DTIGaussianMixture, DTIKMeans, _training
from dti_sklearn._torch.cuda_graphs import (
    GraphedSteps,
    graphs_available,
    set_learning_rate,
)
from dti_sklearn.metrics import cluster_accuracy

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DIGITS = load_digits()
X = (DIGITS.images / 16).astype(np.float32)


def test_set_learning_rate_fills_a_tensor_in_place_and_assigns_a_float():
    weight = torch.nn.Parameter(torch.zeros(3))
    tensor_lr = torch.tensor(0.1)
    with_tensor = torch.optim.Adam([weight], lr=tensor_lr)
    with_float = torch.optim.Adam([weight], lr=0.1)
    set_learning_rate(with_tensor, 0.025)
    set_learning_rate(with_float, 0.025)
    assert with_tensor.param_groups[0]["lr"] is tensor_lr  # the same tensor, a graph reads it
    assert tensor_lr.item() == pytest.approx(0.025)
    assert with_float.param_groups[0]["lr"] == 0.025


def test_set_learning_rate_of_one_group_leaves_the_others():
    first, second = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.Adam([
        {"params": [first], "lr": torch.tensor(0.1)},
        {"params": [second], "lr": torch.tensor(0.1)},
    ])
    set_learning_rate(optimizer, 0.025, 0)
    assert optimizer.param_groups[0]["lr"].item() == pytest.approx(0.025)
    assert optimizer.param_groups[1]["lr"].item() == pytest.approx(0.1)


def test_graphable_optimizer_gives_each_group_its_own_rate_tensor(monkeypatch):
    # Off CUDA the tensor rate is what a graphed fit would get; one shared
    # tensor would let the predictor's warm-up slow the prototypes down too.
    model = DTIKMeans(3, max_iter=1, batch_size=32, curriculum=[0, 0, 0], random_state=0)
    model.fit(X[:96])
    monkeypatch.setattr(_training, "graphs_available", lambda device: True)
    optimizer = model._make_optimizer(model.network_)
    rates = [group["lr"] for group in optimizer.param_groups]
    assert all(isinstance(rate, torch.Tensor) for rate in rates)
    assert rates[0] is not rates[1]
    set_learning_rate(optimizer, 0.0, _training._PREDICTOR_GROUP)
    assert rates[1].item() == pytest.approx(model.learning_rate)


def test_graphs_are_the_default_of_dtikmeans_only():
    assert DTIKMeans().get_params()["cuda_graphs"]
    assert not DTIGaussianMixture().get_params()["cuda_graphs"]


def test_cuda_graphs_must_be_a_boolean():
    with pytest.raises(ValueError, match="cuda_graphs"):
        DTIKMeans(3, cuda_graphs="yes", max_iter=1).fit(X[:32])


def test_no_graphs_off_cuda():
    assert not graphs_available(torch.device("cpu"))
    model = DTIKMeans(3, max_iter=1, batch_size=32, curriculum=[0, 0, 0],
                      random_state=0).fit(X[:96])
    optimizer = model._make_optimizer(model.network_)
    group = optimizer.param_groups[0]
    assert not group["capturable"] and not isinstance(group["lr"], torch.Tensor)


def test_a_step_that_cannot_be_recorded_says_what_to_do(monkeypatch):
    class Recorder:  # stands in for torch.cuda.graph on machines without CUDA
        def __init__(self, graph):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def step_reading_back(x, active):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", object)
    monkeypatch.setattr(torch.cuda, "graph", Recorder)
    steps = GraphedSteps(step_reading_back, warmup=0)
    with pytest.raises(RuntimeError, match="cuda_graphs=False") as info:
        steps(torch.zeros(4, 1, 8, 8), [0])
    assert "not permitted when stream is capturing" in str(info.value.__cause__)
    assert steps.n_recorded == 0


# ------------------------------------------------------------------ CUDA
def _cuda_model(cls=DTIKMeans, **kwargs):
    params = dict(max_iter=1, batch_size=32, curriculum=[0, 0, 0], device="cuda",
                  random_state=0)
    params.update(kwargs)
    return cls(4, **params).fit(X[:256])


def _network_and_optimizer(model):
    network = copy.deepcopy(model.network_).train()
    return network, model._make_optimizer(network)


def _graphed_steps(warmup: int = 1):
    """A fitted DTIKMeans's network in training, its optimizer, GraphedSteps and data."""
    model = _cuda_model()
    network, optimizer = _network_and_optimizer(model)
    steps = GraphedSteps(lambda x, a: model._train_step(network, optimizer, x, a), warmup)
    data = torch.from_numpy(X[:256, None]).to("cuda")
    return network, optimizer, steps, data, list(range(len(network.transformations)))


@needs_cuda
@pytest.mark.parametrize("cls", [DTIKMeans, DTIGaussianMixture], ids=["kmeans", "mixture"])
def test_replayed_steps_train_as_eager_steps_do(cls):
    model = _cuda_model(cls, cuda_graphs=True)  # the mixture's default is eager steps
    data = torch.from_numpy(X[:256, None]).to("cuda")
    active = list(range(len(model.network_.transformations)))
    eager_net, eager_opt = _network_and_optimizer(model)
    graph_net, graph_opt = _network_and_optimizer(model)
    assert graph_opt.param_groups[0]["capturable"]
    steps = GraphedSteps(lambda x, a: model._train_step(graph_net, graph_opt, x, a), warmup=2)
    eager_losses, graph_losses = [], []
    for start in range(0, 256, 32):
        x = data[start:start + 32]
        eager_losses.append(model._train_step(eager_net, eager_opt, x, active)[0])
        graph_losses.append(steps(x, active)[0])
    assert (steps.n_recorded, steps.n_replayed) == (1, 6)
    torch.testing.assert_close(torch.stack(graph_losses), torch.stack(eager_losses),
                               rtol=1e-3, atol=1e-6)
    # Backward on CUDA adds atomically, so the two runs differ in the last
    # bits; they must differ by far less than the training moved them.
    start = torch.cat([p.detach().flatten() for p in model.network_.parameters()])
    graphed = torch.cat([p.detach().flatten() for p in graph_net.parameters()])
    eager = torch.cat([p.detach().flatten() for p in eager_net.parameters()])
    assert (eager - start).norm() > 0  # it trained
    assert (graphed - eager).norm() < 0.05 * (eager - start).norm()


@needs_cuda
def test_replays_read_the_learning_rate_and_never_wait_for_the_device():
    network, optimizer, steps, data, active = _graphed_steps()
    steps(data[:32], active)
    steps(data[32:64], active)  # recorded and replayed
    set_learning_rate(optimizer, 0.0)
    before = [p.detach().clone() for p in network.parameters()]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for start in (64, 96, 128):
            loss, assigned = steps(data[start:start + 32], active)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert steps.n_replayed == 4
    for param, old in zip(network.parameters(), before):
        torch.testing.assert_close(param, old, rtol=0, atol=0)  # a learning rate of 0
    assert torch.isfinite(loss).item() and assigned.shape == (32,)


@needs_cuda
def test_replays_read_each_groups_own_learning_rate():
    network, optimizer, steps, data, active = _graphed_steps()
    steps(data[:32], active)
    steps(data[32:64], active)  # recorded and replayed
    set_learning_rate(optimizer, 0.0, _training._PREDICTOR_GROUP)  # as at a warm-up's start
    predictor = [p.detach().clone() for p in optimizer.param_groups[0]["params"]]
    prototypes = network.prototypes.detach().clone()
    for start in (64, 96):
        steps(data[start:start + 32], active)
    for param, old in zip(optimizer.param_groups[0]["params"], predictor):
        torch.testing.assert_close(param, old, rtol=0, atol=0)
    assert not torch.equal(network.prototypes.detach(), prototypes)


def _spy_on_graphs(monkeypatch) -> list[GraphedSteps]:
    """Collect the GraphedSteps that fits make; each lists the keys it recorded."""
    made = []

    class Spy(GraphedSteps):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.recorded_keys = []
            made.append(self)

        def _record(self, x, active):
            self.recorded_keys.append((tuple(active), x.shape[0]))
            return super()._record(x, active)

    monkeypatch.setattr(_training, "GraphedSteps", Spy)
    return made


@needs_cuda
def test_a_restored_snapshot_drops_the_graphs_and_trains_as_before():
    network, optimizer, steps, data, active = _graphed_steps()
    state = _training._TrainState(torch.zeros(4, device="cuda"), graphs=steps)
    generator = torch.Generator().manual_seed(0)
    for start in (0, 32):
        steps(data[start:start + 32], active)
    snapshot = _training._Snapshot.take(network, optimizer, generator, state)
    first = [steps(data[start:start + 32], active)[0] for start in (64, 96, 128)]
    assert (steps.n_recorded, steps.n_replayed) == (1, 4)
    snapshot.restore(network, optimizer, generator, state)
    # Replays of the old graph would update the replaced Adam moments.
    again = [steps(data[start:start + 32], active)[0] for start in (64, 96, 128)]
    assert (steps.n_recorded, steps.n_replayed) == (2, 6)
    torch.testing.assert_close(torch.stack(again), torch.stack(first), rtol=1e-3, atol=1e-6)


@needs_cuda
def test_graphed_fit_matches_an_eager_fit(monkeypatch):
    made = _spy_on_graphs(monkeypatch)
    params = dict(max_iter=60, device="cuda", random_state=0)
    graphed = DTIKMeans(10, **params).fit(X)
    assert len(made) == 1 and made[0].n_replayed > 1000
    every_transformation = tuple(range(len(graphed.network_.transformations)))
    assert (every_transformation, 64) in made[0].recorded_keys
    eager = DTIKMeans(10, cuda_graphs=False, **params).fit(X)
    assert len(made) == 1
    # CUDA fits are not bit-reproducible (atomic additions in backward), so
    # compare what a user sees: the objective and the clusters.
    # (On the CPU: 94.7 ACC, inertia 644.)
    assert graphed.inertia_ == pytest.approx(eager.inertia_, rel=0.15)
    for model in (graphed, eager):
        assert cluster_accuracy(DIGITS.target, model.labels_) > 0.85
        assert np.isfinite(model.prototypes_).all()
        assert all(p.grad is None for p in model.network_.parameters())


@needs_cuda
@pytest.mark.parametrize("cls", [DTIKMeans, DTIGaussianMixture], ids=["kmeans", "mixture"])
def test_graphed_race_and_mixture_fit_and_predict(cls, monkeypatch):
    made = _spy_on_graphs(monkeypatch)
    model_cls = type("Racing", (cls,), {"n_candidates": 2, "race_steps": 20})
    model = model_cls(4, max_iter=8, batch_size=32, device="cuda", cuda_graphs=True,
                      random_state=0).fit(X[:512])
    assert len(made) == 2 and all(steps.n_replayed > 0 for steps in made)
    assert np.isfinite(model.prototypes_).all()
    np.testing.assert_array_equal(model.predict(X[:512]), model.labels_)


@needs_cuda
def test_consecutive_graphed_fits_hold_no_more_memory():
    # One warm-up stream per device, not per fit: cuBLAS keeps a workspace
    # for every stream it has run on until the process ends.
    def memory_after_a_fit() -> int:
        DTIKMeans(4, max_iter=3, batch_size=32, device="cuda", random_state=0).fit(X[:256])
        gc.collect()
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()

    first = memory_after_a_fit()
    memory_after_a_fit()
    assert memory_after_a_fit() <= first + 2**20
