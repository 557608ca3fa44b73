"""Training throughput of DTIKMeans through its public API.

Fits on random 28 x 28 images (or the first MNIST-test images, ``--data``)
with every transformation of the sequence on from the first epoch
(``curriculum`` all zeros), and prints images per second of ``fit`` (its final
assignment pass included); ``--profile`` adds torch.profiler's operator table::

    python benchmarks/throughput.py --n-samples 2560 --max-iter 3

The script uses only the public API, so it also times an older checkout of the
package: put that checkout first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dti_sklearn import DTIKMeans


def main(argv: list[str] | None = None) -> float:
    """Print and return images per second of training."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=2560)
    parser.add_argument("--max-iter", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--transforms", nargs="+", default=["affine", "thin_plate_spline",
                                                            "morphological"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", default=None,
                        help="folder of the MNIST idx files: fit the first --n-samples "
                             "test images (28 x 28, --size ignored) instead of random ones")
    parser.add_argument("--init", default="random", choices=["random", "k-means++"])
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's operators by self CPU time")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data is None:
        rng = np.random.default_rng(0)
        X = rng.random((args.n_samples, args.size, args.size), dtype=np.float32)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_mnist import load_dataset

        X, _ = load_dataset("mnist", args.data, args.n_samples)
    model = DTIKMeans(
        n_clusters=10, transforms=args.transforms, max_iter=args.max_iter,
        batch_size=args.batch_size, curriculum=[0] * len(args.transforms), init=args.init,
        random_state=0, device="cpu",
    )
    # One start: the race between starts would train epochs that the rate
    # below does not count.
    model.n_candidates = 1
    profiler = (
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        if args.profile else contextlib.nullcontext()
    )
    with profiler:
        start = time.perf_counter()
        model.fit(X)
        seconds = time.perf_counter() - start
    rate = args.n_samples * args.max_iter / seconds
    print(f"{rate:.0f} images/s ({seconds:.1f} s for {args.max_iter} epochs of "
          f"{args.n_samples} images, threads={torch.get_num_threads()})")
    if args.profile:
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return rate


if __name__ == "__main__":
    main()
