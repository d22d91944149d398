"""Frame Flexible Network pieces (Zhang et al., CVPR 2023): per-frame-count norms and weight alterations.

A model trained at one frame count collapses at others, mostly through its BatchNorm statistics
(temporal frequency deviation). FFN trains one network at several counts with shared weights and
gives each count its own BatchNorm and a small per-count "weight alteration" (a depthwise 1x1 conv
added to its input) before each block's first conv. Every module here follows the clip's frame
count: `set_frames(t)` picks the copy of the trained count nearest t (a tie goes to the larger).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def nearest_count(counts: list[int], frames: int) -> int:
    """Index in sorted `counts` of the count nearest `frames`; a tie goes to the larger count."""
    return min(range(len(counts)), key=lambda i: (abs(counts[i] - frames), -counts[i]))


class CountSwitch(nn.Module):
    """One copy of a module per trained frame count; the clip's count picks which runs."""

    def __init__(self, module: nn.Module, counts: list[int]):
        super().__init__()
        self.counts = sorted(counts)
        self.copies = nn.ModuleList(copy.deepcopy(module) for _ in self.counts)
        self.active = len(self.counts) - 1

    def set_frames(self, frames: int) -> None:
        """Use the copy of the trained count nearest `frames`."""
        self.active = nearest_count(self.counts, frames)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.copies[self.active](x)


class Alteration(nn.Module):
    """x + a per-count depthwise 1x1 conv of x (FFN's weight alteration), initialised near zero.

    FFN's code draws the alteration from N(0, 1e-3) and then, by its ResNet's init loop, redraws it
    with Kaiming's init; we keep the stated near-zero start, so a converted pretrained network
    starts where it was.
    """

    def __init__(self, channels: int, counts: list[int]):
        super().__init__()
        self.counts = sorted(counts)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 1, groups=channels, bias=False) for _ in self.counts)
        for conv in self.convs:
            nn.init.normal_(conv.weight, std=1e-3)
        self.active = len(self.counts) - 1

    def set_frames(self, frames: int) -> None:
        """Use the alteration of the trained count nearest `frames`."""
        self.active = nearest_count(self.counts, frames)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.convs[self.active](x)


def specialise_norms(net: nn.Module, counts: list[int]) -> None:
    """Replace every BatchNorm2d of `net` (subclasses with their activation too) by per-count copies."""
    for name, child in list(net.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(net, name, CountSwitch(child, counts))
        else:
            specialise_norms(child, counts)


class Altered(nn.Sequential):
    """An Alteration, then `module`. In front of a plain conv the alteration, a per-channel scale by
    1 + w, is folded into the conv's weight (W[o, c] * (1 + w[c])): the same function and gradients
    for a weight-sized product instead of two passes over the activation each way, which cost FFN's
    step more than its frame counts did (docs/benchmarks.md). Parameter names are the Sequential's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alteration, module = self[0], self[1]
        if not _foldable(module):
            return module(alteration(x))
        scale = 1 + alteration.convs[alteration.active].weight.view(1, -1, 1, 1)
        return F.conv2d(x, module.weight * scale, module.bias, module.stride, module.padding, module.dilation)


def _foldable(module: nn.Module) -> bool:
    return type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros"


def alter_before(block: nn.Module, attr: str, channels: int, counts: list[int]) -> None:
    """Put an Alteration in front of `block.<attr>`."""
    setattr(block, attr, Altered(Alteration(channels, counts), getattr(block, attr)))
