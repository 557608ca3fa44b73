"""Signed distances of ten plane shapes, for :func:`dti_sklearn.datasets.make_shapes`.

Every function takes the canonical coordinates ``u`` (right) and ``v``
(down) of points, arrays of any one shape, and returns a same-shaped array:
negative inside the shape, positive outside, in canonical units.  The
shapes fit in ``[-0.8, 0.8]^2``.  Unions and differences of primitives use
the minimum and maximum of their distances, which is exact inside and a
close bound outside: enough to antialias edges of about one pixel.  The ten
are pairwise distinct under affine maps (no two are an affine image of each
other), so a transformation-invariant clustering can tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _box(u: np.ndarray, v: np.ndarray, half_width: float, half_height: float) -> np.ndarray:
    return np.maximum(np.abs(u) - half_width, np.abs(v) - half_height)


def _disc(u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    return np.hypot(u, v) - radius


def _convex_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Largest signed distance to the edges' lines (vertices clockwise as drawn, v down)."""
    distance = np.full(np.shape(u), -np.inf)
    for start, end in zip(vertices, np.roll(vertices, -1, axis=0)):
        edge = end - start
        normal = np.array([edge[1], -edge[0]]) / np.hypot(*edge)  # outward
        np.maximum(distance, (u - start[0]) * normal[0] + (v - start[1]) * normal[1],
                   out=distance)
    return distance


_TRIANGLE = np.array([[0.0, -0.75], [0.8, 0.6], [-0.8, 0.6]])


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A five-pointed star: radius 0.8 at the points, 0.35 between them."""
    angle = np.mod(np.arctan2(u, -v), 2 * np.pi / 5) / (2 * np.pi / 5)  # 0 at a point
    radius = 0.35 + 0.45 * np.abs(1 - 2 * angle)
    return (np.hypot(u, v) - radius) * 0.6  # steep sides: a rough distance scale


#: The shapes, in label order.
SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disc": lambda u, v: _disc(u, v, 0.75),
    "ring": lambda u, v: np.abs(np.hypot(u, v) - 0.55) - 0.2,
    "square": lambda u, v: _box(u, v, 0.65, 0.65),
    "frame": lambda u, v: np.maximum(_box(u, v, 0.75, 0.75), -_box(u, v, 0.4, 0.4)),
    "triangle": lambda u, v: _convex_polygon(u, v, _TRIANGLE),
    "plus": lambda u, v: np.minimum(_box(u, v, 0.75, 0.22), _box(u, v, 0.22, 0.75)),
    "ell": lambda u, v: np.minimum(
        _box(u + 0.5, v, 0.22, 0.75), _box(u, v - 0.53, 0.72, 0.22)
    ),
    "tee": lambda u, v: np.minimum(
        _box(u, v + 0.53, 0.75, 0.22), _box(u, v, 0.22, 0.75)
    ),
    "star": _star,
    "crescent": lambda u, v: np.maximum(_disc(u, v, 0.75), -_disc(u - 0.4, v, 0.6)),
}
