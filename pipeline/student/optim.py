"""The student's optimiser and learning-rate schedule, as the TSM and mmaction2 recipes set them.

- The lr is given for `train.lr_batch` clips (64, as TSM's 0.01) and scaled linearly by the global
  batch, so one GPU and sixty-four train with the same recipe.
- Norm weights and biases get no weight decay (timm's grouping helper decides which those are).
- With `train.lr_multipliers`, TSM's policy: other biases at 2x the lr; the layers that are new on a
  pretrained backbone (the classifier `fc` and the feature projection `proj`) at 5x, their biases
  at 10x. Norm parameters stay at 1x.
- The schedule: linear warm-up from 0 over `train.warmup_epochs`, then cosine to 0 or x0.1 steps at
  `train.lr_milestones` (epochs).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from pipeline.config import TrainConfig

NEW_LAYERS = ("fc", "proj")  # module names (last part) of the layers a pretrained backbone does not have


def effective_lr(train: TrainConfig, *, world_size: int) -> float:
    """The base lr of a step: `train.lr` scaled by the global batch over `train.lr_batch`."""
    if train.lr_batch <= 0:
        return train.lr
    return train.lr * world_size * train.batch_size / train.lr_batch


def _multiplier(name: str, norm_params: set[int], param: nn.Parameter) -> float:
    if id(param) in norm_params:
        return 1.0
    owner, _, kind = name.rpartition(".")
    new = owner.rpartition(".")[2] in NEW_LAYERS
    if kind == "bias":
        return 10.0 if new else 2.0
    return 5.0 if new else 1.0


def param_groups(model: nn.Module, train: TrainConfig, *, lr: float) -> list[dict]:
    """Parameter groups with their weight decay, lr and `lr_mult` (what the schedule scales)."""
    exclude = not train.decay_norms_and_biases
    groups = param_groups_weight_decay(model, train.weight_decay, weight_decay_exclude_1d=exclude)
    if not train.lr_multipliers:
        return [{**g, "lr": lr, "lr_mult": 1.0} for g in groups]
    names = {id(p): n for n, p in model.named_parameters()}
    norms = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm)
        for p in m.parameters(recurse=False)
    }
    split: dict[tuple[float, float], list[nn.Parameter]] = {}
    for group in groups:
        for p in group["params"]:
            split.setdefault((group["weight_decay"], _multiplier(names[id(p)], norms, p)), []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr": lr * mult, "lr_mult": mult} for (wd, mult), ps in split.items()]


def make_optimizer(train: TrainConfig, model: nn.Module, *, world_size: int) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over the parameter groups, at the effective lr."""
    groups = param_groups(model, train, lr=effective_lr(train, world_size=world_size))
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=train.momentum, **fused)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, **fused)
    raise ValueError(f"train.optimizer must be sgd or adamw, got {train.optimizer!r}")


def lr_factor(train: TrainConfig, *, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """The lr factor at each step: warm-up, then the schedule of `train.schedule`."""
    warmup = round(train.warmup_epochs * steps_per_epoch)
    milestones = [m * steps_per_epoch for m in train.lr_milestones]
    if train.schedule not in ("cosine", "step"):
        raise ValueError(f"train.schedule must be cosine or step, got {train.schedule!r}")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if train.schedule == "step":
            return 0.1 ** sum(step >= m for m in milestones)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def optimiser_facts(train: TrainConfig, optimizer: torch.optim.Optimizer, *, world_size: int) -> dict:
    """What the run's optimiser is, for the run folder and the report."""
    return {
        "optimizer": train.optimizer,
        "lr_given": train.lr,
        "lr_batch": train.lr_batch,
        "global_batch": world_size * train.batch_size,
        "effective_lr": effective_lr(train, world_size=world_size),
        "warmup_epochs": train.warmup_epochs,
        "schedule": train.schedule,
        "lr_milestones": list(train.lr_milestones),
        "grad_clip": train.grad_clip,
        "groups": [
            {
                "lr_mult": g["lr_mult"],
                "weight_decay": g["weight_decay"],
                "tensors": len(g["params"]),
                "parameters": sum(p.numel() for p in g["params"]),
            }
            for g in optimizer.param_groups
        ],
    }


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The lr of the schedule now, without any group's multiplier."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("lr_mult", 1.0)
