"""What every student returns, and loading pretrained weights from a local file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from pipeline.models.norm_groups import NormGroups
from pipeline.runtime.errors import UserError
from pipeline.runtime.paths import looks_like_path
from pipeline.ssv2.frames import IMAGENET_MEAN, IMAGENET_STD


class StudentOutput(NamedTuple):
    """Class logits [B, C], the video feature [B, D] distilled towards the teacher's, and the
    projected feature of every frame [B, T, D] (towards the teacher's frames, `loss.frame_alpha`)."""

    logits: torch.Tensor
    feature: torch.Tensor
    frames: torch.Tensor | None = None


class VideoStudent(nn.Module):
    """Clips [B, T, 3, H, W] (normalised float) -> StudentOutput.

    Modules that depend on the clip's frame count (temporal shifts, per-count norms) have a
    `set_frames(t)` method, called before every clip goes through. Given more clips (the same
    videos at other frame counts, FFN training), the forward returns one output per clip tensor:
    one call, so DDP sees one forward per step. With `norm_groups` set (`separate_norms`), a training
    batch's two groups of clips go through in a pass each.
    """

    channels_last = False  # set by the trainer on CUDA when train.channels_last is on
    input_mean: tuple[float, float, float] = IMAGENET_MEAN  # the normalisation its pretrained weights expect
    input_std: tuple[float, float, float] = IMAGENET_STD

    def frames(self, clips: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] -> [B*T, 3, H, W] in the memory layout the convolutions were set up for."""
        flat = clips.flatten(0, 1)
        return flat.contiguous(memory_format=torch.channels_last) if self.channels_last else flat

    def forward(self, clips: torch.Tensor, *more: torch.Tensor) -> StudentOutput | tuple[StudentOutput, ...]:
        """The output of `clips`; with `more` clip tensors, a tuple of every tensor's output."""
        if more:
            return tuple(self._one(c) for c in (clips, *more))
        return self._one(clips)

    def index_frame_aware(self) -> None:
        """Find the modules that depend on the frame count, once the model is built (build_student
        calls it; a module swapped in later needs another call). Finding them during the first
        forward would change the module between calls, and a compiled student would compile again."""
        self._frame_aware = tuple(m for m in self.modules() if hasattr(m, "set_frames"))

    def _one(self, clips: torch.Tensor) -> StudentOutput:
        if "_frame_aware" not in self.__dict__:  # a subclass built without build_student
            self.index_frame_aware()
        for module in self._frame_aware:
            module.set_frames(clips.shape[1])
        groups = getattr(self, "norm_groups", None)
        if groups is None or groups.split is None or not self.training:
            return self.forward_clip(clips)
        return self._in_groups(clips, groups)

    def _in_groups(self, clips: torch.Tensor, groups: NormGroups) -> StudentOutput:
        """The first `groups.split[0]` clips through in a pass of their own, then the rest with the
        running statistics left to the first (pipeline/models/norm_groups.py)."""
        first, total = groups.split
        if clips.shape[0] != total:
            raise ValueError(f"a batch of {clips.shape[0]} clips is not the {total} that NormGroups.split expects")
        outs = [self.forward_clip(clips[:first])] if first else []
        if first < total:
            with groups.untracked():
                outs.append(self.forward_clip(clips[first:]))
        if len(outs) == 1:  # a batch of one group: one pass
            return outs[0]
        return StudentOutput(*(None if a is None else torch.cat([a, b]) for a, b in zip(*outs)))

    def forward_clip(self, clips: torch.Tensor) -> StudentOutput:  # pragma: no cover - interface
        """One clip tensor's output; the frame-aware modules are already set for its count."""
        raise NotImplementedError


class WeightsError(UserError, RuntimeError):
    """Pretrained student weights that cannot be had; the message says which setting to change."""


def load_backbone_weights(module: nn.Module, source: str, download: callable) -> None:
    """Load `source` (a local file, or a tag fetched by `download`) into `module`, ignoring heads."""
    if not source:
        return
    if Path(source).is_file():
        state = _read_state(Path(source))
    elif looks_like_path(source):
        raise WeightsError(f"student.pretrained={source!r}: no such file")
    else:
        try:
            state = download(source)
        except WeightsError:
            raise
        except Exception as e:
            raise WeightsError(
                f"could not download student weights {source!r} ({type(e).__name__}: {str(e)[:160]}); without "
                "internet, set student.pretrained to a local state-dict file"
            ) from e
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise WeightsError(f"student.pretrained={source!r}: no tensor matches the backbone")
    module.load_state_dict(usable, strict=False)


def project_checkpoint(source: str) -> dict | None:
    """`source` read as a checkpoint this project wrote (a trained or imported student: its weights
    under "model" and its config under "config"), or None when it is another kind of file or a tag."""
    path = Path(source) if source else None
    if path is None or not path.is_file() or path.suffix == ".safetensors":
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return saved if isinstance(saved, dict) and {"model", "config"} <= saved.keys() else None


def classifier(width: int, num_classes: int, init_std: float) -> nn.Linear:
    """The class layer; with `init_std` > 0 its weights come from N(0, init_std) and its bias is 0 (TSM's)."""
    fc = nn.Linear(width, num_classes)
    if init_std > 0:
        nn.init.normal_(fc.weight, std=init_std)
        nn.init.zeros_(fc.bias)
    return fc


def offline() -> bool:
    """True when downloads are switched off (HF_HUB_OFFLINE=1, as for the Hugging Face hub)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def cached_or_download(cached: Path | None, download: Callable[[], dict], *, what: str, place: str) -> dict:
    """A state dict from the library's cache file, else downloaded; offline or failing, a WeightsError
    that says which file to place where (or which setting to change)."""
    if cached is not None and cached.is_file():
        return _read_state(cached)
    advice = f"place {place}, or set student.pretrained to a local state-dict file"
    if offline():
        raise WeightsError(f"student.pretrained=imagenet: {what} is not in the cache and downloads are off: {advice}")
    try:
        return download()
    except Exception as e:
        raise WeightsError(
            f"student.pretrained=imagenet: could not download {what} ({type(e).__name__}: {str(e)[:120]}); {advice}"
        ) from e


def _read_state(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state.get("model", state))
