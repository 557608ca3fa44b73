"""Inference in fixed-size batches: every sample sees the same batch shape.

Used by ``predict``, ``transform``, ``get_aligned_prototypes``, the final
assignment pass of ``fit`` and the split-and-merge check.
"""

from __future__ import annotations

import torch

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


def fill_in_chunks(
    out: torch.Tensor, data: torch.Tensor, network: PrototypeNetwork, compute,
) -> torch.Tensor:
    """Write ``compute(chunk)`` for every chunk of ``data`` into the rows of ``out``.

    Chunks are those of :func:`inference_chunks` for ``network``.

    ``out`` is allocated once by the caller: a small result tensor kept per
    chunk would land in the heap between that chunk's large temporaries and
    keep their space from being reused (resident memory grew by about 20 MB
    per chunk on 64 x 64 images, docs/benchmarks.md).
    """
    start = 0
    for x, n_valid in inference_chunks(data, network):
        out[start:start + n_valid].copy_(compute(x)[:n_valid])
        start += n_valid
    return out
