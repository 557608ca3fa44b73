"""Tests for dti_sklearn.datasets."""

from __future__ import annotations

import doctest
import gzip
from pathlib import Path

import numpy as np
import pytest

from dti_sklearn import datasets
from dti_sklearn.datasets import (
    SHAPE_NAMES,
    load_digits_images,
    load_idx,
    load_mnist,
    make_mnist_color,
    make_shapes,
)

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
HAVE_MNIST = (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file() and (
    MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
).is_file()
needs_mnist = pytest.mark.skipif(
    not HAVE_MNIST,
    reason=f"MNIST test set not found in {MNIST_DIR} (not shipped with the repo)",
)

_CODES = {
    np.dtype("u1"): 0x08,
    np.dtype("i1"): 0x09,
    np.dtype("i2"): 0x0B,
    np.dtype("i4"): 0x0C,
    np.dtype("f4"): 0x0D,
    np.dtype("f8"): 0x0E,
}


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """Minimal idx writer for the tests: header then big-endian payload."""
    header = bytes([0, 0, _CODES[array.dtype], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = array.astype(array.dtype.newbyteorder(">")).tobytes()
    raw = header + payload
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-3, 0, 7], dtype=np.int8),
        np.arange(-6, 6, dtype=np.int16).reshape(3, 4),
        np.array([[1, -70000], [2**30, 5]], dtype=np.int32),
        np.linspace(-1, 1, 10, dtype=np.float32).reshape(5, 2),
        np.array([np.pi, -np.e], dtype=np.float64),
    ],
    ids=["u1", "i1", "i2", "i4", "f4", "f8"],
)
def test_idx_round_trip(tmp_path, array, compress):
    # The name has no .gz even when compressed: detection uses the magic bytes.
    path = tmp_path / "data.idx"
    write_idx(path, array, compress)
    out = load_idx(path)
    assert out.shape == array.shape
    assert out.dtype == array.dtype
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"\x00\x00", "shorter than"),
        (b"\x01\x00\x08\x01" + (1).to_bytes(4, "big") + b"\x00", "two zero bytes"),
        (
            b"\x00\x00\x07\x01" + (1).to_bytes(4, "big") + b"\x00",
            "unknown idx data type",
        ),
        (b"\x00\x00\x08\x03" + (1).to_bytes(4, "big"), "truncated idx header"),
        (
            b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x00\x00",
            "payload has 2 bytes",
        ),
    ],
)
@pytest.mark.parametrize("compress", [True, False])
def test_bad_header_raises(tmp_path, raw, match, compress):
    path = tmp_path / "bad.idx"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(ValueError, match=match):
        load_idx(path)


def _write_fake_mnist(
    folder: Path, n: int, compress: bool
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", images, compress)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", labels, compress)
    return images, labels


@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_from_explicit_folder(tmp_path, compress):
    images, labels = _write_fake_mnist(tmp_path, 5, compress)
    x, y = load_mnist(tmp_path)
    assert x.dtype == np.uint8 and x.shape == (5, 28, 28)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def test_load_mnist_uses_environment_variable(tmp_path, monkeypatch):
    images, _ = _write_fake_mnist(tmp_path, 3, compress=True)
    monkeypatch.setenv("DTI_SKLEARN_MNIST", str(tmp_path))
    x, _ = load_mnist()
    np.testing.assert_array_equal(x, images)


def test_load_mnist_default_is_relative_to_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "shared" / "data" / "mnist"
    folder.mkdir(parents=True)
    images, _ = _write_fake_mnist(folder, 2, compress=False)
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.delenv("DTI_SKLEARN_MNIST", raising=False)
    monkeypatch.chdir(work)
    x, _ = load_mnist()
    np.testing.assert_array_equal(x, images)


def test_load_mnist_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path / "nowhere", subset="train")
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message
    assert str((tmp_path / "nowhere").resolve()) in message
    assert "MNIST site" in message


def test_load_mnist_bad_subset(tmp_path):
    with pytest.raises(ValueError, match="subset"):
        load_mnist(tmp_path, subset="validation")


def test_load_mnist_mismatched_labels(tmp_path):
    write_idx(
        tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8), False
    )
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8), False)
    with pytest.raises(ValueError, match="do not match 4 images"):
        load_mnist(tmp_path)


@needs_mnist
def test_real_mnist_test_set():
    x, y = load_mnist(MNIST_DIR, subset="test")
    assert x.shape == (10000, 28, 28)
    assert x.dtype == np.uint8
    assert y.dtype == np.int64
    counts = np.bincount(y, minlength=10)
    expected = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    np.testing.assert_array_equal(counts, expected)
    assert x.max() == 255 and x.min() == 0


def test_make_mnist_color_deterministic_shape_and_range():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    a = make_mnist_color(images, random_state=0)
    b = make_mnist_color(images, random_state=0)
    c = make_mnist_color(images, random_state=1)
    assert a.shape == (6, 28, 28, 3)
    assert a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_make_mnist_color_formula():
    images = np.zeros((3, 2, 2), dtype=np.uint8)
    images[:, 0, 0] = 255  # pure foreground pixel
    images[:, 1, 1] = 51  # m = 0.2
    out = make_mnist_color(images, random_state=7)
    fg, bg = out[:, 0, 0], out[:, 0, 1]
    # Colours differ per image, and the background pixel is shared within an image.
    assert not np.allclose(fg[0], fg[1])
    np.testing.assert_array_equal(out[:, 1, 0], bg)
    np.testing.assert_allclose(out[:, 1, 1], 0.8 * bg + 0.2 * fg, rtol=1e-6)
    # Same colours as drawn by the documented generator.
    colors = np.random.default_rng(7).random((3, 2, 3), dtype=np.float32)
    np.testing.assert_allclose(fg, colors[:, 0], rtol=1e-6)
    np.testing.assert_allclose(bg, colors[:, 1], rtol=1e-6)


def test_make_mnist_color_rejects_bad_shape():
    with pytest.raises(ValueError, match="n_samples, height, width"):
        make_mnist_color(np.zeros((2, 28, 28, 1), np.uint8))


def test_load_digits_images():
    x, y = load_digits_images()
    assert x.shape == (1797, 8, 8)
    assert np.issubdtype(x.dtype, np.floating)
    assert x.min() == 0.0 and x.max() == 1.0
    assert y.shape == (1797,) and set(np.unique(y)) == set(range(10))


def test_docstring_examples_run():
    result = doctest.testmod(datasets, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0


def test_make_shapes_shape_range_balance_and_seed():
    x, y = make_shapes(103, image_size=20, random_state=3)
    assert x.shape == (103, 20, 20, 3) and x.dtype == np.float32
    assert y.shape == (103,) and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    counts = np.bincount(y, minlength=len(SHAPE_NAMES))
    assert counts.max() - counts.min() <= 1
    again_x, again_y = make_shapes(103, image_size=20, random_state=3)
    np.testing.assert_array_equal(x, again_x)
    np.testing.assert_array_equal(y, again_y)
    other, _ = make_shapes(103, image_size=20, random_state=4)
    assert not np.array_equal(x, other)


def test_make_shapes_grey_classes_and_noise():
    x, y = make_shapes(60, image_size=16, shapes=["plus", "disc", "ring"], color=False,
                       random_state=0)
    assert x.shape == (60, 16, 16) and set(np.unique(y)) == {0, 1, 2}
    # White shapes on black: every image has ink and background, with
    # antialiased edges in between.
    assert (x.max(axis=(1, 2)) == 1.0).all() and (x.min(axis=(1, 2)) == 0.0).all()
    assert ((x > 0) & (x < 1)).any(axis=(1, 2)).all()
    # Labels index the shapes asked for: discs carry more ink than rings.
    assert x[y == 1].mean() > 1.1 * x[y == 2].mean()
    noisy, same_y = make_shapes(
        60, image_size=16, shapes=["plus", "disc", "ring"], color=False, noise=0.05,
        random_state=0,
    )
    np.testing.assert_array_equal(y, same_y)
    interior = (x > 0.2) & (x < 0.8)  # no clipping there
    assert 0.03 < np.std(noisy[interior] - x[interior]) < 0.07


def test_shape_distances_inside_outside_and_extent():
    from dti_sklearn._shapes import SHAPES

    assert tuple(SHAPES) == SHAPE_NAMES
    grid = np.linspace(-1.0, 1.0, 201)
    u, v = np.meshgrid(grid, grid)
    border = np.maximum(np.abs(u), np.abs(v)) > 0.85
    hollow = {"ring", "frame", "crescent", "ell"}
    areas = []
    for name, distance in SHAPES.items():
        d = distance(u, v)
        assert d.shape == u.shape
        assert (d[border] > 0).all(), f"{name} reaches outside [-0.85, 0.85]^2"
        centre = float(distance(np.zeros(1), np.zeros(1))[0])
        assert (centre > 0) == (name in hollow), name
        areas.append((d < 0).mean())
    assert min(areas) > 0.1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_samples": 0}, "n_samples"),
        ({"n_samples": 2.5}, "n_samples"),
        ({"image_size": 4}, "image_size"),
        ({"shapes": ["disc", "oval"]}, "shapes"),
        ({"shapes": []}, "shapes"),
        ({"shapes": "disc"}, "shapes"),
        ({"image_size": True}, "image_size"),
        ({"noise": -0.1}, "noise"),
        ({"noise": float("nan")}, "noise"),
    ],
)
def test_make_shapes_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_shapes(**kwargs)
