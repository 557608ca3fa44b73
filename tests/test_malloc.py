"""The allocator thresholds set before fitting (dti_sklearn._malloc)."""

from __future__ import annotations

import platform
import sys

import numpy as np
import pytest

from dti_sklearn import DTIKMeans, _malloc


class _RecordingMallopt:
    """Stands in for glibc's ``mallopt``: records calls, returns a fixed status."""

    def __init__(self, status: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.status = status
        self.argtypes = self.restype = None

    def __call__(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self.status


@pytest.fixture
def fresh_state(monkeypatch):
    """A process that has not been through tune_malloc yet."""
    monkeypatch.setattr(_malloc._State, "done", False)
    monkeypatch.setattr(_malloc._State, "tuned", False)
    monkeypatch.delenv(_malloc.ENV_VARIABLE, raising=False)


def test_sets_both_thresholds_once(fresh_state, monkeypatch):
    fake = _RecordingMallopt()
    monkeypatch.setattr(_malloc, "_glibc_mallopt", lambda: fake)
    assert _malloc.tune_malloc() is True
    assert fake.calls == [
        (_malloc._M_MMAP_THRESHOLD, _malloc.MMAP_THRESHOLD),
        (_malloc._M_TRIM_THRESHOLD, _malloc.TRIM_THRESHOLD),
    ]
    assert _malloc.tune_malloc() is True
    assert len(fake.calls) == 2


def test_environment_variable_leaves_the_allocator_alone(fresh_state, monkeypatch):
    fake = _RecordingMallopt()
    monkeypatch.setattr(_malloc, "_glibc_mallopt", lambda: fake)
    monkeypatch.setenv(_malloc.ENV_VARIABLE, "0")
    assert _malloc.tune_malloc() is False
    assert fake.calls == []


def test_rejected_value_reports_false(fresh_state, monkeypatch):
    monkeypatch.setattr(_malloc, "_glibc_mallopt", lambda: _RecordingMallopt(status=0))
    assert _malloc.tune_malloc() is False


def test_without_glibc_nothing_is_called(fresh_state, monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert _malloc._glibc_mallopt() is None
    assert _malloc.tune_malloc() is False


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's; other C libraries are left alone",
)
def test_real_mallopt_accepts_the_thresholds(fresh_state):
    # glibc rejects an mmap threshold above 32 MiB on 64-bit systems: this
    # fails if the constant ever grows past what the C library takes.
    assert _malloc.tune_malloc() is True


def test_fit_tunes_before_training(fresh_state, monkeypatch):
    fake = _RecordingMallopt()
    monkeypatch.setattr(_malloc, "_glibc_mallopt", lambda: fake)
    X = np.random.default_rng(0).random((20, 8, 8))
    DTIKMeans(n_clusters=2, transforms=["identity"], max_iter=1, random_state=0).fit(X)
    assert len(fake.calls) == 2
