"""Time and profile DTI training steps on MNIST-sized images.

Measures training throughput (images per second) of one estimator
configuration on random 28 x 28 images with every transformation switched on,
and optionally prints the top operators of ``torch.profiler``::

    python benchmarks/profile_step.py --batch-size 64 --steps 30 --profile

``--compile loss`` times the step with the loss computation compiled by
:func:`torch.compile` (``--compile encoder``: the encoder alone), and
``--channels-last`` with the encoder in the channels-last memory format; the
time of the first, compiling step is printed apart.  Neither is what ``fit``
does: they measure alternatives (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time

import torch

from dti_sklearn import DTIGaussianMixture, DTIKMeans
from dti_sklearn._malloc import tune_malloc
from dti_sklearn._torch.network import PrototypeNetwork


def main(argv: list[str] | None = None) -> float:
    """Print images per second of training steps; return it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["kmeans", "gmm"], default="kmeans")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--n-clusters", type=int, default=10)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--transforms", nargs="*", default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--compile", choices=["loss", "encoder"], default=None)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    tune_malloc()  # as fit does (DTI_SKLEARN_TUNE_MALLOC=0 leaves the allocator alone)
    cls = DTIKMeans if args.model == "kmeans" else DTIGaussianMixture
    estimator = cls(args.n_clusters, random_state=0)
    if args.transforms is not None:
        estimator.set_params(transforms=args.transforms)
    if args.batch_size:
        estimator.set_params(batch_size=args.batch_size)
    batch = estimator.batch_size
    shape = (args.channels, args.size, args.size)
    gen = torch.Generator().manual_seed(0)
    data = torch.rand(batch * 8, *shape, generator=gen)
    centres = data[: args.n_clusters].clone()
    estimator.n_features_in_ = data[0].numel()
    estimator._resolve_auto_parameters(data.numpy())  # as fit does (the mixture's var_min)
    transformations = estimator._build_transformations(data.numpy())
    network = PrototypeNetwork(
        centres, transformations, **estimator._network_kwargs(data, centres)
    )
    optimizer = estimator._make_optimizer(network)
    active = list(range(len(transformations)))
    if args.channels_last:
        _encode_channels_last(network)
    if args.compile == "encoder":
        network.encoder = torch.compile(network.encoder)

    def batch_loss(x: torch.Tensor) -> torch.Tensor:
        return estimator._batch_loss(network, x, active)[0]

    if args.compile == "loss":
        batch_loss = torch.compile(batch_loss)

    def step(i: int) -> None:
        x = data[(i % 8) * batch:(i % 8 + 1) * batch]
        loss = batch_loss(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    first = time.perf_counter()
    step(0)
    first = time.perf_counter() - first
    for i in range(1, 5):
        step(i)
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(args.steps):
        step(i)
    seconds = time.perf_counter() - start
    cpu_ms = 1000 * (time.process_time() - cpu_start) / args.steps
    rate = args.steps * batch / seconds
    print(
        f"{args.model} K={args.n_clusters} {shape} batch={batch} "
        f"transforms={[type(t).__name__ for t in transformations]} "
        f"threads={torch.get_num_threads()} compile={args.compile} "
        f"channels_last={args.channels_last}: {1000 * seconds / args.steps:.1f} ms/step, "
        f"{rate:.0f} images/s ({cpu_ms:.1f} ms of CPU time per step; first step "
        f"{first:.2f} s)"
    )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(10):
                step(i)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return rate


def _encode_channels_last(network: PrototypeNetwork) -> None:
    """Make the network's encoder read and keep channels-last tensors."""
    encoder = network.encoder.to(memory_format=torch.channels_last)
    forward = encoder.forward
    encoder.forward = lambda images: forward(
        images.contiguous(memory_format=torch.channels_last)
    )


if __name__ == "__main__":
    main()
