"""A shift along time of two channel ranges as one Triton kernel: one coalesced read and one write.

Frames of a clip are consecutive images of a [N*T, C, H, W] tensor. Channels [0, fold) take their
values from frame t + sign, channels [fold, 2 * fold) from t - sign, the rest stay; values from
outside the clip are zero. Eager PyTorch writes this as five strided copies and fills (a slice of
channels is a strided block in channels_last memory); the kernel reads and writes each element once
in memory order. CUDA only; `usable` says when it applies.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU wheels ship no Triton
    triton = None

_BLOCK = 2048


def usable(x: torch.Tensor) -> bool:
    """Whether the kernel can shift `x` (a CUDA tensor, contiguous or channels_last, Triton present)."""
    return (
        triton is not None
        and x.is_cuda
        and x.dim() == 4
        and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
    )


def shift_frames(x: torch.Tensor, *, frames: int, fold: int, sign: int) -> torch.Tensor:
    """A new tensor like `x` (same layout) with the two channel ranges shifted by `sign` frames."""
    nt, c, h, w = x.shape
    if nt % frames:
        raise ValueError(f"{nt} images are not whole clips of {frames} frames")
    out = torch.empty_like(x)
    last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    total = x.numel()
    grid = (triton.cdiv(total, _BLOCK),)
    with torch.cuda.device(x.device):  # Triton launches on the current device
        _shift[grid](
            x,
            out,
            total,
            CHANNELS=c,
            CHANNEL_STEP=1 if last else h * w,
            IMAGE=c * h * w,
            FRAMES=frames,
            FOLD=fold,
            SIGN=sign,
            WIDE=total >= 2**31,
            BLOCK=_BLOCK,
        )
    return out


if triton is not None:

    @triton.jit
    def _shift(
        src,
        dst,
        total,
        CHANNELS: tl.constexpr,
        CHANNEL_STEP: tl.constexpr,
        IMAGE: tl.constexpr,
        FRAMES: tl.constexpr,
        FOLD: tl.constexpr,
        SIGN: tl.constexpr,
        WIDE: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        start = tl.program_id(0)
        if WIDE:
            start = start.to(tl.int64)
        offs = start * BLOCK + tl.arange(0, BLOCK)
        inside = offs < total
        channel = (offs // CHANNEL_STEP) % CHANNELS
        frame = (offs // IMAGE) % FRAMES
        step = tl.where(channel < FOLD, SIGN, tl.where(channel < 2 * FOLD, -SIGN, 0))
        source = frame + step
        valid = inside & (source >= 0) & (source < FRAMES)
        value = tl.load(src + offs + step * IMAGE, mask=valid, other=0)
        tl.store(dst + offs, value, mask=inside)
