"""Keep torch's CPU threads within the share of the machine a fit may use.

Findings that shape this module (joblib 1.6, torch 2.x, Linux):

* joblib's default ``loky`` backend starts its workers with
  ``OMP_NUM_THREADS`` (and the MKL/OpenBLAS equivalents) set to
  ``cpu_count() // n_jobs`` unless the parent already set them; torch reads
  ``OMP_NUM_THREADS`` when it starts, so ``GridSearchCV(n_jobs=2)`` workers
  already run torch with their share.  Nothing is needed there.
* The ``threading`` and ``multiprocessing`` backends set nothing: every
  worker runs torch with the full default thread count, ``n_jobs`` times
  over.
* torch's default thread count is the number of cores torch sees, which
  ignores container CPU quotas (cgroups); :func:`joblib.cpu_count` honours
  them, and CPU affinity.

:func:`limit_torch_threads` lowers (never raises) torch's intra-op thread
count for the duration of a fit to what these rules allow, then restores it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from joblib import cpu_count
from joblib.parallel import get_active_backend

_F = TypeVar("_F", bound=Callable)


def _env_limit() -> int | None:
    """``OMP_NUM_THREADS`` as a positive integer, or None when unset or invalid."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    try:
        limit = int(value)
    except ValueError:
        return None
    return limit if limit >= 1 else None


def _in_unlimited_joblib_worker() -> bool:
    """Whether this code runs in a joblib worker whose backend set no thread limit.

    joblib runs every task of a parallel call under a nested backend whose
    ``nesting_level`` is at least 1 (a sequential call stays at 0).  Workers
    of the ``loky`` backend get ``OMP_NUM_THREADS``; workers of the threading
    and multiprocessing backends do not, and nothing tells them how many
    siblings share the machine.
    """
    backend, _ = get_active_backend()
    nested = (getattr(backend, "nesting_level", 0) or 0) >= 1
    return nested and _env_limit() is None


def torch_thread_budget() -> int:
    """Number of intra-op threads a fit may give torch here and now.

    The smallest of: torch's current setting (an explicit
    ``torch.set_num_threads`` is respected), :func:`joblib.cpu_count` (which
    honours CPU affinity and container quotas), ``OMP_NUM_THREADS`` when set
    (as joblib's ``loky`` workers have it), and 1 inside a worker of a joblib
    backend that sets no limit (``threading``, ``multiprocessing``), whose
    share of the machine is unknown.  Give such workers more threads with the
    ``loky`` backend and ``joblib.parallel_config(inner_max_num_threads=k)``.

    Returns
    -------
    int
        At least 1.
    """
    budget = min(torch.get_num_threads(), cpu_count())
    env = _env_limit()
    if env is not None:
        budget = min(budget, env)
    if _in_unlimited_joblib_worker():
        budget = 1
    return max(int(budget), 1)


class _Active:
    """Fits running under :func:`limit_torch_threads` in this process."""

    lock = threading.Lock()
    count = 0
    saved: int | None = None


def limit_torch_threads(method: _F) -> _F:
    """Decorate a ``fit`` method to run it within :func:`torch_thread_budget`.

    torch's thread count is lowered only when it exceeds the budget, and set
    back when the last running fit of the process returns or raises (torch's
    setting is process-wide, so fits running in several threads at once share
    it).  A fit that already runs within its budget, the usual case, changes
    nothing.

    Parameters
    ----------
    method : callable
        The method to wrap.

    Returns
    -------
    callable
        The wrapped method.
    """

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        budget = torch_thread_budget()
        with _Active.lock:
            if _Active.count == 0:
                _Active.saved = torch.get_num_threads()
            _Active.count += 1
            if budget < torch.get_num_threads():
                torch.set_num_threads(budget)
        try:
            return method(*args, **kwargs)
        finally:
            with _Active.lock:
                _Active.count -= 1
                saved = _Active.saved
                if _Active.count == 0 and saved is not None:
                    if torch.get_num_threads() != saved:
                        torch.set_num_threads(saved)
                    _Active.saved = None

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def torch_thread_workers(n_workers: int, threads_each: int):
    """A pool of ``n_workers`` threads, each running torch with ``threads_each`` threads.

    OpenMP's thread count is per thread, so each worker sets its own on
    start; but torch also keeps the count for threads started later and
    MKL's, both process-wide, so the caller's count is set back on exit.

    Parameters
    ----------
    n_workers : int
        Number of worker threads.
    threads_each : int
        torch's intra-op threads in each worker.

    Yields
    ------
    concurrent.futures.ThreadPoolExecutor
    """
    saved = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(
            n_workers, initializer=torch.set_num_threads, initargs=(threads_each,),
        ) as pool:
            yield pool
    finally:
        torch.set_num_threads(saved)


__all__ = ["limit_torch_threads", "torch_thread_budget", "torch_thread_workers"]
