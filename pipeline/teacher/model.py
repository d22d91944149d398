"""What every teacher is (a frozen per-frame image tower and a zero-shot head) and its weights' hash.

Both teachers build this: CLIP (clip.py) and the stand-in (stand_in.py), so neither imports the other.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Teacher:
    """A frozen per-frame image tower (open_clip's or the stand-in's) plus its zero-shot classifier."""

    model: torch.nn.Module
    classifier: torch.Tensor  # [num_classes, dim], L2-normalised text embeddings
    logit_scale: float
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights_sha256: str
    prompt_texts: list[str]

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised float frames [N, 3, S, S] -> per-frame embeddings [N, dim] in float32."""
        return self.model.encode_image(frames).float()

    @property
    def dim(self) -> int:
        """The embedding width."""
        return int(self.classifier.shape[1])

    def logits(self, video_features: torch.Tensor) -> torch.Tensor:
        """Zero-shot logits of video features [B, dim]: scale * cos(feature, class text)."""
        return self.logit_scale * F.normalize(video_features.float(), dim=-1) @ self.classifier.T


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer, in name order: what the cache was built from."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()
