"""What every student returns, and loading pretrained weights from a local file."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from pipeline.runtime.paths import looks_like_path


class StudentOutput(NamedTuple):
    """Class logits [B, C] and the video feature [B, D] that is distilled towards the teacher's."""

    logits: torch.Tensor
    feature: torch.Tensor


class VideoStudent(nn.Module):
    """Clips [B, T, 3, H, W] (normalised float) -> StudentOutput.

    Modules that depend on the clip's frame count (temporal shifts, per-count norms) have a
    `set_frames(t)` method, called before every clip goes through. Given more clips (the same
    videos at other frame counts, FFN training), the forward returns one output per clip tensor:
    one call, so DDP sees one forward per step.
    """

    channels_last = False  # set by the trainer on CUDA when train.channels_last is on

    def frames(self, clips: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] -> [B*T, 3, H, W] in the memory layout the convolutions were set up for."""
        flat = clips.flatten(0, 1)
        return flat.contiguous(memory_format=torch.channels_last) if self.channels_last else flat

    def forward(self, clips: torch.Tensor, *more: torch.Tensor) -> StudentOutput | tuple[StudentOutput, ...]:
        """The output of `clips`; with `more` clip tensors, a tuple of every tensor's output."""
        if more:
            return tuple(self._one(c) for c in (clips, *more))
        return self._one(clips)

    def _one(self, clips: torch.Tensor) -> StudentOutput:
        if not hasattr(self, "_frame_aware"):
            self._frame_aware = [m for m in self.modules() if hasattr(m, "set_frames")]
        for module in self._frame_aware:
            module.set_frames(clips.shape[1])
        return self.forward_clip(clips)

    def forward_clip(self, clips: torch.Tensor) -> StudentOutput:  # pragma: no cover - interface
        """One clip tensor's output; the frame-aware modules are already set for its count."""
        raise NotImplementedError


class WeightsError(RuntimeError):
    """Pretrained student weights that cannot be had; the message says which setting to change."""


def load_backbone_weights(module: nn.Module, source: str, download: callable) -> None:
    """Load `source` (a local file, or a tag fetched by `download`) into `module`, ignoring heads."""
    if not source:
        return
    if Path(source).is_file():
        state = torch.load(source, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
    elif looks_like_path(source):
        raise WeightsError(f"student.pretrained={source!r}: no such file")
    else:
        try:
            state = download(source)
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
