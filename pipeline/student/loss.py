"""The distillation loss, with each component kept for logging."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from pipeline.config import LossConfig


class LossParts(NamedTuple):
    """The total and its weighted parts: feature (MSE), response (KL) and task (CE)."""

    total: torch.Tensor
    feature: torch.Tensor
    response: torch.Tensor
    task: torch.Tensor


def distill_loss(
    cfg: LossConfig,
    logits: torch.Tensor,
    feature: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    teacher_feature: torch.Tensor | None = None,
) -> LossParts:
    """alpha * MSE(normalised features) + beta * KL(teacher_T || student_T) * T^2 + gamma * CE; the MSE
    averages over the feature's dimensions or sums them (`loss.feature_reduction`), over the batch it averages.
    With `loss.teacher_gate: correct` the KL of a clip whose teacher target misses its label is that clip's CE.

    Vanilla mode is CE alone (weight 1): the parts that need a teacher are zero.
    """
    logits = logits.float()
    ce = F.cross_entropy(logits, labels)
    zero = ce.new_zeros(())
    if cfg.mode == "vanilla":
        return LossParts(ce, zero, zero, ce)
    if cfg.mode != "distill":
        raise ValueError(f"loss.mode must be distill or vanilla, got {cfg.mode!r}")
    s = F.normalize(feature.float(), dim=-1)
    t = F.normalize(teacher_feature.float(), dim=-1)
    mse = F.mse_loss(s, t)  # the seeds' mean over the D dimensions: its gradient is 1/D of the sum's
    if cfg.feature_reduction == "sum":
        mse = mse * s.shape[-1]
    elif cfg.feature_reduction != "mean":
        raise ValueError(f"loss.feature_reduction must be mean or sum, got {cfg.feature_reduction!r}")
    temp = cfg.temperature
    kl = (
        F.kl_div(
            F.log_softmax(logits / temp, dim=-1),
            F.log_softmax(teacher_logits.float() / temp, dim=-1),
            reduction="none",
            log_target=True,
        ).sum(-1)
        * temp**2
    )
    if cfg.teacher_gate == "correct":
        # A student copies its teacher's mistakes (docs/proxy_benchmark.md); where the (out-of-fold)
        # target's top class is not the label, the label replaces it.
        right = teacher_logits.argmax(-1) == labels
        kl = torch.where(right, kl, F.cross_entropy(logits, labels, reduction="none"))
    elif cfg.teacher_gate != "all":
        raise ValueError(f"loss.teacher_gate must be all or correct, got {cfg.teacher_gate!r}")
    kl = kl.mean()
    parts = (cfg.alpha * mse, cfg.beta * kl, cfg.gamma * ce)
    return LossParts(sum(parts), *parts)
