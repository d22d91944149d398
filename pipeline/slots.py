"""Batch memory shared with the loader workers, page-locked once on CUDA: workers write each batch
in place and the GPU copies it from there.

Without it every batch is written into a new shared-memory segment, mapped again by the main
process (a page fault per 4 KiB) and copied by the pin-memory thread into page-locked memory
before the copy to the GPU; on a 16-CPU H200 host that thread capped the training loader at about
16k frames/s where its workers decoded 21k (docs/benchmarks.md).

The pool is one anonymous memory file (memfd) cut into equal slots. Free slot numbers travel on a
queue: a worker takes one, writes a batch into it, and sends the slot's number and the tensors'
places in it instead of the tensors; the main process gives the number back once the batch has
left the slot (on CUDA: once the copy to the GPU has finished).
"""
from __future__ import annotations

import dataclasses
import mmap
import os
import queue
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .shm import empty_for_handover

_ALIGN = 4096


@dataclass(frozen=True)
class SlotRef:
    """Where a tensor lies in the pool: slot, byte offset in it, shape, strides and dtype."""

    slot: int
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class Sealed:
    """A worker's item with its pool tensors replaced by SlotRefs, and the slot to give back."""

    slot: int
    item: Any


class PoolStopped(RuntimeError):
    """The loader that owns the pool stopped while a worker waited for a free slot."""


def map_tensors(obj: Any, fn: Callable[[Any], Any], kinds: tuple = (torch.Tensor,)) -> Any:
    """obj with fn applied to every instance of `kinds` inside dataclasses, lists and tuples."""
    if isinstance(obj, kinds):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: map_tensors(getattr(obj, f.name), fn, kinds)
                                           for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(x, fn, kinds) for x in obj)
    return obj


class SlotPool:
    """`slots` buffers of `slot_bytes` in one memory file that forked workers inherit."""

    def __init__(self, slots: int, slot_bytes: int):
        self.slots, self.slot_bytes = slots, -(-slot_bytes // _ALIGN) * _ALIGN
        self.fd = os.memfd_create("loader-slots", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.slots * self.slot_bytes)
        self._mapped: tuple[int, torch.Tensor] | None = None
        self.pinned = False

    def memory(self) -> torch.Tensor:
        """The whole pool as uint8, mapped once per process (a forked worker maps it anew)."""
        if self._mapped is None or self._mapped[0] != os.getpid():
            buffer = mmap.mmap(self.fd, self.slots * self.slot_bytes)
            self._mapped = (os.getpid(), torch.frombuffer(buffer, dtype=torch.uint8))
        return self._mapped[1]

    def pin(self) -> None:
        """Page-lock this process's mapping for the GPU's copy engines (once: it is slow)."""
        if self.pinned:
            return
        memory = self.memory()
        err = int(torch.cuda.cudart().cudaHostRegister(memory.data_ptr(), memory.numel(), 1))
        if err != 0:
            raise RuntimeError(f"could not page-lock the {memory.numel() / 2**30:.1f} GiB loader pool (cudaError {err}); "
                               f"lower the loader's workers or batch size")
        self.pinned = True

    def release(self) -> None:
        """Undo pin(); the memory itself goes when the last view of it does."""
        if self.pinned:
            torch.cuda.cudart().cudaHostUnregister(self.memory().data_ptr())
            self.pinned = False
        os.close(self.fd)

    def view(self, ref: SlotRef) -> torch.Tensor:
        """The tensor a SlotRef describes, as a view of this process's mapping."""
        start = ref.slot * self.slot_bytes + ref.offset
        size = ref.dtype.itemsize
        raw = self.memory()[start : start + _extent(ref.shape, ref.stride) * size]
        return raw.view(ref.dtype).as_strided(ref.shape, ref.stride)

    def fits(self, slots: int, slot_bytes: int) -> bool:
        """Whether this pool can serve a loader that needs `slots` slots of `slot_bytes`."""
        return slots <= self.slots and slot_bytes <= self.slot_bytes


def _extent(shape: tuple[int, ...], stride: tuple[int, ...]) -> int:
    return 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if all(shape) else 0


class Slot:
    """One claimed slot inside a worker: hands out tensors from its memory, front to back."""

    def __init__(self, pool: SlotPool, number: int):
        self.pool, self.number, self._used = pool, number, 0
        start = number * pool.slot_bytes
        self._memory = pool.memory()[start : start + pool.slot_bytes]

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype = torch.uint8) -> torch.Tensor:
        """An uninitialised contiguous tensor in the slot; in a shared-memory segment of its own (sent
        as before) when the rest of the slot is too small."""
        nbytes = -(-int(torch.Size(shape).numel()) * dtype.itemsize // 64) * 64
        if self._used + nbytes > self.pool.slot_bytes:
            return empty_for_handover(shape, dtype)
        out = self._memory[self._used : self._used + nbytes]
        self._used += nbytes
        return out[: torch.Size(shape).numel() * dtype.itemsize].view(dtype).view(shape)

    def seal(self, item: Any) -> Sealed:
        """The item to send: tensors in this slot become SlotRefs (others travel as usual)."""
        base = self._memory.data_ptr()

        def ref(t: torch.Tensor):
            offset = t.data_ptr() - base
            if not 0 <= offset < self.pool.slot_bytes:
                return t
            return SlotRef(self.number, offset, tuple(t.shape), tuple(t.stride()), t.dtype)

        return Sealed(self.number, map_tensors(item, ref))


class SlotSource:
    """A worker's side of one loader's pool: free slot numbers come from `free`."""

    def __init__(self, pool: SlotPool, free, stop, parent: int):
        self.pool, self.free, self.stop, self.parent = pool, free, stop, parent

    def claim(self) -> Slot:
        """A free slot; waits until the main process gives one back."""
        while True:
            try:
                return Slot(self.pool, self.free.get(timeout=0.5))
            except queue.Empty:
                if self.stop.is_set() or os.getppid() != self.parent:
                    raise PoolStopped("the loader stopped while this worker waited for a free batch slot") from None
                time.sleep(0)
