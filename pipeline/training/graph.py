"""cuda: an engine's epoch as a CUDA graph over static input buffers.

One ml-100k model is far too small to occupy a GPU: an epoch at batch 64 is 1,250 steps of a
dozen kernels, each on 64 rows, so the launches cost more than the arithmetic. Captured once and
replayed, a launch costs the GPU's microsecond instead of a Python round trip.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

__all__ = ["EpochGraph"]


class EpochGraph:
    """run(*inputs, loss) -> loss: one epoch over same-shaped inputs, in place on the engine's
    tables. The first epoch runs eagerly on a side stream (CUDA's required warm-up, and a real
    epoch); the next one is captured, then every epoch copies its inputs into the buffers and
    replays. A capture that fails falls back to the eager epoch with a warning."""

    def __init__(self, run: Callable[..., torch.Tensor], models: int, device: torch.device) -> None:
        self.run, self.models, self.device = run, models, device
        self.graph, self.buffers, self.loss = None, None, None

    def _zeros(self) -> torch.Tensor:
        return torch.zeros(self.models, device=self.device)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.buffers is None:  # warm-up: an ordinary epoch, on a side stream
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                loss = self.run(*inputs, self._zeros())
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.buffers = [x.clone() for x in inputs]
            return loss
        if self.graph is None:
            self.graph = self._capture()
        if not self.graph:  # capture refused (nothing ran): the eager epoch, same mathematics
            return self.run(*inputs, self._zeros())
        for buffer, x in zip(self.buffers, inputs):
            buffer.copy_(x)
        self.graph.replay()
        return self.loss.clone()

    def _capture(self) -> torch.cuda.CUDAGraph | bool:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.loss = self.run(*self.buffers, self._zeros())
        except RuntimeError as exc:  # an op this torch cannot capture: slower, still right
            warnings.warn(f"CUDA graph capture of the epoch failed ({exc}); running it eagerly", stacklevel=2)
            return False
        return graph
