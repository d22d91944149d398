"""BatchNorm statistics per group of clips: a batch's first clips normalised apart from the rest.

A student that trains on labelled and unlabelled clips in one batch computes its BatchNorm statistics
over both; with `train.unlabelled_norm: separate` the labelled clips are normalised with their own
batch's statistics, as labels alone would, and the unlabelled clips with theirs (docs/proxy_benchmark.md
says what that is worth). The running statistics follow the first group alone, so evaluation
normalises as a run on the labelled clips would. Every BatchNorm's input keeps the clips leading (a
clip's frames are consecutive rows), so the first group is the first `first / total` of its rows. The
modules keep their class and parameter names: checkpoints and imported weights are unchanged.
"""

from __future__ import annotations

import functools

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
            if isinstance(module.forward, functools.partial):
                raise ValueError(f"{type(module).__name__} already normalises in groups")
            # a partial of a module-level function: a deep copy or a pickle of the model keeps it
            module.forward = functools.partial(_forward_in_groups, module, groups)
    return groups


def _forward_in_groups(module: nn.Module, groups: NormGroups, x: torch.Tensor) -> torch.Tensor:
    forward = type(module).forward
    if groups.split is None or not module.training:
        return forward(module, x)
    first, total = groups.split
    if x.shape[0] % total:
        raise ValueError(f"a BatchNorm input of {x.shape[0]} rows does not hold {total} clips' rows in order")
    rows = x.shape[0] // total * first
    # split, not two slices: a slice's backward writes its gradient into a zeroed copy of the whole
    # input, twice, where split's backward is one concatenation (docs/benchmarks.md, loss_bench)
    head, tail = x.split([rows, x.shape[0] - rows])
    # the running statistics follow the first group alone: the rest is normalised as a BatchNorm that
    # tracks none is (its batch's statistics, the buffers neither read nor updated)
    tracks, module.track_running_stats = module.track_running_stats, False
    try:
        rest = forward(module, tail)
    finally:
        module.track_running_stats = tracks
    return torch.cat([forward(module, head), rest])
