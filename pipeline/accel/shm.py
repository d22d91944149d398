"""Tensors made in shared memory inside loader workers, so handing them over copies nothing more."""

from __future__ import annotations

import math

import torch
from torch.utils.data import get_worker_info


def empty_for_handover(shape: tuple[int, ...], dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """An empty CPU tensor; inside a DataLoader worker, in a new shared-memory segment.

    A tensor made in ordinary memory is copied into shared memory when the worker sends it (a
    second copy of every pixel, with a page fault per 4 KiB); torch's own default collate avoids
    that the same way.
    """
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)
