"""The distillation loss, with each component kept for logging.

Per clip: alpha * MSE(normalised video features) + beta * KL(teacher_T || student_T) * T^2
+ frame_alpha * mean over frames of (1 - cosine(student frame, teacher frame)), and over the
labelled clips gamma * CE (`gamma_with_unlabelled` when the run trains on unlabelled splits too:
`run_loss`).
- `loss.fade: crossover`: the teacher's terms fade out as the student catches up with its teacher
  head on validation, and the label takes their place (a teacher the student has passed teaches
  nothing more).
- Clips without a label (label -1: `train.unlabelled_splits`) have only the teacher's terms, each
  weighted 1 or by the head's calibrated top probability (`loss.unlabelled_weight: confidence`).
- `loss.teacher_gate` decides what a labelled clip's KL is where the teacher may be wrong: all (the
  seeds': the teacher's target as it is), correct (where the out-of-fold target misses the label,
  the label's CE instead), or label_prob (the KL weighted by the teacher's probability of the label).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from pipeline.cache.heads import beats_chance
from pipeline.config import Config, LossConfig


class LossParts(NamedTuple):
    """The total and its weighted parts: feature (MSE), response (KL), task (CE) and frame (per-frame cosine)."""

    total: torch.Tensor
    feature: torch.Tensor
    response: torch.Tensor
    task: torch.Tensor
    frame: torch.Tensor | float = 0.0


def run_loss(cfg: Config) -> LossConfig:
    """The loss settings a run trains with: `loss` with its task weight (`Config.task_weight`) as gamma."""
    return dataclasses.replace(cfg.loss, gamma=cfg.task_weight)


def distill_loss(
    cfg: LossConfig,
    logits: torch.Tensor,
    feature: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    teacher_feature: torch.Tensor | None = None,
    *,
    frames: torch.Tensor | None = None,
    teacher_frames: torch.Tensor | None = None,
    teacher_weight: float = 1.0,
) -> LossParts:
    """The loss of a batch; `frames` / `teacher_frames` [B, T, D] are the student's projected frame
    features and the cached teacher frames they show (needed when `loss.frame_alpha` > 0). The MSE
    averages over the feature's dimensions or sums them (`loss.feature_reduction`); every term
    averages over the batch (CE over its labelled clips). Vanilla mode is CE alone (weight 1).

    `teacher_weight` w (the fade, `fade_weight`) scales the teacher's terms by w and the task term's
    weight from gamma (w = 1) to 1 (w = 0): with the teacher faded out the loss is vanilla's."""
    logits = logits.float()
    labelled = labels >= 0
    ce_each = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    ce = (ce_each * labelled).sum() / labelled.sum().clamp(min=1)
    zero = ce.new_zeros(())
    if cfg.mode == "vanilla":
        return LossParts(ce, zero, zero, ce, zero)
    if cfg.mode != "distill":
        raise ValueError(f"loss.mode must be distill or vanilla, got {cfg.mode!r}")
    weight = _clip_weights(cfg, teacher_logits.float(), labelled)
    mse = _feature_mse(cfg, feature, teacher_feature)
    kl = _response_kl(cfg, logits, teacher_logits.float(), labels, labelled, ce_each)
    frame = zero
    if cfg.frame_alpha > 0:
        if frames is None or teacher_frames is None:
            raise ValueError("loss.frame_alpha > 0 needs the student's frame features and the cached teacher frames")
        frame = ((1 - F.cosine_similarity(frames.float(), teacher_frames.float(), dim=-1)).mean(1) * weight).mean()
    w = teacher_weight
    task = (cfg.gamma * w + (1.0 - w)) * ce
    parts = (w * cfg.alpha * (mse * weight).mean(), w * cfg.beta * (kl * weight).mean(), task, w * cfg.frame_alpha * frame)
    return LossParts(sum(parts), *parts)


def fade_weight(
    cfg: LossConfig,
    *,
    teacher_top1: float | None,
    student_level: float | None,
    chance: float,
    val_videos: int | None = None,
) -> float:
    """How much of the teacher a step uses (`loss.fade: crossover`): 1 while the student's level
    (`student_level()`; chance before its first validation) is `fade_margin` or more below the teacher head's, falling
    linearly to 0 as it comes level; a teacher the student has passed teaches nothing more, and nor does
    a head whose top-1 over `val_videos` validation clips is within its noise of chance. With no fade,
    or a head without a validation top-1, 1."""
    if cfg.fade == "none" or teacher_top1 is None:
        return 1.0
    if cfg.fade != "crossover":
        raise ValueError(f"loss.fade must be none or crossover, got {cfg.fade!r}")
    if val_videos and not beats_chance(teacher_top1, chance=chance, videos=val_videos):
        return 0.0
    behind = teacher_top1 - (chance if student_level is None else student_level)
    return min(1.0, max(0.0, behind / cfg.fade_margin)) if cfg.fade_margin > 0 else float(behind > 0)


def student_level(top1s: Sequence[float], *, window: int) -> float | None:
    """The student's level the fade reads, from its validation top-1s so far (None before the first):
    the best mean of `window` consecutive ones (fewer at the start). The best single validation of a
    noisy curve sits above the student's level, and a fade that reads it stops teaching too soon; the
    running best keeps the level from falling, so a teacher faded out stays out."""
    if window < 1:
        raise ValueError(f"loss.fade_window must be 1 or more, got {window}")
    means = [sum(top1s[max(0, i + 1 - window) : i + 1]) / min(window, i + 1) for i in range(len(top1s))]
    return max(means, default=None)


def _clip_weights(cfg: LossConfig, teacher_logits: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Per clip, the weight of its teacher terms: 1 for labelled clips; for unlabelled ones the head's
    calibrated top probability (its logits come divided by the head's fitted temperature) or 1."""
    if cfg.unlabelled_weight == "uniform":  # (asking whether every clip is labelled would stall the GPU every step)
        return torch.ones_like(labelled, dtype=torch.float32)
    if cfg.unlabelled_weight != "confidence":
        raise ValueError(f"loss.unlabelled_weight must be confidence or uniform, got {cfg.unlabelled_weight!r}")
    confidence = teacher_logits.softmax(-1).amax(-1)
    return torch.where(labelled, torch.ones_like(confidence), confidence)


def _feature_mse(cfg: LossConfig, feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Per clip, the MSE of the L2-normalised video features: the seeds' mean over the D dimensions
    (its gradient is 1/D of the sum's), or the sum."""
    mse = (F.normalize(feature.float(), dim=-1) - F.normalize(teacher_feature.float(), dim=-1)).pow(2)
    if cfg.feature_reduction == "sum":
        return mse.sum(-1)
    if cfg.feature_reduction != "mean":
        raise ValueError(f"loss.feature_reduction must be mean or sum, got {cfg.feature_reduction!r}")
    return mse.mean(-1)


def _response_kl(
    cfg: LossConfig,
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    labelled: torch.Tensor,
    ce_each: torch.Tensor,
) -> torch.Tensor:
    """Per clip, KL(teacher_T || student_T) * T^2, gated on labelled clips by `loss.teacher_gate`."""
    temp = cfg.temperature
    student_t, teacher_t = F.log_softmax(logits / temp, dim=-1), F.log_softmax(teacher_logits / temp, dim=-1)
    kl = F.kl_div(student_t, teacher_t, reduction="none", log_target=True).sum(-1) * temp**2
    if cfg.teacher_gate == "correct":
        # A student copies its teacher's mistakes (docs/proxy_benchmark.md): where the (out-of-fold)
        # target's top class is not the label, the label replaces it.
        wrong = labelled & (teacher_logits.argmax(-1) != labels)
        return torch.where(wrong, ce_each, kl)
    if cfg.teacher_gate == "label_prob":
        # the teacher's calibrated belief in the label scales how much of its target the clip keeps
        belief = teacher_logits.softmax(-1).gather(-1, labels.clamp(min=0)[:, None])[:, 0]
        return torch.where(labelled, belief * kl, kl)
    if cfg.teacher_gate != "all":
        raise ValueError(f"loss.teacher_gate must be all, correct or label_prob, got {cfg.teacher_gate!r}")
    return kl
