"""Training steps replayed from CUDA graphs.

On a GPU a DTI training step on small images is bound by kernel launches:
the host takes longer to queue the step's few hundred small kernels than the
device takes to run them (on an H200, 9.25 ms per step of 64 MNIST images
whatever the batch size).  A CUDA graph records the whole step once (forward,
backward and the optimizer's update) and replays it with a single launch.

:class:`GraphedSteps` wraps a step function ``step(x, active) -> (loss,
assigned)``.  It keeps one graph per (active transformations, batch shape):
the first ``warmup`` calls of a shape run eagerly on a side stream (lazy
initialisations such as the optimizer's state happen there, as
:class:`torch.cuda.CUDAGraph` asks), the next one records the step, and every
later one copies its batch into the recorded input and replays.  The graph
reads and writes the tensors it was recorded with, so:

- anything that changes parameters or optimizer state *in place* between
  steps (the empty-cluster and split-and-merge moves, a learning rate kept
  in a tensor and filled in place) is seen by the next replay;
- anything that *replaces* those tensors (``Optimizer.load_state_dict``)
  makes the graphs stale: call :meth:`GraphedSteps.clear` after it;
- the optimizer must be built with ``capturable=True`` and, for a learning
  rate that changes, a tensor learning rate (see :func:`graphable_optimizer_kwargs`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

import torch

#: A step: (batch, active transformations) -> (detached loss, cluster of each sample).
StepFunction = Callable[[torch.Tensor, list[int]], tuple[torch.Tensor, torch.Tensor]]

#: The warm-up stream of each device, shared by every fit of the process: cuBLAS
#: and cuBLASLt keep a workspace for each (handle, stream) until the process
#: ends (32 MiB each on Hopper GPUs), so a new stream per fit would hold about
#: 64 MB more after every fit (an H200 peaked 348, 412, 478, 543 and 608 MB
#: over five fits in one process with one stream per fit).
_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}


class _Recording(NamedTuple):
    """A recorded step with the tensors it reads and writes."""

    graph: torch.cuda.CUDAGraph
    x: torch.Tensor
    loss: torch.Tensor
    assigned: torch.Tensor


def graphs_available(device: torch.device) -> bool:
    """Whether training steps on ``device`` can be recorded as CUDA graphs."""
    return device.type == "cuda" and torch.cuda.is_available()


def graphable_optimizer_kwargs(learning_rate: float, device: torch.device) -> dict:
    """Keyword arguments that let ``torch.optim.Adam`` run inside a CUDA graph.

    ``capturable=True`` keeps the step count on the device; a learning rate
    in a device tensor lets the schedule change it between replays (fill it
    in place, never reassign it).
    """
    return {
        "lr": torch.tensor(float(learning_rate), device=device),
        "capturable": True,
        "fused": True,
    }


def set_learning_rate(
    optimizer: torch.optim.Optimizer, value: float, group_index: int | None = None,
) -> None:
    """Set every group's learning rate, or group ``group_index``'s only.

    A tensor learning rate is filled in place (a CUDA graph reads it there).
    """
    groups = optimizer.param_groups
    for group in groups if group_index is None else [groups[group_index]]:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


class GraphedSteps:
    """A training step replayed from one CUDA graph per (active, batch shape).

    Parameters
    ----------
    step : callable
        ``step(x, active) -> (loss, assigned)``: one eager training step
        (zeroing the gradients to None, backward, optimizer step) with no
        host synchronisation.  It is run as is during warm-up and recording.
    warmup : int, default=2
        Eager calls of each (active, batch shape) before it is recorded.

    Attributes
    ----------
    n_recorded : int
        Graphs recorded so far, including cleared ones.
    n_replayed : int
        Steps replayed from a graph so far.
    """

    def __init__(self, step: StepFunction, warmup: int = 2) -> None:
        self._step = step
        self._warmup = warmup
        self._recordings: dict[tuple, _Recording] = {}
        self._eager_calls: Counter = Counter()
        self.n_recorded = 0
        self.n_replayed = 0

    def __call__(self, x: torch.Tensor, active: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one training step on ``x``; return the loss and each sample's cluster.

        The returned tensors are copies: later replays do not change them.
        """
        key = (tuple(active), tuple(x.shape), x.dtype)
        recording = self._recordings.get(key)
        if recording is None:
            if self._eager_calls[key] < self._warmup:
                self._eager_calls[key] += 1
                return self._eager_on_side_stream(x, active)
            recording = self._record(x, active)
            self._recordings[key] = recording
        else:
            recording.x.copy_(x)
        recording.graph.replay()
        self.n_replayed += 1
        return recording.loss.clone(), recording.assigned.clone()

    def clear(self) -> None:
        """Drop every graph (after the optimizer's or the parameters' tensors were replaced)."""
        self._recordings.clear()
        self._eager_calls.clear()

    def _eager_on_side_stream(
        self, x: torch.Tensor, active: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        side = _side_stream(x.device)
        current = torch.cuda.current_stream(x.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            loss, assigned = self._step(x, active)
        current.wait_stream(side)
        # The results were made on the side stream and are used on this one.
        loss.record_stream(current)
        assigned.record_stream(current)
        return loss, assigned

    def _record(self, x: torch.Tensor, active: list[int]) -> _Recording:
        static_x = x.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                loss, assigned = self._step(static_x, active)
        except RuntimeError as error:
            raise RuntimeError(
                "Recording the training step as a CUDA graph failed. A step that reads "
                "values back to the host (.item(), .cpu(), .tolist(), data-dependent shapes "
                "such as nonzero() or boolean-mask indexing), for instance in a custom "
                "transformation, cannot be recorded. Pass cuda_graphs=False to the "
                "estimator to train with eager steps."
            ) from error
        self.n_recorded += 1
        # Recording runs nothing: the step on this batch happens at the replay.
        return _Recording(graph, static_x, loss, assigned)


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """The process's warm-up stream on ``device`` (see ``_SIDE_STREAMS``)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream(device=index)
    return _SIDE_STREAMS[index]
