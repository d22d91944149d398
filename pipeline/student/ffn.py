"""FFN training's counts and its consistency term (Zhang et al., "Frame Flexible Network", CVPR 2023).

Each step sees the same videos at every trained frame count. The task and distillation losses act
on the highest count's output; each lower count's prediction is pulled towards the highest's
(detached): KL(p_high || p_low) at temperature 1, batch mean, weight `train.ffn_lambda`, as the
reference does (BeSpontaneous/FFN, main_FFN.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.config import Config


def trained_counts(cfg: Config) -> list[int]:
    """The frame counts trained, ascending: `train.frame_counts`, or `student.num_frames` alone."""
    counts = sorted(set(cfg.train.frame_counts)) or [cfg.student.num_frames]
    if counts[0] < 1:
        raise ValueError(f"train.frame_counts={cfg.train.frame_counts}: every count must be at least 1")
    if counts[-1] != cfg.student.num_frames:
        raise ValueError(
            f"train.frame_counts={cfg.train.frame_counts}: the highest count is the clip the student trains on, so "
            f"it must equal student.num_frames={cfg.student.num_frames}; set student.num_frames={counts[-1]}"
        )
    return counts


def consistency_loss(high: torch.Tensor, lower: list[torch.Tensor], weight: float) -> torch.Tensor:
    """weight * sum over lower counts of KL(softmax(high, detached) || softmax(low)), batch mean."""
    target = F.softmax(high.detach().float(), dim=-1)
    total = high.new_zeros((), dtype=torch.float32)
    for low in lower:
        total = total + F.kl_div(F.log_softmax(low.float(), dim=-1), target, reduction="batchmean")
    return weight * total
