"""Small image data set readers for examples, tests and benchmarks.

Nothing here downloads anything: readers take local files and say where they
looked when the files are missing.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["load_digits_images", "load_idx", "load_mnist", "make_mnist_color"]

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
    mask = np.clip(mask, 0.0, 1.0)[..., None]  # (n, H, W, 1)
    rng = np.random.default_rng(random_state)
    colors = rng.random((images.shape[0], 2, 3), dtype=np.float32)
    fg = colors[:, None, None, 0, :]  # (n, 1, 1, 3)
    bg = colors[:, None, None, 1, :]
    # bg * (1 - m) + fg * m, written as bg + m * (fg - bg) to build one big array only.
    colored = mask * (fg - bg)
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
