"""BatchNorm statistics per group of clips: a batch's first clips normalised apart from the rest.

A student that trains on labelled and unlabelled clips in one batch computes its BatchNorm statistics
over both; with `train.unlabelled_norm: separate` the labelled clips are normalised with their own
batch's statistics, as labels alone would, and the unlabelled clips with theirs (docs/proxy_benchmark.md
says what that is worth). The students' clips meet only in their BatchNorms (a shift or an attention
stays inside its clip), so the student runs each group through in a pass of its own and concatenates
the outputs: every BatchNorm sees one group at a time, at no cost per BatchNorm (docs/benchmarks.md,
`loss_bench`). The running statistics follow the first group alone, so evaluation normalises as a
run on the labelled clips would. Nothing is renamed: checkpoints and imported weights are unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


class NormGroups:
    """Where the batch of the next training forwards splits, (first clips, all clips) or None for one
    group, and the BatchNorms that must not track the later group's statistics."""

    def __init__(self, norms: tuple[nn.Module, ...]) -> None:
        self.split: tuple[int, int] | None = None
        self.norms = norms

    @contextlib.contextmanager
    def untracked(self) -> Iterator[None]:
        """Every BatchNorm normalises as one that tracks no statistics does (its batch's statistics,
        the running buffers neither read nor updated), for the forwards inside."""
        tracks = [m.track_running_stats for m in self.norms]
        for m in self.norms:
            m.track_running_stats = False
        try:
            yield
        finally:
            for m, t in zip(self.norms, tracks):
                m.track_running_stats = t


def separate_norms(model: nn.Module) -> NormGroups:
    """Make `model` (a VideoStudent) run the two groups of `NormGroups.split` through apart while
    training, every BatchNorm (FFN's per-count copies and timm's norm-with-activation too) seeing one
    group at a time; returns that switch."""
    if getattr(model, "norm_groups", None) is not None:
        raise ValueError(f"{type(model).__name__} already normalises in groups")
    # an attribute of the model: a deep copy or a pickle of it keeps the switch and its own BatchNorms
    model.norm_groups = NormGroups(tuple(m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)))
    return model.norm_groups
