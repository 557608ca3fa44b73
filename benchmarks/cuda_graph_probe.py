"""Eager against CUDA-graph-replayed DTIKMeans training steps, for a machine with a GPU.

On a GPU the default training step of 28 x 28 images is bound by kernel
launches, not arithmetic: the host spends longer queueing its few hundred
small kernels than the device spends running them.  A CUDA graph records the
whole step (forward, backward and the fused Adam update) once and replays it
with one launch.  This script measures both on MNIST-test batches with every
transformation of DTIKMeans's default sequence on, outside ``fit``, the replayed
steps through the package's ``GraphedSteps`` as ``fit`` runs them::

    python benchmarks/cuda_graph_probe.py --data ../shared/data/mnist --steps 300

It prints milliseconds per step, images per second and the capture time (the
recording and its first replay) for each batch size, and writes them to
``--json``.  ``--device cpu`` times the eager steps only (a plumbing check; CPU
steps are bound by arithmetic).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_mnist import load_dataset  # noqa: E402

from dti_sklearn import DTIKMeans  # noqa: E402
from dti_sklearn._torch.cuda_graphs import GraphedSteps  # noqa: E402
from dti_sklearn._torch.network import PrototypeNetwork  # noqa: E402

#: Batches drawn once and cycled through, so that no step waits for indexing.
_N_BATCHES = 16


def build(images: np.ndarray, batch_size: int, device: str, graphable: bool):
    """The estimator, network, optimizer and device data of a fit at its first step.

    ``graphable`` is the estimator's ``cuda_graphs``: on CUDA its optimizer
    is then built as ``fit`` builds it for replayed steps (Adam with
    ``capturable=True`` and a learning rate in device memory).
    """
    est = DTIKMeans(10, random_state=0, batch_size=batch_size, cuda_graphs=graphable)
    nchw = torch.from_numpy(np.ascontiguousarray(images[:, None]))
    data = nchw.to(device)
    est.n_features_in_ = data[0].numel()
    est._resolve_auto_parameters(nchw.numpy())
    transformations = est._build_transformations(nchw.numpy())
    centres = data[torch.linspace(0, len(data) - 1, 10).long()].clone()
    network = PrototypeNetwork(centres, transformations, **est._network_kwargs(data, centres))
    network.to(device)
    optimizer = est._make_optimizer(network)
    return est, network, optimizer, data, list(range(len(transformations)))


def _batches(data: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [
        torch.randint(0, len(data), (batch_size,), generator=gen).to(data.device)
        for _ in range(_N_BATCHES)
    ]


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_eager(images: np.ndarray, batch_size: int, steps: int, device: str) -> dict:
    """Milliseconds per step of ``BaseDTI._train_step`` as ``fit`` runs it."""
    est, network, optimizer, data, active = build(images, batch_size, device, False)
    batches = _batches(data, batch_size)
    for i in range(10):  # warm-up: allocator, kernels' first launches, Adam state
        est._train_step(network, optimizer, data[batches[i % _N_BATCHES]], active)
    _synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        loss, _ = est._train_step(network, optimizer, data[batches[i % _N_BATCHES]], active)
    _synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    return {"ms_per_step": 1e3 * seconds, "images_per_s": batch_size / seconds,
            "final_batch_loss": float(loss)}


def time_graphed(images: np.ndarray, batch_size: int, steps: int, device: str) -> dict:
    """Milliseconds per step replayed by ``GraphedSteps``, as ``fit`` replays them."""
    est, network, optimizer, data, active = build(images, batch_size, device, True)
    batches = _batches(data, batch_size)
    graphed = GraphedSteps(functools.partial(est._train_step, network, optimizer), warmup=5)
    for i in range(5):  # eager warm-up steps on the side stream
        graphed(data[batches[i]], active)
    _synchronize(device)
    start = time.perf_counter()
    graphed(data[batches[5]], active)  # recorded, then replayed once
    _synchronize(device)
    capture = time.perf_counter() - start
    for i in range(6, 16):
        graphed(data[batches[i % _N_BATCHES]], active)
    _synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        loss, _ = graphed(data[batches[i % _N_BATCHES]], active)
    _synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    return {"ms_per_step": 1e3 * seconds, "images_per_s": batch_size / seconds,
            "final_batch_loss": float(loss), "capture_s": capture}


def main(argv: list[str] | None = None) -> dict:
    """Time eager and graph-replayed steps for each batch size; print and return them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder of the MNIST test idx files")
    parser.add_argument("--n-samples", type=int, default=10000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("cuda_graph_probe.py needs a CUDA device (or --device cpu).")
    images, _ = load_dataset("mnist", args.data, args.n_samples)
    report: dict = {"device": torch.cuda.get_device_name(0) if cuda else args.device,
                    "torch": torch.__version__}
    for batch_size in args.batch_sizes:
        modes = {"eager": time_eager}
        if cuda:
            modes["graph"] = time_graphed
        for mode, timer in modes.items():
            result = timer(images, batch_size, args.steps, args.device)
            report[f"{mode}_{batch_size}"] = result
            print(f"batch {batch_size:4d} {mode:6s} {result['ms_per_step']:7.2f} ms/step "
                  f"{result['images_per_s']:9.0f} img/s"
                  + (f"  capture {result['capture_s']:.3f} s" if "capture_s" in result else ""),
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
