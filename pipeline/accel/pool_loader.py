"""A DataLoader whose workers write into a BatchPool, yielding items whose tensors are ready to use.

On CUDA each item's tensors are copied to the GPU straight from the page-locked slots, on a copy
stream, and a thread gives each slot back once its copy has finished; the CPU takes copies out
of the slots. Page-locking gigabytes takes seconds and every epoch and every evaluation makes a
new loader, so a `PoolKeeper` (one per stage run) keeps a pool across loaders.

    keeper = PoolKeeper()
    memory = keeper.memory(slots, slot_bytes)            # before the dataset is made
    dataset = MyDataset(..., memory=memory)
    for item in PooledLoader(DataLoader(dataset, ...), memory, device):
        ...
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from pipeline.accel.batch_pool import BatchPool, PooledItem, PoolMemory, PoolRef, map_tensors

log = logging.getLogger(__name__)


class PoolKeeper:
    """Hands out pool memory, keeping one pool for the next loader when it is large enough and free."""

    def __init__(self) -> None:
        self._kept: BatchPool | None = None
        self._kept_busy = False

    def memory(self, slots: int, slot_bytes: int) -> PoolMemory:
        """Memory of `slots` slots of `slot_bytes` for one loader: the kept pool if it fits and is free."""
        if self._kept is not None and not self._kept_busy and self._kept.fits(slots, slot_bytes):
            pool = self._kept
        else:
            pool = BatchPool(slots, slot_bytes)
            if not self._kept_busy:
                if self._kept is not None:
                    self._kept.release()
                self._kept = pool
        if pool is self._kept:
            self._kept_busy = True
        return PoolMemory(pool)

    def done(self, memory: PoolMemory) -> None:
        """The loader using `memory` has ended: its pool is free again (or closed if not kept)."""
        if memory.pool is self._kept:
            self._kept_busy = False
        else:
            memory.pool.release()

    def close(self) -> None:
        """Release the kept pool."""
        if self._kept is not None:
            self._kept.release()
            self._kept = None


class PooledLoader:
    """Iterates `loader`, whose dataset writes its batches through `memory`."""

    def __init__(
        self,
        loader: DataLoader,
        memory: PoolMemory,
        device: torch.device,
        *,
        keeper: PoolKeeper | None = None,
        stream: torch.cuda.Stream | None = None,
    ):
        self.loader, self.memory, self.device, self.keeper = loader, memory, device, keeper
        # With `stream`, the caller uses the tensors on that stream, so the copies go there; without,
        # they go on a stream of their own and the iterating thread's current stream waits for them.
        self.stream = stream

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        pool, cuda = self.memory.pool, self.device.type == "cuda"
        self.memory.refill()
        returner = SlotReturner(self.memory.free) if cuda else None
        copies = (self.stream or torch.cuda.Stream(self.device)) if cuda else None
        it = iter(self.loader)  # forks the workers, which inherit the memory
        try:
            if cuda and not pool.pinned:
                # beside the workers' first batches and the first copies: it takes seconds
                pool.pin_in_background(
                    lambda seconds: log.info(
                        "page-locked a loader pool of %d slots x %.0f MB in %.1f s, beside the first batches",
                        pool.slots,
                        pool.slot_bytes / 2**20,
                        seconds,
                    )
                )
            for got in it:
                yield self._to_device(got, copies, returner) if cuda else self._copied_out(got)
        finally:
            self.memory.stop.set()  # a worker waiting for a slot gives up instead of holding the shutdown
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            if returner is not None:
                returner.close()
            if self.keeper is not None:
                self.keeper.done(self.memory)

    def _to_device(self, got: Any, copies, returner: SlotReturner) -> Any:
        pool = self.memory.pool
        move = lambda t: t.to(self.device, non_blocking=True)  # noqa: E731
        with torch.cuda.stream(copies):
            item = got.item if isinstance(got, PooledItem) else got
            item = map_tensors(map_tensors(item, lambda r: move(pool.view(r)), (PoolRef,)), move)
            done = torch.cuda.Event()
            done.record(copies)
        if isinstance(got, PooledItem):
            returner.put(done, got.slot)
        if self.stream is None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            map_tensors(item, lambda t: t.record_stream(current))  # made on the copy stream, used on this one
        return item

    def _copied_out(self, got: Any) -> Any:
        if not isinstance(got, PooledItem):
            return got
        item = map_tensors(got.item, lambda r: self.memory.pool.view(r).clone(), (PoolRef,))
        self.memory.free.put(got.slot)
        return item


class SlotReturner:
    """A thread that gives each slot back to the workers once the GPU has copied it out."""

    def __init__(self, free):
        self._free, self._todo = free, queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, daemon=True, name="slot-returner")
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


def _identity(x: Any) -> Any:
    return x


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # each worker makes one batch at a time; threads would only fight
    # SLURM signals every process of a job on preemption; the main process decides how to stop
    # (save and requeue) and its workers end with it, so they must not die of the signal first.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def worker_loader(dataset, *, workers: int, prefetch: int, pin_memory: bool, fork: bool) -> DataLoader:
    """A DataLoader over an iterable dataset that makes whole batches itself, `workers` processes each
    keeping up to `prefetch` ready; its own seeded generator, so creating it draws nothing from the
    global RNG that dropout uses (a resumed run would drift from an uninterrupted one)."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        collate_fn=_identity,
        worker_init_fn=_worker_init,
        pin_memory=pin_memory,
        prefetch_factor=prefetch if workers else None,
        persistent_workers=False,
        multiprocessing_context="fork" if fork and workers else None,
        generator=torch.Generator().manual_seed(0),
    )
