"""Tests for dti_sklearn.plotting."""

from __future__ import annotations

import builtins
import sys

import numpy as np
import pytest

from dti_sklearn import plotting
from dti_sklearn.plotting import (
    plot_aligned_prototypes,
    plot_prototypes,
    save_figure,
)

# plotting imports matplotlib lazily, so the module above imports without it.
Figure = pytest.importorskip("matplotlib.figure").Figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("shape", [(10, 8, 8), (10, 8, 8, 1), (4, 6, 5, 3)])
def test_plot_prototypes_axes_count(shape):
    protos = np.random.default_rng(0).uniform(-0.5, 1.5, size=shape)  # needs clipping
    fig = plot_prototypes(protos, title="prototypes")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == shape[0]
    assert fig.axes[0].get_title() == "0"


def test_plot_prototypes_grid_and_gray_cmap():
    fig = plot_prototypes(np.zeros((7, 5, 5)), ncols=3)
    assert len(fig.axes) == 7
    rows, cols = fig.axes[0].get_subplotspec().get_geometry()[:2]
    assert (rows, cols) == (3, 3)
    image = fig.axes[0].get_images()[0]
    assert image.get_cmap().name == "gray"
    assert image.get_clim() == (0.0, 1.0)


def test_plot_prototypes_clips_values():
    fig = plot_prototypes(np.full((2, 3, 3, 3), 2.0))
    data = np.asarray(fig.axes[0].get_images()[0].get_array())
    assert data.max() == 1.0


def test_plot_prototypes_reuses_given_figure():
    fig = Figure()
    fig.add_subplot(1, 1, 1)
    out = plot_prototypes(np.zeros((3, 4, 4)), fig=fig)
    assert out is fig
    assert len(fig.axes) == 3


@pytest.mark.parametrize("bad", [np.zeros((3, 4)), np.zeros((3, 4, 4, 2))])
def test_plot_prototypes_bad_shape(bad):
    with pytest.raises(ValueError, match="prototypes must have"):
        plot_prototypes(bad)


@pytest.mark.parametrize("image_shape", [(8, 8), (8, 8, 3)])
def test_plot_aligned_prototypes_grid_and_highlight(image_shape):
    rng = np.random.default_rng(0)
    n, k = 5, 4
    images = rng.random((n, *image_shape))
    aligned = rng.random((n, k, *image_shape))
    labels = np.array([0, 3, 1, 2, 0])
    fig = plot_aligned_prototypes(images, aligned, labels=labels, n_samples=3)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 * (k + 1)
    for i in range(3):
        row = fig.axes[i * (k + 1) : (i + 1) * (k + 1)]
        framed = [j for j, ax in enumerate(row[1:]) if ax.spines["left"].get_visible()]
        assert framed == [labels[i]]


def test_plot_aligned_prototypes_without_labels_frames_nothing():
    fig = plot_aligned_prototypes(np.zeros((2, 4, 4)), np.zeros((2, 3, 4, 4)))
    assert len(fig.axes) == 2 * 4
    assert not any(
        ax.spines["left"].get_visible() for i, ax in enumerate(fig.axes) if i % 4
    )


def test_plot_aligned_prototypes_shape_mismatch():
    with pytest.raises(ValueError, match="does not match"):
        plot_aligned_prototypes(np.zeros((2, 4, 4)), np.zeros((2, 3, 5, 5)))
    with pytest.raises(ValueError, match="labels must lie"):
        plot_aligned_prototypes(
            np.zeros((2, 4, 4)), np.zeros((2, 3, 4, 4)), labels=[0, 3]
        )


def test_save_figure_writes_png(tmp_path):
    fig = plot_prototypes(np.random.default_rng(1).random((3, 6, 6)))
    path = save_figure(fig, tmp_path / "protos.png")
    assert path == tmp_path / "protos.png"
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_no_pyplot_state_touched():
    before = sys.modules.get("matplotlib.pyplot")
    fig = plot_prototypes(np.zeros((2, 4, 4)))
    assert fig is not None
    if before is None:
        assert "matplotlib.pyplot" not in sys.modules
    else:
        assert not any(m is fig for m in before.get_fignums())


def test_missing_matplotlib_message(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"install dti_sklearn\[plot\]"):
        plotting.plot_prototypes(np.zeros((2, 4, 4)))
    with pytest.raises(ImportError, match=r"install dti_sklearn\[plot\]"):
        plotting.save_figure(object(), "unused.png")


def _drawn(fig, index=0):
    return np.asarray(fig.axes[index].get_images()[0].get_array())


def test_value_range_maps_other_units_to_the_same_picture():
    protos = np.random.default_rng(0).uniform(0.0, 1.0, size=(3, 5, 5))
    unit = plot_prototypes(protos)
    bytes_ = plot_prototypes(protos * 255 - 20, value_range=(-20, 235))
    np.testing.assert_allclose(_drawn(bytes_), _drawn(unit))
    # without the range, values above 1 are clipped: a white picture
    assert _drawn(plot_prototypes(protos * 255 + 1)).min() == 1.0


def test_uint8_images_are_drawn_like_the_estimators_read_them():
    images = np.random.default_rng(1).integers(0, 256, size=(2, 4, 4), dtype=np.uint8)
    aligned = np.repeat(images[:, None], 3, axis=1)
    fig = plot_aligned_prototypes(images, aligned)
    np.testing.assert_allclose(_drawn(fig), images[0] / 255.0)
    np.testing.assert_allclose(_drawn(plot_prototypes(images), 1), images[1] / 255.0)


@pytest.mark.parametrize("bad", [(1.0, 1.0), (2.0, 0.0), (0.0, float("nan"))])
def test_value_range_must_be_increasing(bad):
    with pytest.raises(ValueError, match="value_range"):
        plot_prototypes(np.zeros((2, 3, 3)), value_range=bad)
