"""CUDA figures of the DTI estimators on MNIST-test, for a machine with a GPU.

Three measurements, printed as tables and written to ``--json``:

1. **Host synchronisations per training step.** A short fit runs under
   ``torch.cuda.set_sync_debug_mode("warn")``; every operation that waits for
   the GPU (a ``.item()``, a copy to the host, a data-dependent output size)
   raises a warning, counted here by source line, against the number of
   gradient steps.
2. **Fits with the defaults**, the data resident on the GPU: ACC, NMI, fit and
   ``predict`` times, training images per second, peak GPU memory; with the
   encoder in float32 and under bfloat16 autocast
   (``PrototypeNetwork.encoder_autocast``), and with the training steps
   replayed from CUDA graphs (the default) or run eagerly
   (``--step-modes graphs eager``).
3. Nothing is downloaded: the MNIST test files are read from ``--data``.

Example::

    python benchmarks/cuda_check.py --data ../shared/data/mnist --seeds 0 1 \\
        --models dtikmeans dtigmm --json cuda.json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_mnist import load_dataset  # noqa: E402
from sklearn.metrics import normalized_mutual_info_score  # noqa: E402

from dti_sklearn import DTIGaussianMixture, DTIKMeans  # noqa: E402
from dti_sklearn._torch.network import PrototypeNetwork  # noqa: E402
from dti_sklearn.metrics import cluster_accuracy  # noqa: E402

MODELS = {"dtikmeans": DTIKMeans, "dtigmm": DTIGaussianMixture}
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


def count_synchronisations(X: np.ndarray, model: str, epochs: int = 2,
                           graphs: bool = True) -> dict:
    """Fit briefly under the sync debug mode; count synchronising calls by source line."""
    est = MODELS[model](10, max_iter=epochs, device="cuda", cuda_graphs=graphs, random_state=0)
    # Every transformation on from the first step, so that the count covers them all.
    n_transforms = len(est._build_transformations(X[:, None]))  # "auto" resolved as in fit
    est.set_params(curriculum=[0] * n_transforms)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            est.fit(X)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sites = collections.Counter(
        f"{Path(w.filename).name}:{w.lineno}" for w in caught
        if "synchroniz" in str(w.message)
    )
    steps = epochs * -(-X.shape[0] // est.batch_size)
    return {"model": model, "graphs": graphs, "steps": steps,
            "synchronisations": sum(sites.values()),
            "sites": dict(sites.most_common())}


def fit_once(X, y, model: str, seed: int, precision: str, graphs: bool = True) -> dict:
    """One fit with the defaults on the GPU; timings synchronised with the device."""
    torch.cuda.reset_peak_memory_stats()
    est = MODELS[model](10, device="cuda", cuda_graphs=graphs, random_state=seed)
    PrototypeNetwork.encoder_autocast = PRECISIONS[precision]
    try:
        torch.cuda.synchronize()
        start = time.perf_counter()
        est.fit(X)
        torch.cuda.synchronize()
        fit_time = time.perf_counter() - start
        start = time.perf_counter()
        labels = est.predict(X)
        predict_time = time.perf_counter() - start
    finally:
        PrototypeNetwork.encoder_autocast = None
    return {
        "model": model, "seed": seed, "precision": precision,
        "steps": "graphs" if graphs else "eager",
        "acc": cluster_accuracy(y, labels),
        "nmi": float(normalized_mutual_info_score(y, labels)),
        "fit_time_s": fit_time, "predict_time_s": predict_time,
        "images_per_s": X.shape[0] * int(np.max(est.n_iter_)) / fit_time,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
        "finite": bool(np.isfinite(est.prototypes_).all()),
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the three measurements and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS),
                        default=list(PRECISIONS))
    parser.add_argument("--step-modes", nargs="+", choices=["graphs", "eager"],
                        default=["graphs"])
    parser.add_argument("--json", default=None)
    parser.add_argument("--sync-only", action="store_true",
                        help="count the synchronisations and fit nothing else")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("cuda_check.py needs a CUDA device.")
    X, y = load_dataset("mnist", args.data, 10000)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}", flush=True)
    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    report["sync"] = [count_synchronisations(X[:2048], m, graphs=mode == "graphs")
                      for m in args.models for mode in args.step_modes]
    for s in report["sync"]:
        print(f"{s['model']} ({'graphs' if s['graphs'] else 'eager'}): "
              f"{s['synchronisations']} synchronisations in {s['steps']} "
              f"steps (2 epochs): {s['sites']}", flush=True)
    report["fits"] = []
    if args.sync_only:
        return report
    print(f"{'model':10} {'steps':6} {'precision':9} {'seed':>4} {'ACC':>6} {'NMI':>6} "
          f"{'fit s':>7} {'img/s':>7} {'pred s':>7} {'GPU MB':>7}", flush=True)
    for model in args.models:
        for mode in args.step_modes:
            for precision in args.precisions:
                for seed in args.seeds:
                    r = fit_once(X, y, model, seed, precision, graphs=mode == "graphs")
                    report["fits"].append(r)
                    print(f"{model:10} {mode:6} {precision:9} {seed:4d} {100 * r['acc']:6.1f} "
                          f"{100 * r['nmi']:6.1f} {r['fit_time_s']:7.1f} "
                          f"{r['images_per_s']:7.0f} {r['predict_time_s']:7.2f} "
                          f"{r['peak_gpu_mb']:7.0f}", flush=True)
                    if args.json:  # after every fit, so that a cut-off run leaves its fits
                        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
