"""Inference in fixed-size batches: every sample sees the same batch shape.

Used by ``predict``, ``transform``, ``get_aligned_prototypes``, the final
assignment pass of ``fit`` and the split-and-merge check.
"""

from __future__ import annotations

import torch

from dti_sklearn._threads import torch_thread_budget, torch_thread_workers
from dti_sklearn._torch.network import PrototypeNetwork

#: Samples per inference batch, at most.
_INFERENCE_BATCH = 128

#: Aligned-prototype values (samples x prototypes x values per image) that an
#: inference batch holds at most on the CPU.  Past about this size the
#: element-wise passes over the aligned prototypes leave the caches: 1,024
#: random 64 x 64 RGB images, K = 10, two threads, `predict` took 4.01 s in
#: batches of 128, 1.54 s in 64, 1.28 s in 32, 1.39 s in 16; 64 x 64 grey
#: 0.55 / 0.54 / 0.59 / 0.60 s; 28 x 28 grey 0.13 / 0.15 / 0.19 / 0.30 s.
_INFERENCE_VALUES = 6 * 2**20


def inference_batch(network: PrototypeNetwork) -> int:
    """Samples per inference batch for ``network``: fixed by its shape and device alone.

    128, or on the CPU the largest power of two whose aligned prototypes
    hold at most ``_INFERENCE_VALUES`` values (32 for K = 10 prototypes of
    64 x 64 RGB images; 128 up to 64 x 64 grey).
    """
    prototypes = network.prototypes
    if prototypes.device.type != "cpu":
        return _INFERENCE_BATCH
    fits = _INFERENCE_VALUES // prototypes.numel()
    return min(_INFERENCE_BATCH, 1 << max(fits.bit_length() - 1, 0))


def inference_chunks(data: torch.Tensor, network: PrototypeNetwork):
    """Yield ``(chunk, n_valid)``: chunks for ``network``, the last one zero-padded.

    Every inference call sees exactly :func:`inference_batch` samples
    (fixed per model), so a sample's outputs do not depend on how
    many others it is predicted with (float32 convolutions and matrix
    products round differently for other batch sizes), as scikit-learn's
    invariance checks require.
    """
    size = inference_batch(network)
    for start in range(0, data.shape[0], size):
        chunk = data[start:start + size]
        n_valid = chunk.shape[0]
        if n_valid < size:
            chunk = torch.cat([chunk, chunk.new_zeros((size - n_valid, *chunk.shape[1:]))])
        yield chunk, n_valid


def chunk_workers(data: torch.Tensor, network: PrototypeNetwork) -> int:
    """How many chunks :func:`fill_in_chunks` computes at once.

    On the CPU, as many as torch's thread budget
    (:func:`~dti_sklearn._threads.torch_thread_budget`) and the number of
    chunks allow, as long as their aligned prototypes together stay within
    ``_INFERENCE_VALUES`` (the cache-sized budget of one chunk); 1 on other
    devices, whose kernels are queued on one stream.  A chunk's many small
    operators keep two threads busy less well than two chunks keep one
    thread each: on two cores, ``predict`` on the 10,000 MNIST-test images
    took 1.87 s against 2.28 s (median of seven), with the same outputs.
    Two chunks of 64 x 64 RGB images at once, past that budget, were 1.18
    times slower instead (docs/benchmarks.md).
    """
    if network.prototypes.device.type != "cpu":
        return 1
    size = inference_batch(network)
    n_chunks = -(-data.shape[0] // size)
    fit_in_cache = _INFERENCE_VALUES // (size * network.prototypes.numel())
    return max(1, min(torch_thread_budget(), n_chunks, fit_in_cache))


def fill_in_chunks(
    out: torch.Tensor, data: torch.Tensor, network: PrototypeNetwork, compute,
) -> torch.Tensor:
    """Write ``compute(chunk)`` for every chunk of ``data`` into the rows of ``out``.

    Chunks are those of :func:`inference_chunks` for ``network``; on the CPU
    :func:`chunk_workers` of them are computed at once, each by a worker
    thread that shares torch's thread budget with the others (a chunk's
    result does not depend on which worker computes it).

    ``out`` is allocated once by the caller: a small result tensor kept per
    chunk would land in the heap between that chunk's large temporaries and
    keep their space from being reused (resident memory grew by about 20 MB
    per chunk on 64 x 64 images, docs/benchmarks.md).
    """
    chunks, start = [], 0
    for x, n_valid in inference_chunks(data, network):
        chunks.append((x, start, n_valid))
        start += n_valid
    grad_enabled = torch.is_grad_enabled()  # thread-local: the workers copy it

    def fill(chunk: tuple[torch.Tensor, int, int]) -> None:
        x, first, n_valid = chunk
        with torch.set_grad_enabled(grad_enabled):
            out[first:first + n_valid].copy_(compute(x)[:n_valid])

    workers = chunk_workers(data, network)
    if workers == 1:
        for chunk in chunks:
            fill(chunk)
        return out
    with torch_thread_workers(workers, max(torch_thread_budget() // workers, 1)) as pool:
        for _ in pool.map(fill, chunks):
            pass
    return out
