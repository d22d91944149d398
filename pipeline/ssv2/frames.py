"""JPEG frames to model input: decode (CPU or GPU), resize, crop, normalise."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.io import decode_jpeg
from torchvision.transforms import InterpolationMode

from pipeline.accel.gpu_resize import resize_by_products

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


def stack_channels_last(frames: Sequence[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
    """Stack [..., 3, H, W] tensors into [N, ..., 3, H, W] whose memory is [N, ..., H, W, 3] (`out`: such a tensor).

    Decoded JPEGs are [H, W, 3] in memory, so this is a plain copy, where stacking them [N, 3, H, W]
    contiguous transposes every pixel (many times slower: docs/benchmarks.md, channels-last loader). The
    antialiased uint8 resize and the students' channels_last convolutions want this layout too.
    """
    hwc = [f.movedim(-3, -1) for f in frames]
    if out is None:
        return torch.stack(hwc).movedim(-1, -3)
    torch.stack(hwc, out=out.movedim(-3, -1))
    return out


def channels_last_empty(shape: Sequence[int], make=torch.empty) -> torch.Tensor:
    """An empty uint8 [..., 3, H, W] tensor laid out [..., H, W, 3] in memory; `make(shape)` allocates."""
    *lead, c, h, w = shape
    return make((*lead, h, w, c)).movedim(-1, -3)


def square_crop(frames: torch.Tensor) -> torch.Tensor:
    """The centred square of side min(H, W) of frames [..., 3, H, W] (a view, no copy)."""
    h, w = frames.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return frames[..., top : top + s, left : left + s]


def resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic antialiased resize of frames [N, 3, h, w] to [N, 3, size, size], uint8 in and out."""
    if frames.shape[-2:] == (size, size):
        return frames
    if frames.device.type == "cuda":
        return resize_by_products(frames, size)
    return TF.resize(frames, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)


def resize_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's geometry: centre square crop, then bicubic resize to `size` x `size`.

    Cropping first makes every 240p frame the same 240x240 whatever its width, so a whole batch of
    videos resizes in one call; it equals CLIP's resize-then-crop except within the two pixels at the
    crop's left and right edges, where the bicubic kernel no longer sees the pixels cropped away.
    """
    return resize(square_crop(frames), size)


def normalizer(mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"):
    """A function uint8 [..., 3, H, W] -> float32 normalised per channel, its constants made once on
    `device` (so it can run inside CUDA graph capture, where host-to-device copies are not allowed)."""
    m = torch.tensor(mean, device=device).view(3, 1, 1) * 255
    s = torch.tensor(std, device=device).view(3, 1, 1) * 255

    def apply(frames: torch.Tensor) -> torch.Tensor:
        return (frames.float() - m) / s

    return apply


def normalize(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32, scaled to [0, 1] and normalised per channel."""
    return normalizer(mean, std, frames.device)(frames)
