"""Benchmark DTI clustering against pixel-space K-means and GMM on MNIST-test.

Every (dataset, model, seed) run is fitted in a fresh Python process (this
script called with ``--single``) so that the peak resident memory reported for
a run is that run's own. The parent process collects one JSON record per run,
prints one table per dataset and writes everything to a JSON file.

Examples
--------
Full benchmark (the DTI paper's MNIST-test protocol, five seeds)::

    python benchmarks/bench_mnist.py --data ../shared/data/mnist --seeds 0 1 2 3 4 \\
        --n-samples 10000 --max-iter None --json out.json \\
        --datasets mnist mnist-color --models dtikmeans dtigmm kmeans gmm

Quick check of the plumbing (300 images, one seed, 2 epochs)::

    python benchmarks/bench_mnist.py --smoke --models kmeans gmm

One table of runs made by several commands on one machine (seeds run apart,
say), from their ``--json`` files::

    python benchmarks/bench_mnist.py --combine seeds01.json seeds234.json

The benchmark imports ``dti_sklearn`` from this repository (it is put first
on the module search path of every run). The data are the MNIST idx files
(``t10k-images-idx3-ubyte.gz`` and
``t10k-labels-idx1-ubyte.gz``); nothing is downloaded. Runs use the first
``--n-samples`` test images. MNIST-color colours them with
``dti_sklearn.datasets.make_mnist_color(images, random_state=0)``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
#: "mnist-16" and "mnist-64" are the grey digits resized to 16 x 16 and 64 x 64
#: (bilinear, antialiased): the defaults are derived from the image size, and
#: these check that rule at both ends of the sizes it is meant for.
RESIZED = {"mnist-16": 16, "mnist-64": 64}
#: "shapes" is no digit set: ``make_shapes`` draws ten plane shapes in random
#: poses and colours on 32 x 32 RGB images with noise (seed 0), a check of the
#: defaults on images that they were not tuned on.
SHAPES = {"image_size": 32, "color": True, "noise": 0.05, "random_state": 0}
DATASETS = ("mnist", "mnist-color", *RESIZED, "shapes")
#: Data sets whose DTI models get the colour transformation in front.
COLOR_DATASETS = ("mnist-color", "shapes")
#: "dtikmeans-std" and "dtigmm-std" are ``ImageStandardizer`` then the estimator
#: with the defaults it has on grey images: the colours are removed before the fit.
#: "-pc" is the same with ``ImageStandardizer(channels="principal")``: each image
#: projected on its principal colour axis, so the estimator sees grey images.
STANDARDIZERS = {"-std": {}, "-pc": {"channels": "principal"}}
DTI_MODELS = tuple(
    f"{model}{suffix}" for suffix in ("", *STANDARDIZERS) for model in ("dtikmeans", "dtigmm")
)
MODELS = (*DTI_MODELS, "kmeans", "gmm")
N_CLUSTERS = 10
RESULT_MARKER = "BENCH_RESULT "
SMOKE = {"n_samples": 300, "seeds": [0], "max_iter": 2}
_COLOR_NAMES = {"col", "color", "colour"}


def _use_repository_copy() -> None:
    """Make ``import dti_sklearn`` find this repository's copy before any installed one."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def _int_or_none(text: str) -> int | None:
    """Parse an integer, or ``None`` from the text "None"."""
    if text.lower() == "none":
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or None, got {text!r}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    Returns
    -------
    parser : argparse.ArgumentParser
        The parser of the benchmark's options.
    """
    parser = argparse.ArgumentParser(
        description="Benchmark DTI clustering against K-means and GMM on MNIST-test.",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="folder with the MNIST test idx files (default: $DTI_SKLEARN_MNIST, "
        "else ../shared/data/mnist relative to the repository root)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--n-samples", type=int, default=10000, help="use the first N test images"
    )
    parser.add_argument(
        "--max-iter",
        type=_int_or_none,
        default=None,
        help="epochs for the DTI models; None keeps the estimator default "
        "(the baselines always use scikit-learn's defaults)",
    )
    parser.add_argument(
        "--datasets", nargs="+", choices=DATASETS, default=["mnist", "mnist-color"],
        help="data sets (default: mnist mnist-color)",
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--json", default=None, help="write records and summary here")
    parser.add_argument(
        "--dti-params",
        default="{}",
        help="extra keyword arguments of the DTI estimators as JSON, e.g. '{\"batch_size\": 64}'",
    )
    parser.add_argument(
        "--device", default=None, help="device argument of the DTI estimators"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch/BLAS threads per run"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds allowed per run"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time, each in its own process (default 1). With more than "
        "one, --threads defaults to the CPUs divided by --jobs; the runs then share "
        "memory bandwidth (and the GPU), so compare their times only with each other",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="quick plumbing check: 300 images, seed 0, max_iter=2",
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        default=None,
        metavar="JSON",
        help="run nothing: print one table of the runs in these --json files (seeds run "
        "as separate commands, say); they must come from one machine",
    )
    parser.add_argument("--single", default=None, help=argparse.SUPPRESS)
    return parser


def combine(paths: Sequence[str]) -> dict:
    """Join the results of several runs of this script into one.

    Parameters
    ----------
    paths : sequence of str
        Files written by ``--json``.

    Returns
    -------
    results : dict
        ``environment`` (the first file's), ``config`` (``{"combined": paths}``),
        every file's ``records`` in order, and their ``summary``.

    Raises
    ------
    ValueError
        If the files come from different processors or torch builds, whose
        times would not be comparable, or if a (dataset, model, seed) run
        appears twice.
    """
    results = [json.loads(Path(path).read_text()) for path in paths]
    keys = ("cpu", "cpu_count", "torch", "torch_cpu_capability", "cuda")
    machines = list(dict.fromkeys(tuple(r["environment"].get(k) for k in keys) for r in results))
    if len(machines) > 1:
        raise ValueError(
            f"--combine needs results from one machine and torch build; got {machines}"
        )
    records = [record for r in results for record in r["records"]]
    runs = Counter((r["dataset"], r["model"], r["seed"]) for r in records)
    twice = [run for run, count in runs.items() if count > 1]
    if twice:
        raise ValueError(f"--combine got these (dataset, model, seed) runs twice: {twice}")
    return {
        "config": {"combined": [str(path) for path in paths]},
        "environment": results[0]["environment"],
        "records": records,
        "summary": summarize(records),
    }


def _print_tables(results: dict) -> None:
    """Print the machine line and one table per data set of ``results``."""
    environment = results["environment"]
    print(
        f"machine: {environment['cpu']}, {environment['cpu_count']} CPUs, torch "
        f"{environment['torch']} ({environment.get('torch_cpu_capability')})"
    )
    for dataset in dict.fromkeys(row["dataset"] for row in results["summary"]):
        print(format_table(results["summary"], dataset))
        print()


def load_dataset(
    name: str, data: str | None, n_samples: int
) -> tuple[np.ndarray, np.ndarray]:
    """Load the first ``n_samples`` images of a data set as float32 images in [0, 1].

    Parameters
    ----------
    name : {"mnist", "mnist-color", "mnist-16", "mnist-64", "shapes"}
        MNIST test images: grey-level digits (n, 28, 28), coloured digits
        (n, 28, 28, 3), or grey-level digits resized to (n, 16, 16) or
        (n, 64, 64); or ``make_shapes`` images (n, 32, 32, 3), see
        :data:`SHAPES`.
    data : str or None
        Folder of the idx files; None uses :func:`dti_sklearn.datasets.load_mnist`'s
        default.  Not read for "shapes".
    n_samples : int
        Number of images, taken from the start of the test set.

    Returns
    -------
    X : ndarray of float32
        The images.
    y : ndarray of int64
        The digit (or shape) labels.
    """
    # The module, not its names: each data set reads only the function it needs,
    # so MNIST also loads with older checkouts (benchmarks/throughput.py).
    from dti_sklearn import datasets

    if name == "shapes":
        return datasets.make_shapes(n_samples, **SHAPES)
    images, labels = datasets.load_mnist(data, subset="test")
    images, labels = images[:n_samples], labels[:n_samples]
    if name == "mnist":
        return images.astype(np.float32) / np.float32(255.0), labels
    if name == "mnist-color":
        return datasets.make_mnist_color(images, random_state=0), labels
    if name in RESIZED:
        grey = images.astype(np.float32) / np.float32(255.0)
        return resize_images(grey, RESIZED[name]), labels
    raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (n, H, W) grey images in [0, 1] to (n, size, size), deterministically.

    Parameters
    ----------
    images : ndarray of float32, shape (n, H, W)
        The images.
    size : int
        Side of the resized images.

    Returns
    -------
    resized : ndarray of float32, shape (n, size, size)
        Bilinear interpolation, antialiased when shrinking, clipped to [0, 1].
    """
    import torch
    from torch.nn.functional import interpolate

    resized = interpolate(
        torch.from_numpy(images)[:, None], size=(size, size), mode="bilinear",
        align_corners=False, antialias=size < images.shape[-1],
    )
    return resized[:, 0].clamp_(0.0, 1.0).numpy()


def _is_color(spec: Any) -> bool:
    """Whether a transformation name or object is the colour transformation."""
    name = spec if isinstance(spec, str) else getattr(spec, "name", "")
    return str(name).lower() in _COLOR_NAMES


def _with_color(defaults: Any) -> tuple:
    """Prepend the colour transformation to an estimator's default ``transforms``.

    DTIKMeans's ``"auto"`` is kept: it puts the colour in front by itself on
    images of 16 x 16 pixels or more.
    """
    if isinstance(defaults, str) and defaults == "auto":
        return defaults
    if defaults is None:
        defaults = ()
    elif isinstance(defaults, str) or not isinstance(defaults, Sequence):
        defaults = (defaults,)
    defaults = tuple(defaults)
    if any(_is_color(t) for t in defaults):
        return defaults
    return ("color", *defaults)


def make_model(
    model: str,
    dataset: str,
    seed: int,
    max_iter: int | None = None,
    dti_params: dict | None = None,
    device: str | None = None,
) -> Any:
    """Build an unfitted estimator for one run.

    Parameters
    ----------
    model : {"dtikmeans", "dtigmm", "dtikmeans-std", "dtigmm-std", "dtikmeans-pc", \
"dtigmm-pc", "kmeans", "gmm"}
        Which estimator: ``-std`` and ``-pc`` put an ``ImageStandardizer``
        (:data:`STANDARDIZERS`) in front of the DTI model's grey defaults.
    dataset : {"mnist", "mnist-color", "mnist-16", "mnist-64", "shapes"}
        For the colour data sets (:data:`COLOR_DATASETS`) the DTI models get
        the colour transformation in front of their default transformations;
        the other data sets keep every default.
    seed : int
        ``random_state`` of the estimator.
    max_iter : int or None, default=None
        Epochs of the DTI models; None keeps their default.
    dti_params : dict or None, default=None
        Extra keyword arguments of the DTI models (override the above).
    device : str or None, default=None
        ``device`` argument of the DTI models; None leaves it out.

    Returns
    -------
    estimator : object
        A scikit-learn style estimator.
    """
    if model == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=N_CLUSTERS, n_init=10, random_state=seed)
    if model == "gmm":
        from sklearn.mixture import GaussianMixture

        return GaussianMixture(
            n_components=N_CLUSTERS, covariance_type="diag", random_state=seed
        )
    if model not in DTI_MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {MODELS}")
    for suffix, standardizer_params in STANDARDIZERS.items():
        if model.endswith(suffix):
            from sklearn.pipeline import make_pipeline

            from dti_sklearn.preprocessing import ImageStandardizer

            inner = make_model(model[: -len(suffix)], "mnist", seed, max_iter, dti_params, device)
            return make_pipeline(ImageStandardizer(**standardizer_params), inner)
    from dti_sklearn import DTIGaussianMixture, DTIKMeans

    if model == "dtikmeans":
        cls, size = DTIKMeans, {"n_clusters": N_CLUSTERS}
    else:
        cls, size = DTIGaussianMixture, {"n_components": N_CLUSTERS}
    params: dict[str, Any] = {"random_state": seed}
    if max_iter is not None:
        params["max_iter"] = max_iter
    if device is not None:
        params["device"] = device
    if dataset in COLOR_DATASETS:
        params["transforms"] = _with_color(cls().get_params()["transforms"])
    params.update(dti_params or {})
    return cls(**size, **params)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _final_loss(model_name: str, est: Any) -> float:
    """The objective reached: DTI loss curve end, K-means inertia, or -lower bound."""
    if model_name in DTI_MODELS:
        return float(est.loss_curve_[-1])
    if model_name == "kmeans":
        return float(est.inertia_)
    return float(-est.lower_bound_)


def run_single(spec: dict) -> dict:
    """Fit one model on one dataset with one seed and measure it (in this process).

    Parameters
    ----------
    spec : dict
        Keys ``dataset``, ``model``, ``seed``, ``data``, ``n_samples``,
        ``max_iter``, ``dti_params``, ``device``, ``threads``.

    Returns
    -------
    record : dict
        The spec's identifying keys plus ``acc``, ``nmi``, ``final_loss``,
        ``fit_time_s``, ``n_iter``, ``images_per_s`` (``n_iter`` epochs of the
        data over the fit's time; DTI models only, else None),
        ``images_trained_per_s`` (every image of every gradient step, the tried
        move's second branch included, over the fit's time; DTI models only),
        ``predict_time_s``, ``peak_rss_before_fit_mb``, ``peak_rss_mb``.
    """
    from sklearn.metrics import normalized_mutual_info_score

    from dti_sklearn.metrics import cluster_accuracy

    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    model_name, dataset = spec["model"], spec["dataset"]
    X, y = load_dataset(dataset, spec.get("data"), spec["n_samples"])
    if model_name not in DTI_MODELS:
        X = X.reshape(X.shape[0], -1)
    est = make_model(
        model_name,
        dataset,
        spec["seed"],
        max_iter=spec.get("max_iter"),
        dti_params=spec.get("dti_params"),
        device=spec.get("device"),
    )
    rss_before = _peak_rss_mb()
    start = time.perf_counter()
    est.fit(X)
    fit_time = time.perf_counter() - start
    start = time.perf_counter()
    labels = np.asarray(est.predict(X))
    predict_time = time.perf_counter() - start
    final = est[-1] if hasattr(est, "steps") else est  # a Pipeline's estimator
    n_iter = int(np.max(final.n_iter_))
    is_dti = model_name in DTI_MODELS
    trained = getattr(final, "n_images_trained_", None) if is_dti else None
    return {
        "dataset": dataset,
        "model": model_name,
        "seed": spec["seed"],
        "n_samples": int(X.shape[0]),
        "acc": cluster_accuracy(y, labels),
        "nmi": float(normalized_mutual_info_score(y, labels)),
        "final_loss": _final_loss(model_name, final),
        "fit_time_s": fit_time,
        "n_iter": n_iter,
        "images_per_s": X.shape[0] * n_iter / fit_time if is_dti else None,
        "images_trained_per_s": None if trained is None else trained / fit_time,
        "predict_time_s": predict_time,
        "peak_rss_before_fit_mb": rss_before,
        "peak_rss_mb": _peak_rss_mb(),
    }


def run_in_subprocess(spec: dict, timeout: float | None = None) -> dict:
    """Run :func:`run_single` in a fresh interpreter and return its record.

    Parameters
    ----------
    spec : dict
        As for :func:`run_single`.
    timeout : float or None, default=None
        Seconds allowed; a run past it is killed and reported as an error.

    Returns
    -------
    record : dict
        The run's record, or the spec's identifying keys with an ``error``
        message when the run failed.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    if spec.get("threads"):
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(spec["threads"])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--single", json.dumps(spec)]
    ident = {k: spec[k] for k in ("dataset", "model", "seed")}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {**ident, "error": f"timed out after {timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    return {**ident, "error": f"exit status {proc.returncode}: " + "\n".join(tail)}


def threads_per_run(threads: int | None, jobs: int) -> int | None:
    """Threads of every run: ``threads`` if given, else the CPUs shared by ``jobs`` runs.

    Parameters
    ----------
    threads : int or None
        The ``--threads`` option.
    jobs : int
        Runs at a time.

    Returns
    -------
    int or None
        None (the library's own choice) for one run at a time without ``--threads``.
    """
    if threads or jobs <= 1:
        return threads
    from joblib import cpu_count

    return max(1, cpu_count() // jobs)


def _report(record: dict) -> None:
    """Print one run's outcome on stderr as it finishes."""
    status = (
        f"ERROR {record['error'].splitlines()[-1]}"
        if "error" in record
        else f"acc={record['acc']:.3f} nmi={record['nmi']:.3f} fit={record['fit_time_s']:.1f}s"
    )
    print(
        f"[{record['dataset']} {record['model']} seed={record['seed']}] {status}",
        file=sys.stderr,
        flush=True,
    )


def run_all(specs: list[dict], jobs: int = 1, timeout: float | None = None) -> list[dict]:
    """Run every spec in its own process, ``jobs`` at a time; records in the specs' order.

    Parameters
    ----------
    specs : list of dict
        As for :func:`run_single`.
    jobs : int, default=1
        Runs at a time.
    timeout : float or None, default=None
        Seconds allowed per run.

    Returns
    -------
    list of dict
        One record per spec (see :func:`run_in_subprocess`).
    """
    if jobs <= 1:
        records = []
        for spec in specs:
            records.append(run_in_subprocess(spec, timeout=timeout))
            _report(records[-1])
        return records
    # Threads only wait on child processes here; the work runs in the children.
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_in_subprocess, spec, timeout) for spec in specs]
        for future in as_completed(futures):
            _report(future.result())
        return [future.result() for future in futures]


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation."""
    return float(np.mean(values)), float(np.std(values))


def summarize(records: list[dict]) -> list[dict]:
    """Aggregate the successful runs per (dataset, model).

    Parameters
    ----------
    records : list of dict
        Records from :func:`run_single` (failed ones, with ``error``, are counted).

    Returns
    -------
    summary : list of dict
        One row per (dataset, model) in first-seen order: ACC and NMI mean and
        standard deviation, ACC and NMI of the lowest-loss run ("minLoss"),
        median fit time, median images per second (the schedule's epochs, and
        every trained image), median predict time, the
        largest peak memory, and the numbers of successful and failed runs.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["dataset"], rec["model"]), []).append(rec)
    rows = []
    for (dataset, model), recs in groups.items():
        ok = [r for r in recs if "error" not in r]
        row: dict[str, Any] = {
            "dataset": dataset,
            "model": model,
            "n_runs": len(ok),
            "n_failed": len(recs) - len(ok),
        }
        if ok:
            best = min(ok, key=lambda r: r["final_loss"])
            speeds = [r["images_per_s"] for r in ok if r["images_per_s"] is not None]
            trained = [r["images_trained_per_s"] for r in ok
                       if r.get("images_trained_per_s") is not None]
            row.update(
                zip(
                    ("acc_mean", "acc_std"),
                    _mean_std([r["acc"] for r in ok]),
                    strict=True,
                )
            )
            row.update(
                zip(
                    ("nmi_mean", "nmi_std"),
                    _mean_std([r["nmi"] for r in ok]),
                    strict=True,
                )
            )
            row.update(
                minloss_seed=best["seed"],
                minloss_acc=best["acc"],
                minloss_nmi=best["nmi"],
                fit_time_median_s=statistics.median(r["fit_time_s"] for r in ok),
                images_per_s_median=statistics.median(speeds) if speeds else None,
                images_trained_per_s_median=(
                    statistics.median(trained) if trained else None
                ),
                predict_time_median_s=statistics.median(
                    r["predict_time_s"] for r in ok
                ),
                peak_rss_max_mb=max(r["peak_rss_mb"] for r in ok),
            )
        rows.append(row)
    return rows


def format_table(rows: list[dict], dataset: str) -> str:
    """Format the summary rows of one dataset as a plain-text table (percentages).

    Parameters
    ----------
    rows : list of dict
        Output of :func:`summarize`.
    dataset : str
        Which dataset's rows to show.

    Returns
    -------
    table : str
        The table, with a title line.
    """
    width = max([10] + [len(row["model"]) for row in rows if row["dataset"] == dataset])
    header = (
        f"{'model':<{width}} {'ACC %':>12} {'NMI %':>12} {'minLoss ACC/NMI':>16} "
        f"{'wall s/run':>10} {'img/s':>8} {'trained/s':>9} {'predict s':>9} {'peak MB':>8} "
        f"{'runs':>6}"
    )
    lines = [f"== {dataset} ==", header, "-" * len(header)]
    for row in rows:
        if row["dataset"] != dataset:
            continue
        runs = f"{row['n_runs']}" + (f"+{row['n_failed']}F" if row["n_failed"] else "")
        if not row["n_runs"]:
            gap = len(header) - width - 8  # between the model and the runs columns
            lines.append(f"{row['model']:<{width}} {'(all runs failed)':<{gap}} {runs:>6}")
            continue
        speed = row["images_per_s_median"]
        trained = row.get("images_trained_per_s_median")
        lines.append(
            f"{row['model']:<{width}} "
            f"{100 * row['acc_mean']:>6.1f}±{100 * row['acc_std']:<5.1f} "
            f"{100 * row['nmi_mean']:>6.1f}±{100 * row['nmi_std']:<5.1f} "
            f"{100 * row['minloss_acc']:>8.1f}/{100 * row['minloss_nmi']:<7.1f} "
            f"{row['fit_time_median_s']:>10.2f} "
            f"{'-' if speed is None else f'{speed:.0f}':>8} "
            f"{'-' if trained is None else f'{trained:.0f}':>9} "
            f"{row['predict_time_median_s']:>9.3f} "
            f"{row['peak_rss_max_mb']:>8.0f} {runs:>6}"
        )
    return "\n".join(lines)


def _cpu_model() -> str:
    """Processor name with its family and model numbers (Linux), else ``platform``'s guess.

    Hosts sold under one name differ: two "AMD EPYC" virtual machines of
    different families ran the same fit 2.3 times apart, so a table records
    which one it came from.
    """
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass  # not Linux: platform's guess below
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def _environment() -> dict:
    """Versions and machine facts recorded with the results."""
    import sklearn

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        env["cuda"] = (
            torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        )
    except ImportError:  # pragma: no cover - baselines only
        env["torch"] = None
    return env


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark from command-line arguments.

    Parameters
    ----------
    argv : sequence of str or None, default=None
        Arguments without the program name; None reads ``sys.argv``.

    Returns
    -------
    results : dict
        ``config``, ``environment``, ``records`` (one per run) and ``summary``
        (see :func:`summarize`); also written to ``--json`` when given. In
        ``--single`` mode, the one run's record (also printed on stdout); with
        ``--combine``, the joined files (see :func:`combine`).
    """
    _use_repository_copy()
    args = build_parser().parse_args(argv)
    if args.single is not None:
        record = run_single(json.loads(args.single))
        print(RESULT_MARKER + json.dumps(record), flush=True)
        return record
    if args.combine is not None:
        results = combine(args.combine)
        _print_tables(results)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return results

    if args.smoke:
        args.n_samples, args.seeds, args.max_iter = (
            SMOKE["n_samples"],
            SMOKE["seeds"],
            SMOKE["max_iter"],
        )
    data = args.data
    if data is None and not os.environ.get("DTI_SKLEARN_MNIST"):
        data = str(REPO_ROOT.parent / "shared" / "data" / "mnist")
    if data is not None:
        data = str(Path(data).resolve())
    dti_params = json.loads(args.dti_params)
    config = {
        "data": data,
        "datasets": args.datasets,
        "models": args.models,
        "seeds": args.seeds,
        "n_samples": args.n_samples,
        "max_iter": args.max_iter,
        "dti_params": dti_params,
        "device": args.device,
        "threads": threads_per_run(args.threads, args.jobs),
        "jobs": args.jobs,
        "smoke": args.smoke,
    }
    specs = [
        {
            "dataset": dataset,
            "model": model,
            "seed": seed,
            "data": data,
            "n_samples": args.n_samples,
            "max_iter": args.max_iter,
            "dti_params": dti_params,
            "device": args.device,
            "threads": config["threads"],
        }
        for dataset in args.datasets
        for model in args.models
        for seed in args.seeds
    ]
    records = run_all(specs, jobs=args.jobs, timeout=args.timeout)
    results = {
        "config": config,
        "environment": _environment(),
        "records": records,
        "summary": summarize(records),
    }
    _print_tables(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
