"""The students by name (each builder takes the StudentConfig and returns a VideoStudent), their weight
layouts and checkpoints: what the student stage trains and the teacher stage runs as a video teacher."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.config import StudentConfig
from pipeline.models.base import VideoStudent
from pipeline.models.mobilevit import build_mobilevit_xxs
from pipeline.models.tsm import build_tsm
from pipeline.ssv2.frames import normalizer

BUILDERS: dict[str, Callable[..., VideoStudent]] = {
    "tsm_r50": lambda cfg, n, counts: build_tsm(cfg, n, depth=50, counts=counts),
    "tsm_tiny": lambda cfg, n, counts: build_tsm(cfg, n, depth=10, counts=counts),  # tests and smoke runs
    "mobilevit_xxs": build_mobilevit_xxs,
}


def build_student(cfg: StudentConfig, num_classes: int, counts: list[int] | None = None) -> VideoStudent:
    """The student named by `cfg.arch`; with several trained frame `counts`, frame-flexible (FFN)."""
    if cfg.arch not in BUILDERS:
        raise ValueError(f"student.arch={cfg.arch!r} is not one of {', '.join(BUILDERS)}")
    if cfg.temporal != "attention" and cfg.arch != "mobilevit_xxs":
        raise ValueError(f"student.temporal={cfg.temporal!r} is for mobilevit_xxs (TSM shifts in every block already)")
    model = BUILDERS[cfg.arch](cfg, num_classes, counts)
    model.index_frame_aware()
    return model


def input_normalizer(model: torch.nn.Module, device: torch.device):
    """The normaliser of the student's input (uint8 -> float), with the mean and std its weights expect."""
    inner = getattr(model, "module", model)  # DDP
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    return normalizer(inner.input_mean, inner.input_std, device)
