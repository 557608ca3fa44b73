"""Eager against CUDA-graph-replayed DTIKMeans training steps, for a machine with a GPU.

On a GPU the default training step of 28 x 28 images is bound by kernel
launches, not arithmetic: the host spends longer queueing its few hundred
small kernels than the device spends running them.  A CUDA graph records the
whole step (forward, backward and the fused Adam update) once and replays it
with one launch.  This script measures both on MNIST-test batches with every
transformation of DTIKMeans's default sequence on, outside ``fit``::

    python benchmarks/cuda_graph_probe.py --data ../shared/data/mnist --steps 300

It prints milliseconds per step, images per second and the capture time for
each batch size, and writes them to ``--json``.  ``--device cpu`` times the
eager steps only (a plumbing check; CPU steps are bound by arithmetic).
"""

from __future__ import annotations

import argparse
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
from dti_sklearn._torch.network import PrototypeNetwork  # noqa: E402

#: Batches drawn once and cycled through, so that no step waits for indexing.
_N_BATCHES = 16


def build(images: np.ndarray, batch_size: int, device: str, graphable: bool):
    """The estimator, network, optimizer and device data of a fit at its first step.

    ``graphable`` builds Adam with ``capturable=True`` and a tensor learning
    rate, as a captured step needs: the update then reads its step count and
    learning rate from device memory instead of the host.
    """
    est = DTIKMeans(10, random_state=0, batch_size=batch_size)
    nchw = torch.from_numpy(np.ascontiguousarray(images[:, None]))
    data = nchw.to(device)
    est.n_features_in_ = data[0].numel()
    est._resolve_auto_parameters(nchw.numpy())
    transformations = est._build_transformations(nchw.numpy())
    centres = data[torch.linspace(0, len(data) - 1, 10).long()].clone()
    network = PrototypeNetwork(centres, transformations, **est._network_kwargs(data, centres))
    network.to(device)
    optimizer = est._make_optimizer(network)
    if graphable:  # the same parameter groups, updated from device memory
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]}
                  for g in optimizer.param_groups]
        optimizer = torch.optim.Adam(
            groups, lr=torch.tensor(est.learning_rate, device=device), fused=True,
            capturable=True,
        )
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
    """Milliseconds per step when the whole step is replayed from one CUDA graph."""
    est, network, optimizer, data, active = build(images, batch_size, device, True)
    batches = _batches(data, batch_size)
    static_x = data[batches[0]].clone()
    # Warm-up on a side stream, as torch.cuda.graph's documentation asks.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(5):
            static_x.copy_(data[batches[i % _N_BATCHES]])
            est._train_step(network, optimizer, static_x, active)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with torch.cuda.graph(graph):
        static_loss, _ = est._batch_loss(network, static_x, active)
        static_loss.backward()
        optimizer.step()
    _synchronize(device)
    capture = time.perf_counter() - start
    for i in range(10):
        static_x.copy_(data[batches[i % _N_BATCHES]])
        graph.replay()
    _synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        static_x.copy_(data[batches[i % _N_BATCHES]])
        graph.replay()
    _synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    return {"ms_per_step": 1e3 * seconds, "images_per_s": batch_size / seconds,
            "final_batch_loss": float(static_loss.detach()), "capture_s": capture}


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
