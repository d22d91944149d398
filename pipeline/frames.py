"""JPEG frames to model input: decode (CPU or GPU), resize, crop, normalise."""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.io import decode_jpeg
from torchvision.transforms import InterpolationMode

# torchvision 0.29 warns that its image codecs move to TorchCodec; they still work (nvjpeg
# included) and TorchCodec is not pinned here, so the warning says nothing a user can act on.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")

# CLIP's own normalisation (open_clip OPENAI_DATASET_MEAN/STD); ImageNet's for the students.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def decode(jpegs: Sequence[bytes], device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Decode JPEG bytes to uint8 [3, H, W] tensors; on CUDA all at once with nvjpeg."""
    data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    if torch.device(device).type == "cuda":
        return decode_jpeg(data, device=device)
    return [decode_jpeg(d) for d in data]


def resize_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP preprocessing geometry: bicubic resize of the short side to `size`, centre crop."""
    if frames.device.type == "cuda" and frames.dtype == torch.uint8:
        # antialiased bicubic has no uint8 CUDA kernel; float keeps the same maths
        out = TF.resize(frames.float(), size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        frames = out.round_().clamp_(0, 255).to(torch.uint8)
    else:
        frames = TF.resize(frames, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(frames, [size, size])


def normalize(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype=torch.float32) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float, scaled to [0, 1] and normalised per channel."""
    m = torch.tensor(mean, device=frames.device, dtype=dtype).view(3, 1, 1) * 255
    s = torch.tensor(std, device=frames.device, dtype=dtype).view(3, 1, 1) * 255
    return (frames.to(dtype) - m) / s
