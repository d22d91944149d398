"""The antialiased bicubic resize of uint8 crops as two matrix products: the CUDA path."""

from __future__ import annotations

import functools

import torch


def resize_by_products(frames: torch.Tensor, size: int, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """The same resize of uint8 [N, 3, h, w] to [N, 3, size, size] as two matrix products (the CUDA path).

    The resize is separable and linear, so products with the kernel's own weights give the same
    maths as the antialiased kernel, which has no uint8 CUDA version and costs several times the
    GPU time of two matrix products. In float16 the products run on tensor cores: pixel values are
    exact in it and the weights keep 11 bits, so a pixel lands at most one level from the kernel's
    (tests/test_teacher_cache.py), where float32 products took GPU time from the model beside them.
    """
    rows = resize_weights(frames.shape[-2], size, frames.device).to(dtype)
    cols = resize_weights(frames.shape[-1], size, frames.device).to(dtype)
    out = rows @ frames.contiguous().to(dtype) @ cols.T  # crops arrive channels last; products want rows
    return out.round_().clamp_(0, 255).to(torch.uint8)


@functools.lru_cache(maxsize=64)
def resize_weights(src: int, size: int, device: torch.device) -> torch.Tensor:
    """[size, src] float32: row i holds the antialiased bicubic weights of output pixel i.

    Read off torch's own kernel by resizing the unit vectors, so the products equal its resize.
    """
    unit = torch.eye(src, dtype=torch.float64).view(src, 1, 1, src)
    out = torch.nn.functional.interpolate(unit, size=(1, size), mode="bicubic", antialias=True, align_corners=False)
    return out[:, 0, 0, :].T.contiguous().to(device, torch.float32)
