"""BatchNorm statistics per group of clips: a batch's first clips normalised apart from the rest.

A student that trains on labelled and unlabelled clips in one batch computes its BatchNorm statistics
over both; with `train.unlabelled_norm: separate` the labelled clips are normalised with their own
batch's statistics, as labels alone would, and the unlabelled clips with theirs (docs/proxy_benchmark.md
says what that is worth). Every BatchNorm's input keeps the clips leading (a clip's frames are
consecutive rows), so the first group is the first `first / total` of its rows. The modules keep
their class and parameter names: checkpoints and imported weights are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class NormGroups:
    """Where the batch of the next training forwards splits: (first clips, all clips), or None for one group."""

    def __init__(self) -> None:
        self.split: tuple[int, int] | None = None


def separate_norms(model: nn.Module) -> NormGroups:
    """Make every BatchNorm of `model` (FFN's per-count copies and timm's norm-with-activation too)
    normalise the two groups of `NormGroups.split` apart while training; returns that switch."""
    groups = NormGroups()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.forward = _grouped(module, module.forward, groups)
    return groups


def _grouped(module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], groups: NormGroups):
    def forward_in_groups(x: torch.Tensor) -> torch.Tensor:
        if groups.split is None or not module.training:
            return forward(x)
        first, total = groups.split
        rows = x.shape[0] * first // total
        return torch.cat([forward(x[:rows]), forward(x[rows:])])

    return forward_in_groups
