"""A stand-in teacher for the synthetic set (`teacher.model=stand-in`): per-frame features that keep
where the object is.

A CLIP teacher with random weights (all that tests and CPU experiments have) averages its patches
into features that say almost nothing about where the synthetic set's object is (measured in
docs/teacher_heads.md), so no head can learn direction from them. This stand-in gives the features
a real teacher would give a head something to learn from: per frame, the saturation (max - min over
RGB) of the view at 64 x 64, pooled to 16 x 16, through a fixed random projection to 512 dimensions.
The synthetic object is saturated on a muted background, so a frame's feature encodes its position
(and a flipped view's feature, the flipped position). It runs through the teacher stage like CLIP:
same loader, views, store and fingerprint; its zero-shot logits are zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.teacher.model import Teacher, weights_hash

MODEL = "stand-in"
DIM, GRID, SIZE = 512, 16, 64


class SaturationTower(nn.Module):
    """Frames in [0, 1] (mean 0, std 1 of 255) -> [N, DIM] position features."""

    def __init__(self) -> None:
        super().__init__()
        projection = torch.randn(GRID * GRID, DIM, generator=torch.Generator().manual_seed(0)) / GRID
        self.register_buffer("projection", projection)

    def encode_image(self, frames: torch.Tensor) -> torch.Tensor:
        """Per-frame features of normalised frames [N, 3, S, S]."""
        saturation = frames.amax(1, keepdim=True) - frames.amin(1, keepdim=True)
        pooled = F.adaptive_avg_pool2d(saturation.float(), GRID).flatten(1)
        return pooled @ self.projection


def load(class_names: list[str], device: torch.device) -> Teacher:
    """The stand-in as a Teacher on `device`."""
    tower = SaturationTower().to(device).eval()
    return Teacher(
        model=tower,
        classifier=torch.zeros(len(class_names), DIM, device=device),
        logit_scale=1.0,
        image_size=SIZE,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        weights_sha256=weights_hash(tower),
        prompt_texts=[],
    )
