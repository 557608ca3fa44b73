"""Small image data sets for examples, tests and benchmarks.

Readers of local files (MNIST's idx files, scikit-learn's digits) and
generators (coloured digits, plane shapes).  Nothing here downloads
anything: readers take local files and say where they looked when the files
are missing.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from dti_sklearn._shapes import SHAPES

__all__ = [
    "SHAPE_NAMES", "load_digits_images", "load_idx", "load_mnist", "make_mnist_color",
    "make_shapes",
]

# idx data type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_GZIP_MAGIC = b"\x1f\x8b"
_MNIST_ENV = "DTI_SKLEARN_MNIST"
_MNIST_URL = "https://yann.lecun.com/exdb/mnist/"
_MNIST_PREFIX = {"test": "t10k", "train": "train"}
#: Names of :func:`make_shapes`'s classes, in label order.
SHAPE_NAMES: tuple[str, ...] = tuple(SHAPES)
#: Ranges of :func:`make_shapes`'s random poses: rotation (degrees either
#: way), scale (of the shape's extent relative to the image), aspect ratio
#: (either way) and shift (fraction of the image's half-side, either way).
_SHAPE_ROTATION, _SHAPE_SCALE, _SHAPE_ASPECT, _SHAPE_SHIFT = 30.0, (0.55, 0.9), 1.2, 0.15


def _read_bytes(path: Path) -> bytes:
    """Read a file, decompressing it when it starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
        return gzip.decompress(raw)
    return raw


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (the MNIST file format) into a numpy array.

    The file may be gzip-compressed; compression is detected from the first two
    bytes (``0x1f 0x8b``), not from the file name. The header is two zero bytes,
    one byte giving the data type, one byte giving the number of dimensions,
    then each dimension as a big-endian 32-bit integer.

    Parameters
    ----------
    path : str or path-like
        Path of the idx file.

    Returns
    -------
    data : ndarray
        Array with the shape given in the header and the native-endian version
        of the dtype given in the header (``uint8`` for MNIST).

    Raises
    ------
    ValueError
        If the header is malformed (bad magic number, unknown type code,
        truncated header) or the payload size does not match the header.

    Examples
    --------
    >>> import gzip, tempfile, os
    >>> raw = bytes([0, 0, 0x08, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    >>> raw += bytes(range(6))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "a.idx.gz")
    ...     with open(p, "wb") as f:
    ...         _ = f.write(gzip.compress(raw))
    ...     load_idx(p)
    array([[0, 1, 2],
           [3, 4, 5]], dtype=uint8)
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(
            f"{path}: not an idx file (shorter than the 4-byte magic number)."
        )
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{path}: not an idx file (magic number must start with two zero bytes, "
            f"got {raw[:4].hex()})."
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(
            f"{path}: unknown idx data type code 0x{code:02X} (known: {known})."
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(
            f"{path}: truncated idx header ({ndim} dimensions need {header_size} bytes, "
            f"the file has {len(raw)})."
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    if any(d < 0 for d in shape):
        raise ValueError(f"{path}: negative dimension in idx header {shape}.")
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header_size != expected:
        raise ValueError(
            f"{path}: idx header announces shape {shape} of {dtype} ({expected} bytes) "
            f"but the payload has {len(raw) - header_size} bytes."
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def _default_mnist_path() -> Path:
    """The MNIST folder from the environment, else ``../shared/data/mnist``."""
    env = os.environ.get(_MNIST_ENV)
    if env:
        return Path(env)
    return Path.cwd() / ".." / "shared" / "data" / "mnist"


def _find_idx(folder: Path, stem: str) -> Path:
    """Return ``folder/stem.gz`` or ``folder/stem``, or raise FileNotFoundError."""
    candidates = [folder / f"{stem}.gz", folder / stem]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = " or ".join(str(c.resolve()) for c in candidates)
    raise FileNotFoundError(
        f"MNIST file {stem!r} not found: looked for {looked}. "
        f"Download the MNIST idx files yourself (from the MNIST site, {_MNIST_URL}), "
        f"put them in one folder and pass it as `path` or set the {_MNIST_ENV} "
        "environment variable. dti_sklearn never downloads data."
    )


def load_mnist(
    path: str | os.PathLike | None = None, subset: str = "test"
) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST digits from local idx files.

    Parameters
    ----------
    path : str, path-like or None, default=None
        Folder holding ``t10k-images-idx3-ubyte(.gz)`` and
        ``t10k-labels-idx1-ubyte(.gz)`` (``train-...`` for the training set).
        If None, the ``DTI_SKLEARN_MNIST`` environment variable is used, else
        ``../shared/data/mnist`` relative to the current working directory.
    subset : {"test", "train"}, default="test"
        Which MNIST split to read. "test" has 10,000 images, "train" 60,000.

    Returns
    -------
    images : ndarray of shape (n_samples, 28, 28), dtype uint8
        Grey-level digits, 0 (background) to 255.
    labels : ndarray of shape (n_samples,), dtype int64
        Digit classes 0-9.

    Raises
    ------
    FileNotFoundError
        If the files are absent; the message lists the paths tried.
    ValueError
        If ``subset`` is unknown or the files are inconsistent.
    """
    if subset not in _MNIST_PREFIX:
        raise ValueError(
            f"subset must be one of {sorted(_MNIST_PREFIX)}, got {subset!r}."
        )
    folder = Path(path) if path is not None else _default_mnist_path()
    prefix = _MNIST_PREFIX[subset]
    images = load_idx(_find_idx(folder, f"{prefix}-images-idx3-ubyte"))
    labels = load_idx(_find_idx(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"MNIST images must be a 3-D uint8 idx array, got shape {images.shape} "
            f"and dtype {images.dtype}."
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"MNIST labels of shape {labels.shape} do not match {images.shape[0]} images."
        )
    return images, labels.astype(np.int64)


def make_mnist_color(images: np.ndarray, random_state: int | None = 0) -> np.ndarray:
    """Colour grey-level digits with a random foreground and background colour.

    Each image gets its own foreground colour ``fg`` and background colour
    ``bg``, both drawn uniformly in ``[0, 1]^3``; pixel ``p`` becomes
    ``bg * (1 - m_p) + fg * m_p`` where ``m_p`` is the grey level in [0, 1].
    This is the "MNIST-color" data set of the DTI clustering paper.

    Parameters
    ----------
    images : ndarray of shape (n_samples, height, width)
        Grey-level images. Integer images are divided by 255; floating-point
        images are taken to be in [0, 1] already.
    random_state : int or None, default=0
        Seed for :func:`numpy.random.default_rng`; the same seed gives the same
        colours.

    Returns
    -------
    colored : ndarray of shape (n_samples, height, width, 3), dtype float32
        RGB images in [0, 1].

    Raises
    ------
    ValueError
        If ``images`` is not 3-D.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((2, 4, 4), dtype=np.uint8)
    >>> make_mnist_color(x, random_state=0).shape
    (2, 4, 4, 3)
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(
            f"images must have shape (n_samples, height, width), got shape {images.shape}."
        )
    if np.issubdtype(images.dtype, np.integer):
        mask = images.astype(np.float32) / np.float32(255.0)
    else:
        mask = images.astype(np.float32)
    return _colorize(np.clip(mask, 0.0, 1.0), np.random.default_rng(random_state))


def _colorize(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``bg + m * (fg - bg)`` per image, ``fg`` and ``bg`` uniform in ``[0, 1]^3``.

    ``mask`` is (n, H, W) in [0, 1]; returns (n, H, W, 3) float32 in [0, 1].
    """
    colors = rng.random((mask.shape[0], 2, 3), dtype=np.float32)
    fg = colors[:, None, None, 0, :]  # (n, 1, 1, 3)
    bg = colors[:, None, None, 1, :]
    # bg * (1 - m) + fg * m, written as bg + m * (fg - bg) to build one big array only.
    colored = mask[..., None] * (fg - bg)
    colored += bg
    return np.clip(colored, 0.0, 1.0, out=colored)


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """Load scikit-learn's 8x8 digits as images in [0, 1].

    Returns
    -------
    images : ndarray of shape (1797, 8, 8), dtype float32
        Grey levels divided by 16, so in [0, 1].
    labels : ndarray of shape (1797,), dtype int64
        Digit classes 0-9.

    See Also
    --------
    sklearn.datasets.load_digits : The underlying loader (bundled with scikit-learn).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float32) / np.float32(16.0)
    return images, np.asarray(digits.target, dtype=np.int64)


def make_shapes(
    n_samples: int = 1000, image_size: int = 32, shapes: Sequence[str] | None = None,
    color: bool = True, noise: float = 0.0, random_state: int | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Images of plane shapes in random poses and colours, with their classes.

    A clustering problem whose classes differ in shape only: disc, ring,
    square, square frame, triangle, plus, L, T, star and crescent
    (:data:`SHAPE_NAMES`; no two are an affine image of each other), each
    drawn with antialiased edges, rotated by up to 30 degrees either way,
    scaled to 55-90 % of the image, stretched by up to 1.2 along one axis
    and shifted by up to 15 % of the half-side.  With ``color`` every image
    gets a random foreground and background colour, as in
    :func:`make_mnist_color`.  Raw-pixel K-means sorts these by pose and
    colour; a transformation-invariant model should sort them by shape.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of images; the classes take turns, so their sizes differ by
        one at most.
    image_size : int, default=32
        Side of the square images, at least 8.
    shapes : sequence of str or None, default=None
        The classes, by their names in :data:`SHAPE_NAMES`; None takes all
        ten.  Labels index this sequence.
    color : bool, default=True
        Random foreground and background colours (RGB images); False draws
        white shapes on black (grey images).
    noise : float, default=0.0
        Standard deviation of Gaussian noise added to every value, before
        the values are clipped to [0, 1].
    random_state : int or None, default=0
        Seed for :func:`numpy.random.default_rng`; the same seed gives the
        same images.

    Returns
    -------
    images : ndarray of float32
        Shape (n_samples, image_size, image_size, 3) with ``color``, else
        (n_samples, image_size, image_size); values in [0, 1].
    labels : ndarray of shape (n_samples,), dtype int64
        Index of each image's shape in ``shapes`` (:data:`SHAPE_NAMES` by
        default).

    Raises
    ------
    ValueError
        If a parameter is out of its range.

    Examples
    --------
    >>> images, labels = make_shapes(20, image_size=16, random_state=0)
    >>> images.shape, images.dtype
    ((20, 16, 16, 3), dtype('float32'))
    >>> np.bincount(labels).tolist()
    [2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    >>> SHAPE_NAMES[labels[0]]
    'triangle'
    """
    for name, value, low in [("n_samples", n_samples, 1), ("image_size", image_size, 8)]:
        if not isinstance(value, Integral) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    if not isinstance(noise, Real) or not noise >= 0:
        raise ValueError(f"noise must be a non-negative number, got {noise!r}.")
    names = SHAPE_NAMES if shapes is None else shapes
    if isinstance(names, str) or len(names) == 0 or not set(names) <= set(SHAPES):
        raise ValueError(
            f"shapes must be a non-empty sequence of names from {SHAPE_NAMES}, got {shapes!r}."
        )
    n_classes = len(names)
    rng = np.random.default_rng(random_state)
    labels = rng.permutation(np.arange(n_samples) % n_classes).astype(np.int64)
    angle = np.deg2rad(rng.uniform(-_SHAPE_ROTATION, _SHAPE_ROTATION, n_samples))
    scale = rng.uniform(*_SHAPE_SCALE, n_samples)
    aspect = np.exp(rng.uniform(-1.0, 1.0, n_samples) * np.log(_SHAPE_ASPECT))
    shift = rng.uniform(-_SHAPE_SHIFT, _SHAPE_SHIFT, (n_samples, 2))
    centres = (np.arange(image_size) + 0.5) * (2.0 / image_size) - 1.0
    x = centres[None, None, :] - shift[:, 0, None, None]  # (n, 1, W)
    y = centres[None, :, None] - shift[:, 1, None, None]  # (n, H, 1)
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (cos * x + sin * y) / (scale * aspect)[:, None, None]  # undo the pose
    v = (cos * y - sin * x) / (scale / aspect)[:, None, None]
    mask = np.empty((n_samples, image_size, image_size), dtype=np.float32)
    for label, distance in enumerate(SHAPES[name] for name in names):
        members = labels == label
        # Signed distance in pixels (canonical units times the scale's pixels
        # per unit), then a one-pixel ramp across the edge.
        pixels = distance(u[members], v[members]) * (scale[members] * image_size / 2)[
            :, None, None
        ]
        mask[members] = np.clip(0.5 - pixels, 0.0, 1.0)
    images = _colorize(mask, rng) if color else mask
    if noise > 0:
        images += rng.normal(0.0, noise, images.shape).astype(np.float32)
        np.clip(images, 0.0, 1.0, out=images)
    return images, labels
