"""Keep glibc's allocator from handing tensor memory back to the kernel every step.

A training step of the estimators allocates and frees tens of temporaries of
one to twenty megabytes (every sample aligned to every prototype, for each
transformation).  glibc serves blocks above its ``mmap`` threshold with fresh
``mmap`` calls and returns the free top of its heap to the kernel above its
trim threshold, so with the defaults much of that memory can be faulted in
and zeroed page by page again at every step.  glibc raises its ``mmap``
threshold by itself when the process frees a large block, so how much this
costs depends on what the process did before.  Measured on a 2-core AMD EPYC
virtual machine (torch 2.13):

* a DTIKMeans fit of MNIST resized to 64 x 64 (10,000 images, 164 MB, above
  the largest adaptive threshold; ``max_iter=3``, two runs each): 72-73 s
  with the defaults, 50-54 s with the thresholds below; system time 39-46 s
  against 8 s;
* MNIST-test at 28 x 28: no measurable change in the fit time (``max_iter=10``,
  two runs each; and a whole fit with the defaults, 494 against 493 s with
  one thread), most likely because the process had freed blocks near the
  31 MB of the data set, which raised the adaptive threshold already;
* MNIST resized to 16 x 16 (``max_iter=6``, two comparisons of five
  alternating runs): 1.10 and 0.98 times the time with the defaults, no
  measurable change;
* single training steps on random data (``benchmarks/profile_step.py``,
  medians of three alternating runs): 31 against 21 ms on 28 x 28 images,
  120 against 84 ms on 64 x 64.

Peak memory of the whole MNIST-test fit: 872 MB against 826 MB with the
defaults.  A trim threshold of 128 MiB was not enough on
64 x 64 images, and setting only one of the two thresholds was slower than
the defaults, because any explicit setting switches off glibc's adaptive
threshold.

:func:`tune_malloc` sets both thresholds once per process, on Linux with
glibc only.  The change is process-wide and cannot be undone (glibc has no
way back to its dynamic threshold): freed blocks below 32 MiB stay in the
process for reuse, and up to :data:`TRIM_THRESHOLD` of free memory at the top
of the heap is kept instead of returned.  Set the
environment variable ``DTI_SKLEARN_TUNE_MALLOC=0`` to leave the allocator as
it is.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading

#: ``mallopt`` parameter numbers from glibc's ``malloc.h``.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap, not from ``mmap``: 32 MiB, the
#: largest value glibc accepts on 64-bit systems.
MMAP_THRESHOLD = 32 * 2**20
#: Free memory at the top of the heap kept for reuse rather than trimmed.
TRIM_THRESHOLD = 2**30
#: Environment variable that switches the tuning off when set to ``"0"``.
ENV_VARIABLE = "DTI_SKLEARN_TUNE_MALLOC"


class _State:
    """Whether this process has been through :func:`tune_malloc`."""

    lock = threading.Lock()
    done = False
    tuned = False


def _glibc_mallopt():
    """glibc's ``mallopt`` function, or None on another C library or system."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def tune_malloc() -> bool:
    """Raise glibc's ``mmap`` and trim thresholds, once per process.

    Called by the estimators before they fit or assign samples.  Does
    nothing when the environment variable ``DTI_SKLEARN_TUNE_MALLOC`` is
    ``"0"``, or off Linux with glibc.

    Returns
    -------
    bool
        Whether both thresholds are set in this process.
    """
    with _State.lock:
        if _State.done:
            return _State.tuned
        _State.done = True
        if os.environ.get(ENV_VARIABLE, "").strip() == "0":
            return False
        mallopt = _glibc_mallopt()
        if mallopt is None:
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        # mallopt returns 1 on success and 0 when it rejects the value.
        _State.tuned = bool(
            mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
        return _State.tuned
