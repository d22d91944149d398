"""A DataLoader whose workers write into a SlotPool, yielding items whose tensors are ready to use.

On CUDA each item's tensors are copied to the GPU straight from the page-locked slots, on a copy
stream, and a thread gives each slot back once its copy has finished; the CPU takes copies out
of the slots. One pool per process is kept across loaders, since page-locking gigabytes takes
seconds: every epoch and every evaluation makes a new loader.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader

from .slots import Sealed, SlotPool, SlotRef, SlotSource, map_tensors

log = logging.getLogger(__name__)

_pool: SlotPool | None = None
_in_use: set[int] = set()


def shared_pool(slots: int, slot_bytes: int) -> SlotPool:
    """This process's kept pool when it is large enough and free, else a new one (kept if none is in use)."""
    global _pool
    if _pool is not None and id(_pool) not in _in_use and _pool.fits(slots, slot_bytes):
        return _pool
    pool = SlotPool(slots, slot_bytes)
    if _pool is None or id(_pool) not in _in_use:
        if _pool is not None:
            _pool.release()
        _pool = pool
    return pool


class SlotLoader:
    """Iterates `loader`, whose dataset takes its slots from the `slots` attribute this sets."""

    def __init__(self, loader: DataLoader, slots: int, slot_bytes: int, device: torch.device,
                 stream: "torch.cuda.Stream | None" = None):
        self.loader, self.slots, self.slot_bytes, self.device = loader, slots, slot_bytes, device
        # With `stream`, the caller uses the tensors on that stream, so the copies go there; without,
        # they go on a stream of their own and the iterating thread's current stream waits for them.
        self.stream = stream

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        pool = shared_pool(self.slots, self.slot_bytes)
        cuda = self.device.type == "cuda"
        if cuda and not pool.pinned:
            start = time.monotonic()
            pool.pin()
            log.info("page-locked a loader pool of %d slots x %.0f MB in %.1f s", pool.slots, pool.slot_bytes / 2**20,
                     time.monotonic() - start)
        ctx = multiprocessing.get_context("fork")
        free, stop = ctx.Queue(), ctx.Event()
        for slot in range(pool.slots):
            free.put(slot)
        dataset = self.loader.dataset
        dataset.slots = SlotSource(pool, free, stop, os.getpid())
        giver = _GiveBack(free) if cuda else None
        copies = (self.stream or torch.cuda.Stream(self.device)) if cuda else None
        _in_use.add(id(pool))
        it = iter(self.loader)  # forks the workers, which inherit dataset.slots
        try:
            for got in it:
                yield self._to_device(got, pool, copies, giver) if cuda else _copied_out(got, pool, free)
        finally:
            stop.set()  # a worker waiting for a slot gives up instead of holding the shutdown
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            if giver is not None:
                giver.close()
            dataset.slots = None
            _in_use.discard(id(pool))

    def _to_device(self, got: Any, pool: SlotPool, copies, giver: "_GiveBack") -> Any:
        move = lambda t: t.to(self.device, non_blocking=True)  # noqa: E731
        with torch.cuda.stream(copies):
            item = got.item if isinstance(got, Sealed) else got
            item = map_tensors(map_tensors(item, lambda r: move(pool.view(r)), (SlotRef,)), move)
            done = torch.cuda.Event()
            done.record(copies)
        if isinstance(got, Sealed):
            giver.put(done, got.slot)
        if self.stream is None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            map_tensors(item, lambda t: t.record_stream(current))  # made on the copy stream, used on this one
        return item


def _copied_out(got: Any, pool: SlotPool, free) -> Any:
    if not isinstance(got, Sealed):
        return got
    item = map_tensors(got.item, lambda r: pool.view(r).clone(), (SlotRef,))
    free.put(got.slot)
    return item


class _GiveBack:
    """A thread that gives each slot back to the workers once the GPU has copied it out."""

    def __init__(self, free):
        self._free, self._todo = free, queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, daemon=True, name="slot-give-back")
        self._thread.start()

    def _run(self) -> None:
        while (got := self._todo.get()) is not None:
            event, slot = got
            event.synchronize()
            self._free.put(slot)

    def put(self, event, slot: int) -> None:
        """Give `slot` back once `event` has happened."""
        self._todo.put((event, slot))

    def close(self) -> None:
        """Wait until every slot handed over so far is back."""
        self._todo.put(None)
        self._thread.join()
