"""MobileViT-XXS per frame (320-d) -> linear to 512 -> temporal attention over frames -> classifier."""

from __future__ import annotations

import timm
import torch
from torch import nn

from pipeline.config import StudentConfig
from pipeline.student.models.base import StudentOutput, VideoStudent, load_backbone_weights


class TemporalAttentionHead(nn.Module):
    """A learned score per frame, softmax over time, the weighted sum of frame features."""

    def __init__(self, in_dim: int, feature_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.proj = nn.Linear(in_dim, feature_dim)
        self.score = nn.Linear(feature_dim, 1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_dim, num_classes)

    def forward(self, frames: torch.Tensor) -> StudentOutput:
        """frames [B, T, in_dim] -> logits [B, C], feature [B, feature_dim]."""
        x = self.proj(frames)
        weights = self.score(x).softmax(dim=1)  # [B, T, 1]
        video = (weights * x).sum(1)
        return StudentOutput(self.fc(self.dropout(video)), video)


class FrameEncoderWithHead(VideoStudent):
    """Any per-frame image encoder followed by the temporal attention head."""

    def __init__(self, encoder: nn.Module, in_dim: int, feature_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.encoder = encoder
        self.head = TemporalAttentionHead(in_dim, feature_dim, num_classes, dropout)

    def forward(self, clips: torch.Tensor) -> StudentOutput:
        b, t = clips.shape[:2]
        frames = self.encoder(self.frames(clips)).view(b, t, -1)
        return self.head(frames)


def build_mobilevit_xxs(cfg: StudentConfig, num_classes: int) -> FrameEncoderWithHead:
    """timm's MobileViT-XXS without its classifier (320-d pooled features per frame)."""
    encoder = timm.create_model("mobilevit_xxs", pretrained=False, num_classes=0)

    def download(tag: str) -> dict:
        return timm.create_model("mobilevit_xxs", pretrained=True, num_classes=0).state_dict()

    load_backbone_weights(encoder, cfg.pretrained, download)
    return FrameEncoderWithHead(encoder, encoder.num_features, cfg.feature_dim, num_classes, cfg.dropout)
