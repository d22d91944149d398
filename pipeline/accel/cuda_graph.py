"""Replay a fixed-shape forward pass as one CUDA graph: one launch instead of hundreds.

The teacher's ViT forward is ~200 small kernel launches; with data loading and writing threads in
the same process, each launch waits for the GIL and the GPU idles between them. A graph replay
needs the GIL once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class GraphedForward:
    """fn on inputs of up to `example.shape[0]` rows, replayed from a captured CUDA graph.

    Smaller inputs are padded with whatever the static buffer holds: fn must treat rows
    independently (true of a ViT in eval mode), and only the first rows are returned.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor):
        self.fn = fn
        self.static_in = example.clone()
        side = torch.cuda.Stream(example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up outside the graph: cuBLAS handles, autotuning
                fn(self.static_in)
        torch.cuda.current_stream(example.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = fn(self.static_in)

    @property
    def batch(self) -> int:
        """The most rows one replay takes."""
        return self.static_in.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """fn(x) for x with at most `batch` rows."""
        n = x.shape[0]
        self.static_in[:n].copy_(x)
        self.graph.replay()
        return self.static_out[:n].clone()
