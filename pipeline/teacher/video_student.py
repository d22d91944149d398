"""A student checkpoint of this project as the teacher (`teacher.model=student:<checkpoint>`): a
trained or imported TSM (`make import-weights`) fills the teacher cache like CLIP does.

The teacher stage encodes frames per image and averages them over time (teacher/run.py); a TSM is
exactly that, given whole clips: its backbone shifts within each clip of `teacher.num_frames`
frames and gives one feature per frame, its classifier sees their mean. So the cache holds, per
view, the pooled backbone feature (the TSM's width: 2048 for ResNet-50; what its classifier and
its feature projection both read) and the TSM's own logits (no zero-shot head). A MobileViT
student pools its frames by attention, not by a mean, so it does not fit and is refused.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.config import StudentConfig, TeacherConfig
from pipeline.models import build_student, checkpoint
from pipeline.models.layout import saved_counts
from pipeline.models.tsm import TSM
from pipeline.runtime.errors import UserError
from pipeline.teacher.model import Teacher, weights_hash

log = logging.getLogger(__name__)
PREFIX = "student:"


class StudentTeacherError(UserError, ValueError):
    """A `teacher.model=student:` checkpoint that cannot be the teacher; the message says why."""


class ClipTower(nn.Module):
    """A TSM's backbone as a per-frame tower: frames [N*T, 3, S, S], whole clips of T in order -> [N*T, width]."""

    def __init__(self, student: TSM, frames: int):
        super().__init__()
        self.student, self.frames = student, frames
        for module in student.modules():
            if hasattr(module, "set_frames"):  # shifts within clips of T; FFN: the norms of the nearest count
                module.set_frames(frames)

    def encode_image(self, frames: torch.Tensor) -> torch.Tensor:
        """Per-frame backbone features of normalised frames, each clip's frames shifted among themselves."""
        if frames.shape[0] % self.frames:
            raise ValueError(f"{frames.shape[0]} frames are not whole clips of {self.frames}")
        return self.student.backbone(frames)


@dataclass
class StudentTeacher(Teacher):
    """The Teacher whose logits are the student's classifier on the pooled feature (not zero-shot)."""

    fc: nn.Module | None = None

    def logits(self, video_features: torch.Tensor) -> torch.Tensor:
        """The student's logits [B, C] from its pooled backbone features [B, width]."""
        with torch.no_grad():
            return self.fc(video_features.float())


def is_student(model: str) -> bool:
    """Whether teacher.model names a student checkpoint."""
    return model.startswith(PREFIX)


def load(cfg: TeacherConfig, class_names: list[str], device: torch.device) -> StudentTeacher:
    """The checkpoint after `student:` as a frozen teacher on `device` over `class_names`."""
    path = Path(cfg.model[len(PREFIX) :])
    saved = checkpoint.load(path)
    if saved is None or "config" not in saved:
        raise StudentTeacherError(f"teacher.model={cfg.model}: no student checkpoint there (best.pt, latest.pt or an import)")
    student_cfg = _student_config(saved["config"]["student"])
    if not student_cfg.arch.startswith("tsm_"):
        raise StudentTeacherError(
            f"teacher.model={cfg.model}: a {student_cfg.arch} student pools its frames by attention; the teacher stage "
            "averages frames, which only a TSM student does (tsm_r50, tsm_tiny)"
        )
    classes = saved["model"]["fc.weight"].shape[0]
    if classes != len(class_names):
        raise StudentTeacherError(
            f"teacher.model={cfg.model}: classifies into {classes} classes, the data set has {len(class_names)}"
        )
    student = build_student(student_cfg, classes, saved_counts(saved))
    student.load_state_dict(saved["model"])
    student = student.to(device).eval().requires_grad_(False)
    log.info("teacher: the %s student %s at %d frames per clip", student_cfg.arch, path, cfg.num_frames)
    return StudentTeacher(
        model=ClipTower(student, cfg.num_frames),
        classifier=student.fc.weight.detach(),  # [C, width]: gives the cache its feature width
        logit_scale=1.0,
        image_size=student_cfg.image_size,
        mean=tuple(student.input_mean),
        std=tuple(student.input_std),
        weights_sha256=weights_hash(student),
        prompt_texts=[],
        fc=student.fc,
    )


def _student_config(raw: dict) -> StudentConfig:
    """The saved student section; no pretrained weights to fetch, the checkpoint has them all."""
    known = {f.name for f in dataclasses.fields(StudentConfig)}
    return dataclasses.replace(StudentConfig(**{k: v for k, v in raw.items() if k in known}), pretrained="")
