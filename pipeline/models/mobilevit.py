"""MobileViT-XXS per frame (320-d) -> linear to 512 -> temporal attention over frames -> classifier.

`student.temporal` picks how the student sees time:
- `attention` (the seeds' head): a learned score per frame, softmax, weighted sum. It is blind to
  frame order: reversed or shuffled frames give the same logits.
- `attention_pos`: a learned temporal position embedding added to each frame's feature before the
  scores, so the weighted sum depends on where each frame is. The embedding is stored at 16
  positions and linearly resampled to the clip's count.
- `shift`: TSM's temporal shift (1/8 of the channels from the next frame, 1/8 from the previous)
  before the expanding 1x1 conv of every inverted-residual block that has a residual path (the TSM
  paper's mobile model shifts there), with the seeds' attention head on top.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.constants import HF_HUB_CACHE
from timm.models.byobnet import BottleneckBlock
from torch import nn

from pipeline.config import StudentConfig
from pipeline.models.base import (
    StudentOutput,
    VideoStudent,
    WeightsError,
    cached_or_download,
    classifier,
    load_backbone_weights,
)
from pipeline.models.flexible import alter_before, specialise_norms
from pipeline.models.tsm import TemporalShift

POSITIONS = 16  # temporal position embeddings stored; resampled to other frame counts


class TemporalAttentionHead(nn.Module):
    """A learned score per frame, softmax over time, the weighted sum of frame features; with
    `positions`, a temporal position embedding added first."""

    def __init__(self, in_dim: int, cfg: StudentConfig, num_classes: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, cfg.feature_dim)
        positions = cfg.temporal == "attention_pos"
        self.position = nn.Parameter(torch.randn(POSITIONS, cfg.feature_dim) * 0.02) if positions else None
        self.score = nn.Linear(cfg.feature_dim, 1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.per_frame = cfg.dropout_at == "frame"
        self.fc = classifier(cfg.feature_dim, num_classes, cfg.fc_init_std)

    def forward(self, frames: torch.Tensor) -> StudentOutput:
        """frames [B, T, in_dim] -> logits [B, C], feature [B, feature_dim], frame features [B, T, feature_dim]."""
        projected = self.proj(frames)
        x = projected
        if self.position is not None:
            x = x + self._positions(x.shape[1]).to(x.dtype)
        weights = self.score(x).softmax(dim=1)  # [B, T, 1]
        video = (weights * x).sum(1)
        # per frame: each frame drops its own units before the weighted sum the classifier sees
        dropped = (weights * self.dropout(x)).sum(1) if self.per_frame else self.dropout(video)
        return StudentOutput(self.fc(dropped), video, projected)

    def _positions(self, frames: int) -> torch.Tensor:
        if frames == POSITIONS:
            return self.position
        resampled = F.interpolate(self.position.T[None], size=frames, mode="linear", align_corners=True)
        return resampled[0].T


class FrameEncoderWithHead(VideoStudent):
    """Any per-frame image encoder followed by the temporal attention head; input normalised as the
    encoder's pretrained config says."""

    def __init__(self, encoder: nn.Module, head: TemporalAttentionHead):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.input_mean = tuple(encoder.pretrained_cfg["mean"])
        self.input_std = tuple(encoder.pretrained_cfg["std"])

    def forward_clip(self, clips: torch.Tensor) -> StudentOutput:
        """clips [B, T, 3, H, W] -> logits [B, C], feature [B, D]."""
        b, t = clips.shape[:2]
        frames = self.encoder(self.frames(clips)).view(b, t, -1)
        return self.head(frames)


def build_mobilevit_xxs(cfg: StudentConfig, num_classes: int, counts: list[int] | None = None) -> FrameEncoderWithHead:
    """timm's MobileViT-XXS without its classifier (320-d pooled features per frame), the head of
    `student.temporal`; with several trained frame counts, FFN's per-count norms and alterations."""
    encoder = timm.create_model("mobilevit_xxs", pretrained=False, num_classes=0)
    load_backbone_weights(encoder, cfg.pretrained, _imagenet_state)
    blocks = [m for m in encoder.modules() if isinstance(m, BottleneckBlock)]
    if counts is not None and len(counts) > 1:
        for block in blocks:
            alter_before(block, "conv1_1x1", block.conv1_1x1.conv.in_channels, counts)
        specialise_norms(encoder, counts)
    if cfg.temporal == "shift":
        for block in blocks:
            if block.shortcut is not None and isinstance(block.shortcut, nn.Identity):
                block.conv1_1x1 = TemporalShift(block.conv1_1x1)
    return FrameEncoderWithHead(encoder, TemporalAttentionHead(encoder.num_features, cfg, num_classes))


def _imagenet_state(tag: str) -> dict:
    """timm's MobileViT-XXS ImageNet weights (`timm/mobilevit_xxs.cvnets_in1k` on the Hugging Face hub)."""
    if tag != "imagenet":
        raise WeightsError(f"student.pretrained={tag!r}: not a file, and the only tag is 'imagenet'")
    repo = timm.models.get_pretrained_cfg("mobilevit_xxs").hf_hub_id
    cache = os.environ.get("HF_HUB_CACHE") or HF_HUB_CACHE  # read now, so a changed environment counts
    cached = try_to_load_from_cache(repo, "model.safetensors", cache_dir=cache)
    return cached_or_download(
        Path(cached) if isinstance(cached, str) else None,
        lambda: timm.create_model("mobilevit_xxs", pretrained=True, num_classes=0).state_dict(),
        what=f"timm's MobileViT-XXS weights ({repo})",
        place=f"model.safetensors of https://huggingface.co/{repo} in the Hugging Face cache ({cache})",
    )
