"""Smoke tests of benchmarks/bench_mnist.py (the plumbing, not the numbers)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"
HAVE_MNIST = (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file() and (
    MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
).is_file()
needs_mnist = pytest.mark.skipif(
    not HAVE_MNIST,
    reason=f"MNIST test set not found in {MNIST_DIR} (not shipped with the repo)",
)


@pytest.fixture(scope="module")
def bench():
    """The benchmark script, imported as a module."""
    spec = importlib.util.spec_from_file_location(
        "bench_mnist", REPO_ROOT / "benchmarks" / "bench_mnist.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_mnist
def test_smoke_baselines(bench, tmp_path, capsys):
    out = tmp_path / "out.json"
    results = bench.main(
        [
            "--smoke",
            "--data",
            str(MNIST_DIR),
            "--models",
            "kmeans",
            "gmm",
            "--json",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    records = results["records"]
    assert [(r["dataset"], r["model"]) for r in records] == [
        ("mnist", "kmeans"),
        ("mnist", "gmm"),
        ("mnist-color", "kmeans"),
        ("mnist-color", "gmm"),
    ]
    for rec in records:
        assert "error" not in rec, rec.get("error")
        assert rec["n_samples"] == 300 and rec["seed"] == 0
        # Pixel K-means/GMM reach about 0.55 on grey MNIST; colours defeat them (paper: 0.105).
        assert (0.4 if rec["dataset"] == "mnist" else 0.1) < rec["acc"] <= 1.0
        assert 0.0 < rec["nmi"] <= 1.0
        assert rec["fit_time_s"] > 0 and rec["predict_time_s"] > 0
        assert rec["images_per_s"] is None  # only reported for DTI models
        assert rec["peak_rss_mb"] >= rec["peak_rss_before_fit_mb"] > 10
    kmeans = [r for r in records if r["model"] == "kmeans"]
    assert all(r["final_loss"] > 0 for r in kmeans)  # inertia
    summary = results["summary"]
    assert len(summary) == 4
    assert all(row["n_runs"] == 1 and row["n_failed"] == 0 for row in summary)
    printed = capsys.readouterr().out
    assert "== mnist ==" in printed and "== mnist-color ==" in printed
    # Hosts of one name can differ 2-fold in speed: the processor goes with the table.
    environment = results["environment"]
    assert environment["cpu"] and environment["torch_cpu_capability"]
    assert f"machine: {environment['cpu']}, {environment['cpu_count']} CPUs" in printed


def test_single_run_with_stand_in_dti_model(bench, monkeypatch, tmp_path):
    """run_single's DTI branch, with a stand-in estimator (no MNIST, no torch model)."""

    class StandIn:
        def fit(self, X):
            assert X.shape == (12, 4, 4)  # DTI models get images, not flattened rows
            self.loss_curve_ = [3.0, 2.0, 0.5]
            self.n_iter_ = 3
            self.n_images_trained_ = 12 * 5  # a tried move's second branch: 2 more epochs
            return self

        def predict(self, X):
            return np.arange(X.shape[0]) % 2

    def fake_load(name, data, n_samples):
        return np.zeros((n_samples, 4, 4), np.float32), np.arange(n_samples) % 2

    monkeypatch.setattr(bench, "load_dataset", fake_load)
    monkeypatch.setattr(bench, "make_model", lambda *args, **kwargs: StandIn())
    rec = bench.run_single(
        {
            "dataset": "mnist",
            "model": "dtikmeans",
            "seed": 0,
            "data": None,
            "n_samples": 12,
        }
    )
    assert rec["final_loss"] == 0.5
    assert rec["acc"] == 1.0
    assert rec["n_iter"] == 3
    assert rec["images_per_s"] == pytest.approx(12 * 3 / rec["fit_time_s"])
    assert rec["images_trained_per_s"] == pytest.approx(12 * 5 / rec["fit_time_s"])


@pytest.mark.parametrize("size", [16, 64])
def test_resized_digits_keep_their_shape_and_ink(bench, size):
    """The resized data sets: the requested side, values in [0, 1], the same ink."""
    rng = np.random.RandomState(0)
    images = np.zeros((3, 28, 28), np.float32)
    images[:, 8:20, 12:16] = rng.uniform(0.5, 1.0, (3, 12, 4))  # a bar per image
    before = images.copy()
    resized = bench.resize_images(images, size)
    assert resized.shape == (3, size, size) and resized.dtype == np.float32
    assert resized.min() >= 0.0 and resized.max() <= 1.0
    np.testing.assert_array_equal(images, before)  # the input is not modified
    np.testing.assert_array_equal(resized, bench.resize_images(images, size))
    # Interpolation keeps the mean intensity: each image's ink scales with its area.
    np.testing.assert_allclose(resized.mean((1, 2)), images.mean((1, 2)), rtol=0.05)
    # The bar stays where it was, in relative coordinates.
    centre = (resized[0] * np.arange(size)[:, None]).sum() / resized[0].sum()
    assert centre / size == pytest.approx(14 / 28, abs=0.05)


def test_color_transform_prepended_once(bench):
    assert bench._with_color(("aff", "mor")) == ("color", "aff", "mor")
    assert bench._with_color(["col", "aff"]) == ("col", "aff")
    assert bench._with_color(None) == ("color",)
    assert bench._with_color("tps") == ("color", "tps")


def test_summary_min_loss_and_failures(bench):
    base = {
        "dataset": "mnist",
        "model": "dtikmeans",
        "nmi": 0.5,
        "fit_time_s": 1.0,
        "images_per_s": 10.0,
        "predict_time_s": 0.1,
        "peak_rss_mb": 100.0,
    }
    records = [
        {**base, "seed": 0, "acc": 0.9, "final_loss": 2.0, "images_trained_per_s": 1500.0},
        {**base, "seed": 1, "acc": 0.7, "final_loss": 1.0, "images_trained_per_s": 1700.0},
        {"dataset": "mnist", "model": "dtikmeans", "seed": 2, "error": "boom"},
    ]
    (row,) = bench.summarize(records)
    assert row["n_runs"] == 2 and row["n_failed"] == 1
    assert row["acc_mean"] == pytest.approx(0.8)
    assert row["acc_std"] == pytest.approx(0.1)
    assert row["minloss_seed"] == 1 and row["minloss_acc"] == 0.7
    table = bench.format_table([row], "mnist")
    assert "80.0±10.0" in table and "2+1F" in table
    assert row["images_trained_per_s_median"] == 1600.0 and " 1600 " in table
    header, _, line = table.splitlines()[1:]
    assert len(line) == len(header)
    long = bench.format_table([row, {**row, "model": "dtikmeans-std"}], "mnist")
    lengths = {len(line) for line in long.splitlines()[1:]}
    assert len(lengths) == 1 and lengths != {len(header)}  # wider, and still aligned


def _results_file(path, records, cpu="AMD EPYC (family 25, model 1)"):
    environment = {"cpu": cpu, "cpu_count": 2, "torch": "2.13.0+cpu",
                   "torch_cpu_capability": "AVX2", "cuda": None}
    path.write_text(json.dumps({"config": {}, "environment": environment,
                                "records": records, "summary": []}))
    return str(path)


def test_combine_makes_one_table_of_several_commands(bench, tmp_path, capsys):
    base = {"dataset": "mnist", "model": "dtikmeans", "nmi": 0.9, "fit_time_s": 400.0,
            "images_per_s": 1400.0, "predict_time_s": 2.0, "peak_rss_mb": 800.0}
    first = _results_file(tmp_path / "a.json", [
        {**base, "seed": 0, "acc": 0.97, "final_loss": 0.011},
        {**base, "seed": 1, "acc": 0.96, "final_loss": 0.012},
    ])
    second = _results_file(tmp_path / "b.json", [
        {**base, "seed": 2, "acc": 0.98, "final_loss": 0.010},
        {**base, "model": "kmeans", "seed": 2, "acc": 0.55, "final_loss": 5.0},
    ])
    out = tmp_path / "all.json"
    results = bench.main(["--combine", first, second, "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert [r["seed"] for r in results["records"]] == [0, 1, 2, 2]
    dti, kmeans = results["summary"]
    assert dti["n_runs"] == 3 and kmeans["n_runs"] == 1
    assert dti["acc_mean"] == pytest.approx(0.97)
    assert dti["minloss_seed"] == 2 and dti["minloss_acc"] == 0.98
    printed = capsys.readouterr().out
    assert "machine: AMD EPYC (family 25, model 1), 2 CPUs" in printed
    assert "== mnist ==" in printed and "97.0±0.8" in printed


def test_combine_refuses_two_machines_and_repeated_runs(bench, tmp_path):
    record = {"dataset": "mnist", "model": "kmeans", "seed": 0, "acc": 0.5, "nmi": 0.5,
              "final_loss": 1.0, "fit_time_s": 1.0, "images_per_s": None,
              "predict_time_s": 0.1, "peak_rss_mb": 100.0}
    here = _results_file(tmp_path / "a.json", [record])
    there = _results_file(tmp_path / "b.json", [{**record, "seed": 1}], cpu="Intel Xeon")
    with pytest.raises(ValueError, match="one machine"):
        bench.combine([here, there])
    # Only the GPU differs (None against a name): still the clear refusal.
    gpu = tmp_path / "gpu.json"
    gpu_results = json.loads(Path(here).read_text())
    gpu_results["environment"]["cuda"] = "NVIDIA H200"
    gpu_results["records"] = [{**record, "seed": 2}]
    gpu.write_text(json.dumps(gpu_results))
    with pytest.raises(ValueError, match="one machine"):
        bench.combine([here, str(gpu)])
    again = _results_file(tmp_path / "c.json", [record])
    with pytest.raises(ValueError, match=r"twice: \[\('mnist', 'kmeans', 0\)\]"):
        bench.combine([here, again])


def test_standardised_model_is_a_pipeline_with_the_grey_defaults(bench):
    from dti_sklearn import DTIGaussianMixture, DTIKMeans

    model = bench.make_model("dtikmeans-std", "mnist-color", seed=3, max_iter=2)
    standardizer, dti = model[0], model[-1]
    assert type(standardizer).__name__ == "ImageStandardizer"
    assert dti.random_state == 3 and dti.max_iter == 2
    assert dti.transforms == DTIKMeans().transforms
    coloured = bench.make_model("dtikmeans", "mnist-color", seed=3)
    assert coloured.transforms == "auto"  # the colour in front on images of 16 x 16 or more
    fitted = coloured.set_params(max_iter=1).fit(np.random.RandomState(0).rand(10, 16, 16, 3))
    assert bench._is_color(fitted.transforms_[0])
    mixture = bench.make_model("dtigmm", "mnist-color", seed=3)
    assert bench._is_color(mixture.transforms[0])
    assert tuple(mixture.transforms[1:]) == tuple(DTIGaussianMixture().transforms)
    standardised = bench.make_model("dtigmm-std", "shapes", seed=3)
    assert type(standardised[0]).__name__ == "ImageStandardizer"
    assert isinstance(standardised[-1], DTIGaussianMixture)
    assert standardised[-1].transforms == DTIGaussianMixture().transforms  # no colour
    assert standardised[0].channels == "each"
    principal = bench.make_model("dtigmm-pc", "shapes", seed=3)
    assert principal[0].channels == "principal"
    assert principal[-1].transforms == DTIGaussianMixture().transforms


def test_cuda_check_imports_and_refuses_a_machine_without_cuda(monkeypatch):
    """benchmarks/cuda_check.py loads here; without CUDA it stops with a clear message."""
    import torch

    spec = importlib.util.spec_from_file_location(
        "cuda_check", REPO_ROOT / "benchmarks" / "cuda_check.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.MODELS) == {"dtikmeans", "dtigmm"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        module.main(["--sync-only"])


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cuda_graph_probe_refuses_a_machine_without_cuda(monkeypatch):
    """benchmarks/cuda_graph_probe.py stops with a clear message when CUDA is absent."""
    import torch

    module = _load_script("cuda_graph_probe")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        module.main(["--steps", "1"])


@needs_mnist
def test_cuda_graph_probe_times_eager_steps_on_the_cpu(tmp_path, capsys):
    """Its eager timing runs the estimator's own training step on the default sequence."""
    module = _load_script("cuda_graph_probe")
    out = tmp_path / "probe.json"
    report = module.main(["--data", str(MNIST_DIR), "--device", "cpu", "--n-samples", "200",
                          "--batch-sizes", "16", "--steps", "2", "--json", str(out)])
    assert set(report) == {"device", "torch", "eager_16"}
    assert report["eager_16"]["ms_per_step"] > 0
    assert np.isfinite(report["eager_16"]["final_batch_loss"])
    assert json.loads(out.read_text())["eager_16"] == report["eager_16"]
    assert "batch   16 eager" in capsys.readouterr().out


@pytest.mark.parametrize("model", ["kmeans", "gmm"])
def test_profile_step_runs_the_defaults(model, capsys):
    """benchmarks/profile_step.py builds each estimator's default sequence, "auto" settings
    resolved as in fit, and times a few steps."""
    module = _load_script("profile_step")
    rate = module.main(["--model", model, "--size", "16", "--steps", "1", "--batch-size", "8"])
    assert rate > 0
    assert "Morphological" in capsys.readouterr().out


def test_profile_step_times_the_encoder_channels_last(capsys):
    """``--channels-last`` times the same step with the encoder in channels-last layout."""
    module = _load_script("profile_step")
    args = ["--size", "16", "--steps", "1", "--batch-size", "8", "--channels-last"]
    assert module.main(args) > 0
    assert "channels_last=True" in capsys.readouterr().out


def test_throughput_profiles_a_fit_on_random_images(capsys):
    """benchmarks/throughput.py fits through the public API and, with ``--profile``, prints
    torch.profiler's operator table."""
    module = _load_script("throughput")
    rate = module.main(["--n-samples", "32", "--max-iter", "1", "--size", "16",
                        "--batch-size", "16", "--profile"])
    out = capsys.readouterr().out
    assert rate > 0
    assert "images/s" in out
    assert "Self CPU time total" in out


def test_throughput_reads_its_images_from_the_data_folder(tmp_path):
    """``--data`` loads MNIST-test from the folder given: an empty folder is an error."""
    module = _load_script("throughput")
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        module.main(["--data", str(tmp_path), "--n-samples", "32", "--max-iter", "1"])


@needs_mnist
def test_throughput_times_mnist_images(capsys):
    """``--data`` with the shared MNIST folder: the first images, k-means++ start."""
    module = _load_script("throughput")
    rate = module.main(["--data", str(MNIST_DIR), "--n-samples", "64", "--max-iter", "1",
                        "--batch-size", "32", "--init", "k-means++"])
    assert rate > 0
    assert "of 64 images" in capsys.readouterr().out


def test_parallel_runs_keep_the_specs_order(bench, monkeypatch):
    """``--jobs`` runs specs concurrently and still returns their records in order."""
    import threading
    import time

    running, peak, lock = [0], [0], threading.Lock()

    def fake_run(spec, timeout=None):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05 * (3 - spec["seed"]))  # later specs finish first
        with lock:
            running[0] -= 1
        return {"dataset": "mnist", "model": "kmeans", "seed": spec["seed"],
                "acc": 0.5, "nmi": 0.5, "fit_time_s": 1.0}

    monkeypatch.setattr(bench, "run_in_subprocess", fake_run)
    specs = [{"seed": seed} for seed in range(3)]
    records = bench.run_all(specs, jobs=3)
    assert [r["seed"] for r in records] == [0, 1, 2]
    assert peak[0] > 1
    assert [r["seed"] for r in bench.run_all(specs, jobs=1)] == [0, 1, 2]


def test_parallel_runs_share_the_cpus(bench, monkeypatch):
    import joblib

    monkeypatch.setattr(joblib, "cpu_count", lambda: 16)
    assert bench.threads_per_run(None, 4) == 4
    assert bench.threads_per_run(None, 32) == 1
    assert bench.threads_per_run(3, 4) == 3  # --threads wins
    assert bench.threads_per_run(None, 1) is None  # one run: the library decides


def test_shapes_need_no_mnist_and_get_the_colour_transformation(bench, tmp_path):
    """The shapes are generated (any --data is ignored) and treated as colour images."""
    X, y = bench.load_dataset("shapes", str(tmp_path / "no-mnist-here"), 30)
    assert X.shape == (30, 32, 32, 3) and X.dtype == np.float32
    assert 0.0 <= X.min() and X.max() <= 1.0 and sorted(set(y.tolist())) == list(range(10))
    mixture = bench.make_model("dtigmm", "shapes", seed=0)
    assert bench._is_color(mixture.transforms[0])
