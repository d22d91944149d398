"""The frozen CLIP teacher: open_clip image tower per frame, zero-shot head from its text tower."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from pipeline.config import TeacherConfig
from pipeline.runtime.errors import UserError
from pipeline.runtime.paths import looks_like_path
from pipeline.teacher import stand_in, video_student
from pipeline.teacher.model import Teacher, weights_hash

log = logging.getLogger(__name__)
MODEL_CONFIGS = Path(__file__).parent / "resources"
# Registers the project's open_clip configs: "clip-tiny" (tests), "proxy-clip" (make pretrain-teacher).
open_clip.add_model_config(MODEL_CONFIGS)


class TeacherWeightsError(UserError, RuntimeError):
    """The configured teacher weights cannot be had here; the message says which setting to change."""


def load_teacher(cfg: TeacherConfig, class_names: list[str], device: torch.device) -> Teacher:
    """Build the frozen teacher on `device` with its zero-shot head for `class_names`."""
    if cfg.model == stand_in.MODEL:
        return stand_in.load(class_names, device)
    if video_student.is_student(cfg.model):
        return video_student.load(cfg, class_names, device)
    with _quiet_root_logger():
        model = _create_model(cfg)
    model = model.to(device).eval().requires_grad_(False)
    pre = open_clip.get_model_preprocess_cfg(model)
    size = pre["size"] if isinstance(pre["size"], int) else pre["size"][0]
    prompts = prompt_texts(cfg.prompts, class_names)
    classifier = _text_classifier(model, cfg.model, prompts, len(class_names), device)
    return Teacher(
        model=model,
        classifier=classifier,
        logit_scale=float(model.logit_scale.exp()),
        image_size=int(size),
        mean=tuple(pre["mean"]),
        std=tuple(pre["std"]),
        weights_sha256=weights_hash(model),
        prompt_texts=prompts,
    )


@contextlib.contextmanager
def _quiet_root_logger():
    # open_clip logs every creation step at INFO on the root logger
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _create_model(cfg: TeacherConfig) -> torch.nn.Module:
    source = cfg.pretrained
    if source == "random":
        log.warning("teacher %s with RANDOM weights (teacher.pretrained=random): for tests and smoke runs only", cfg.model)
        # Seeded, so every array task and every rerun builds the same teacher.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return open_clip.create_model(cfg.model, pretrained=None)
    if looks_like_path(source):
        if not Path(source).is_file():
            raise TeacherWeightsError(
                f"teacher.pretrained={source!r}: no such checkpoint file. Set teacher.pretrained to an existing "
                "open_clip checkpoint, or to a pretrained tag on a machine with internet."
            )
        return open_clip.create_model(cfg.model, pretrained=source)
    tags = open_clip.list_pretrained_tags_by_model(cfg.model)
    if source not in tags:
        raise TeacherWeightsError(
            f"teacher.pretrained={source!r} is not a known tag for {cfg.model} (known: {', '.join(tags) or 'none'})"
        )
    try:
        return open_clip.create_model(cfg.model, pretrained=source)
    except Exception as e:  # the hub client raises many types when offline
        raise TeacherWeightsError(
            f"could not download the {cfg.model} weights {source!r} ({type(e).__name__}: {str(e)[:200]}). "
            "Without internet, download them elsewhere and set teacher.pretrained to the local file "
            "(e.g. teacher.pretrained=/models/ViT-B-32-openai.pt)."
        ) from e


def prompt_texts(templates: list[str], class_names: list[str]) -> list[str]:
    """Every prompt for every class, class-major: [c0p0, c0p1, ..., c1p0, ...]."""
    return [t.format(name.lower()) for name in class_names for t in templates]


@torch.no_grad()
def _text_classifier(model, model_name: str, prompts: list[str], num_classes: int, device) -> torch.Tensor:
    with _quiet_root_logger():
        tokenizer = open_clip.get_tokenizer(model_name)
    emb = F.normalize(model.encode_text(tokenizer(prompts).to(device)).float(), dim=-1)
    emb = emb.view(num_classes, -1, emb.shape[-1]).mean(1)  # prompt ensemble: mean of unit vectors
    return F.normalize(emb, dim=-1)
