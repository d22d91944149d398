"""Batch memory shared with the loader workers, page-locked once on CUDA: workers write each batch
in place and the GPU copies it from there.

Without it every batch is written into a new shared-memory segment, mapped again by the main
process (a page fault per 4 KiB) and copied by the pin-memory thread into page-locked memory
before the copy to the GPU; on a 16-CPU host that thread capped the training loader below what
its workers decoded (docs/benchmarks.md, "batch pool").

The pool is one anonymous memory file (memfd) cut into equal slots. Free slot numbers travel on a
queue: a worker takes one, writes a batch into it, and sends the slot's number and the tensors'
places in it instead of the tensors; the main process gives the number back once the batch has
left the slot (on CUDA: once the copy to the GPU has finished).

A dataset writes its batches through a `BatchMemory` given to its constructor:

    slot = memory.claim()                      # in the worker
    batch = collate(items, make=slot.empty)    # tensors made in the slot
    yield slot.seal(batch)                     # what travels to the main process

`SegmentMemory` is the plain path (a shared-memory segment per tensor, nothing sealed);
`PoolMemory` is the pool's.
"""

from __future__ import annotations

import dataclasses
import logging
import mmap
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from pipeline.accel.shm import empty_for_handover

_ALIGN = 4096
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolRef:
    """Where a tensor lies in the pool: slot, byte offset in it, shape, strides and dtype."""

    slot: int
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class PooledItem:
    """A worker's item with its pool tensors replaced by PoolRefs, and the slot to give back."""

    slot: int
    item: Any


class PoolStopped(RuntimeError):
    """The loader that owns the pool stopped while a worker waited for a free slot."""


def map_tensors(obj: Any, fn: Callable[[Any], Any], kinds: tuple = (torch.Tensor,)) -> Any:
    """obj with fn applied to every instance of `kinds` inside dataclasses, lists and tuples."""
    if isinstance(obj, kinds):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj, **{f.name: map_tensors(getattr(obj, f.name), fn, kinds) for f in dataclasses.fields(obj) if f.init}
        )
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(x, fn, kinds) for x in obj)
    return obj


class BatchPool:
    """`slots` buffers of `slot_bytes` in one memory file that forked workers inherit."""

    def __init__(self, slots: int, slot_bytes: int):
        self.slots, self.slot_bytes = slots, -(-slot_bytes // _ALIGN) * _ALIGN
        self.fd = os.memfd_create("loader-slots", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.slots * self.slot_bytes)
        self._mapped: tuple[int, torch.Tensor] | None = None
        self._locked: set[int] = set()  # slots page-locked in this process
        self._pinner: threading.Thread | None = None
        self._stop_pinning = threading.Event()

    def memory(self) -> torch.Tensor:
        """The whole pool as uint8, mapped once per process (a forked worker maps it anew)."""
        if self._mapped is None or self._mapped[0] != os.getpid():
            buffer = mmap.mmap(self.fd, self.slots * self.slot_bytes)
            self._mapped = (os.getpid(), torch.frombuffer(buffer, dtype=torch.uint8))
        return self._mapped[1]

    @property
    def pinned(self) -> bool:
        """Whether every slot is page-locked."""
        return len(self._locked) == self.slots

    def pin(self) -> None:
        """Page-lock every slot of this process's mapping for the GPU's copy engines, now."""
        if self._pinner is not None:
            self._pinner.join()  # the thread's slots are locked; it may have stopped early
        for slot in range(self.slots):
            self._lock_slot(slot)

    def pin_in_background(self, done: Callable[[float], None] | None = None) -> None:
        """Page-lock the slots one by one in a thread, the last first (the first batches are written
        front to back): page-locking gigabytes takes seconds, and until a slot is locked its copies
        to the GPU are pageable (slower, but correct). `done(seconds)` is called at the end. The
        thread may outlive the loader that started it (the pool is kept for the next one, whose
        workers fork beside it: they never touch CUDA and map the pool afresh)."""
        if self.pinned or self._pinner is not None:
            return
        self.memory()  # the mapping, made here rather than raced for by the thread
        device = torch.cuda.current_device()

        def run() -> None:
            torch.cuda.set_device(device)  # else a rank on another GPU would open a context on GPU 0 here
            start = time.monotonic()
            for slot in reversed(range(self.slots)):
                if self._stop_pinning.is_set():
                    return
                try:
                    self._lock_slot(slot)
                except RuntimeError as e:  # the copies stay pageable: slower, still right
                    log.warning("%s; the rest of the pool stays pageable", e)
                    return
            if done is not None:
                done(time.monotonic() - start)

        self._pinner = threading.Thread(target=run, daemon=True, name="pool-pinner")
        self._pinner.start()

    def _lock_slot(self, slot: int) -> None:
        if slot in self._locked:
            return
        ptr = self.memory().data_ptr() + slot * self.slot_bytes
        err = int(torch.cuda.cudart().cudaHostRegister(ptr, self.slot_bytes, 1))
        if err != 0:
            raise RuntimeError(
                f"could not page-lock slot {slot} of the {self.slots * self.slot_bytes / 2**30:.1f} GiB loader pool "
                f"(cudaError {err}); lower the loader's workers or batch size"
            )
        self._locked.add(slot)

    def release(self) -> None:
        """Undo the page-locking and close the file; the memory itself goes when the last view of it does."""
        if self._pinner is not None:
            self._stop_pinning.set()
            self._pinner.join()
        base = self.memory().data_ptr() if self._locked else 0
        for slot in sorted(self._locked):
            torch.cuda.cudart().cudaHostUnregister(base + slot * self.slot_bytes)
        self._locked.clear()
        os.close(self.fd)

    def view(self, ref: PoolRef) -> torch.Tensor:
        """The tensor a PoolRef describes, as a view of this process's mapping."""
        start = ref.slot * self.slot_bytes + ref.offset
        size = ref.dtype.itemsize
        raw = self.memory()[start : start + _extent(ref.shape, ref.stride) * size]
        return raw.view(ref.dtype).as_strided(ref.shape, ref.stride)

    def fits(self, slots: int, slot_bytes: int) -> bool:
        """Whether this pool can serve a loader that needs `slots` slots of `slot_bytes`."""
        return slots <= self.slots and slot_bytes <= self.slot_bytes


def _extent(shape: tuple[int, ...], stride: tuple[int, ...]) -> int:
    return 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if all(shape) else 0


class BatchSlot(Protocol):
    """Where one batch is written inside a worker."""

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype = torch.uint8) -> torch.Tensor:
        """An uninitialised tensor to fill."""

    def seal(self, item: Any) -> Any:
        """What to send to the main process for `item`."""


class BatchMemory(Protocol):
    """What a dataset writes its batches through (given to its constructor)."""

    def claim(self) -> BatchSlot:
        """Room for the next batch (may wait for the main process to free some)."""


class SegmentSlot:
    """The plain path: each tensor in a shared-memory segment of its own, sent as it is."""

    empty = staticmethod(empty_for_handover)

    @staticmethod
    def seal(item: Any) -> Any:
        """`item` itself."""
        return item


class SegmentMemory:
    """A BatchMemory without a pool."""

    def claim(self) -> SegmentSlot:
        """A segment-backed slot (never waits)."""
        return SegmentSlot()


class PoolSlot:
    """One claimed slot inside a worker: hands out tensors from its memory, front to back."""

    def __init__(self, pool: BatchPool, number: int):
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

    def seal(self, item: Any) -> PooledItem:
        """The item to send: tensors in this slot become PoolRefs (others travel as usual)."""
        base = self._memory.data_ptr()

        def ref(t: torch.Tensor):
            offset = t.data_ptr() - base
            if not 0 <= offset < self.pool.slot_bytes:
                return t
            return PoolRef(self.number, offset, tuple(t.shape), tuple(t.stride()), t.dtype)

        return PooledItem(self.number, map_tensors(item, ref))


class PoolMemory:
    """A BatchMemory in a pool's slots; made in the main process before the workers fork.

    Free slot numbers come from `free`; `stop` tells a waiting worker that the loader has ended.
    """

    def __init__(self, pool: BatchPool):
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self.pool, self.free, self.stop, self.parent = pool, ctx.Queue(), ctx.Event(), os.getpid()

    def refill(self) -> None:
        """Every slot free again, the stop flag down (before the workers start)."""
        while True:
            try:
                self.free.get_nowait()
            except queue.Empty:
                break
        for slot in range(self.pool.slots):
            self.free.put(slot)
        self.stop.clear()

    def claim(self) -> PoolSlot:
        """A free slot; waits until the main process gives one back."""
        while True:
            try:
                return PoolSlot(self.pool, self.free.get(timeout=0.5))
            except queue.Empty:
                if self.stop.is_set() or os.getppid() != self.parent:
                    raise PoolStopped("the loader stopped while this worker waited for a free batch slot") from None
                time.sleep(0)
