"""How the teacher loop overlaps its steps, kept apart so that `run.py` reads as the method.

Loader workers decode; a prep thread copies the next shard to the GPU and resizes it on a side
stream while this one is encoded; each shard's outputs are copied into reused page-locked host
buffers, and a hand-over thread waits for them and passes them to writer processes, which write
Zarr without taking this process's GIL. The launching thread itself never waits on the GPU. Every
wait is timed into the task's summary, to tell which side bounds the task.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from pipeline.accel.host_buffers import HostBuffers
from pipeline.accel.overlap import InOrderThread, ProcessWriter, map_ahead
from pipeline.teacher.data import FramePrep, ShardItem

# Shards queued for the hand-over thread; with the GPU's own queue this keeps it fed.
_LAG = 2


class ShardFlow:
    """Shards in (on the device, at the model's size) and outputs out (to the writers), overlapped.

    with ShardFlow(loader, prep=prep, writer=writer, store=store, summary=summary) as flow:
        for item, frames in flow:
            ...
            flow.write(item, {"features": features, "logits": logits, "frame_features": frame_features})
    """

    def __init__(self, loader: Iterable, *, prep: FramePrep, writer: ProcessWriter, store: str, summary):
        self.loader, self.prep, self.writer, self.store, self.summary = loader, prep, writer, store, summary
        self.device = prep.device
        self._host = HostBuffers(_LAG + 2, pinned=self.device.type == "cuda")  # queued, being handed over, being filled
        self._handed = InOrderThread(self._hand_over, depth=_LAG)
        self._turn = 0
        self._parts: dict[tuple[str, int], list] = {}  # a shard's parts so far (hand-over thread only)
        self._start = time.monotonic()

    def __enter__(self) -> ShardFlow:
        return self

    def __exit__(self, *exc) -> None:
        self._handed.close()
        self.summary.compute_seconds = time.monotonic() - self._start
        if exc[0] is None and self._parts:  # every shard's parts come in order from one worker
            raise RuntimeError(f"shards left incomplete at the end of the loop: {sorted(self._parts)}")

    def __iter__(self) -> Iterator[tuple[ShardItem, torch.Tensor]]:
        prepared = map_ahead(self.prep, self.loader)
        while True:
            t0 = time.monotonic()
            got = next(prepared, None)
            self.summary.wait_input_s += time.monotonic() - t0
            if got is None:
                return
            item, frames, ready = got
            self.prep.wait(ready, frames)
            yield item, frames

    def write(self, item: ShardItem, outputs: dict[str, torch.Tensor]) -> None:
        """Copy `outputs` (store array name -> values) to the host without waiting, then queue them for the writers."""
        host = dict(zip(outputs, self._host.copy(self._turn, list(outputs.values()))))
        self._turn += 1
        t0 = time.monotonic()
        self._handed.put((item, _event(self.device), host))
        self.summary.wait_output_s += time.monotonic() - t0
        self.summary.first_shard_s = self.summary.first_shard_s or time.monotonic() - self._start

    def _hand_over(self, job: tuple) -> None:
        item, copied, outputs = job
        t0 = time.monotonic()
        if copied is not None:
            copied.synchronize()  # later shards are queued behind it, so the GPU keeps working
        t1 = time.monotonic()
        # copies: the host buffers are reused _LAG + 1 shards later; the item's own arrays (its views) go as they are
        arrays = {name: t.numpy().copy() for name, t in outputs.items()} | item.stored
        whole = self._whole_shard(item, arrays)
        if whole is not None:
            j = item.job
            self.writer.submit(self.store, j.split, j.shard, whole[0], str(j.tar), whole[1])
        self.summary.wait_gpu_s += t1 - t0
        self.summary.wait_write_s += time.monotonic() - t1

    def _whole_shard(self, item: ShardItem, arrays: dict) -> tuple[list[int], dict] | None:
        """(rows, arrays) of item's shard once its last part is here (a shard is written whole or not at all)."""
        if item.parts == 1:
            return item.rows, arrays
        key = (item.job.split, item.job.shard)
        parts = self._parts.setdefault(key, [])
        parts.append((item.rows, arrays))
        if item.part < item.parts - 1:
            return None
        del self._parts[key]
        rows = [r for part_rows, _ in parts for r in part_rows]
        return rows, {name: np.concatenate([a[name] for _, a in parts]) for name in arrays}


def _event(device: torch.device) -> torch.cuda.Event | None:
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record()
    return event
