"""Teacher heads: classifiers over the cached CLIP features, and how they are fitted.

- `zero_shot`: CLIP's text head over the mean frame feature (computed by the cache stage).
- `linear`: a linear probe on the mean of the L2-normalised frame features (the seeds' "average pool
  -> action classifier"). Blind to frame order, like every function of a mean.
- `temporal`: the ordered frame features, projected, plus a learned position embedding per frame,
  through a small transformer encoder, averaged, then a linear layer. The position embedding makes
  it see order, so it can tell a clip from the same clip played backwards.

Fitting is plain minibatch AdamW with a cosine schedule on full-precision features; the weight decay
is chosen on a held-out part of the training split, and a temperature is fitted on the out-of-fold
training logits (the calibration the distillation temperature applies on top of).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.cache.heads import ALL_HEADS, FITTED, head_settings  # noqa: F401 (the heads' names and settings are the cache's contract)
from pipeline.config import TeacherHeadConfig


class LinearHead(nn.Module):
    """Linear layer on the mean of the L2-normalised frame features."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, F, D] frame features -> [B, C] logits."""
        return self.fc(F.normalize(frames.float(), dim=-1).mean(1))


class TemporalHead(nn.Module):
    """Ordered frame features -> projection + position embedding -> transformer -> mean -> linear."""

    def __init__(self, dim: int, num_classes: int, *, frames: int, width: int, layers: int, dropout: float):
        super().__init__()
        self.proj = nn.Linear(dim, width)
        self.position = nn.Parameter(torch.randn(frames, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, nhead=max(1, width // 64), dim_feedforward=2 * width, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, F, D] frame features, in temporal order -> [B, C] logits."""
        x = self.proj(F.normalize(frames.float(), dim=-1)) + self.position[: frames.shape[1]]
        return self.fc(self.norm(self.encoder(x).mean(1)))


def build_head(name: str, *, dim: int, num_classes: int, frames: int, cfg: TeacherHeadConfig) -> nn.Module:
    """A fresh head named `name` (one of FITTED)."""
    if name == "linear":
        return LinearHead(dim, num_classes)
    if name == "temporal":
        return TemporalHead(
            dim, num_classes, frames=frames, width=cfg.temporal_width, layers=cfg.temporal_layers, dropout=cfg.dropout
        )
    raise ValueError(f"teacher_head.heads: unknown head {name!r} (fitted heads: {', '.join(FITTED)})")


@dataclass
class FitData:
    """Frame features [N, F, D] (float16 is fine) and labels [N] of the rows a head learns from."""

    features: torch.Tensor
    labels: torch.Tensor


def fit(
    name: str, data: FitData, *, num_classes: int, cfg: TeacherHeadConfig, weight_decay: float, seed: int, device: torch.device
) -> nn.Module:
    """A head fitted on `data` (deterministic for a seed on the CPU)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        n, frames, dim = data.features.shape
        head = build_head(name, dim=dim, num_classes=num_classes, frames=frames, cfg=cfg).to(device)
        features, labels = data.features.to(device), data.labels.to(device)
        steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
        epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
        total = epochs * steps_per_epoch
        cuda = device.type == "cuda"
        optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=weight_decay, fused=cuda)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
        order_gen = torch.Generator(device="cpu").manual_seed(seed)
        head.train()
        for _ in range(epochs):
            order = torch.randperm(n, generator=order_gen).to(device)
            for start in range(0, n, cfg.batch_size):
                batch = order[start : start + cfg.batch_size]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    logits = head(features[batch])
                loss = F.cross_entropy(logits.float(), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return head.eval()


@torch.no_grad()
def predict(head: nn.Module, features: torch.Tensor, *, device: torch.device, batch: int = 8192) -> np.ndarray:
    """Logits [N, C] float32 of frame features [N, F, D]."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        outs = [head(features[i : i + batch].to(device)).float().cpu() for i in range(0, len(features), batch)]
    if not outs:
        return np.zeros((0, head.fc.out_features), dtype=np.float32)
    return torch.cat(outs).numpy()


def top_k(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose label is among the k highest logits."""
    if len(labels) == 0:
        return 0.0
    top = np.argsort(-logits, axis=1)[:, :k]
    return float((top == labels[:, None]).any(1).mean())


def assign_folds(n: int, folds: int, seed: int) -> np.ndarray:
    """Fold 0..folds-1 of each of `n` rows: a seeded permutation dealt round-robin (sizes differ by one at most)."""
    if folds < 2:
        raise ValueError(f"teacher_head.folds must be at least 2, got {folds}")
    out = np.empty(n, dtype=np.int8)
    out[np.random.default_rng([seed, 1]).permutation(n)] = np.arange(n) % folds
    return out


def holdout_mask(n: int, share: float, seed: int) -> np.ndarray:
    """True for the rows held out to choose the weight decay: a seeded `share` of `n` (at least one)."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"teacher_head.holdout must be between 0 and 1, got {share}")
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng([seed, 2]).permutation(n)[: max(1, int(round(share * n)))]] = True
    return mask


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the cross-entropy of softmax(logits / T) on these labels."""
    if len(labels) == 0:
        return 1.0
    x, y = torch.from_numpy(logits).double(), torch.from_numpy(labels).long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(1e-2, 1e2))
