"""Reusable host buffers for device-to-host copies."""

from __future__ import annotations

import torch


class HostBuffers:
    """Reusable host buffers for device-to-host copies, page-locked on CUDA.

    A copy into page-locked memory is asynchronous: it neither blocks the launching thread until
    the GPU gets to it nor goes through the driver's staging path, where a pending copy stalls
    every other thread's pageable copies. Allocating page-locked memory is slow and synchronises
    the device, so the buffers are made once per turn and reused; the caller is done with turn k's
    buffers before it asks for turn k + turns.
    """

    def __init__(self, turns: int, pinned: bool):
        self.turns, self.pinned = turns, pinned
        self._buffers: dict = {}

    def copy(self, turn: int, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Start copying each tensor into the buffers of `turn % turns`; returns the host views."""
        out = []
        for i, t in enumerate(tensors):
            key = (turn % self.turns, i)
            buf = self._buffers.get(key)
            if buf is None or buf.dtype != t.dtype or buf.numel() < t.numel():
                buf = torch.empty(t.numel(), dtype=t.dtype, pin_memory=self.pinned)
                self._buffers[key] = buf
            out.append(buf[: t.numel()].view(t.shape).copy_(t, non_blocking=self.pinned))
        return out
