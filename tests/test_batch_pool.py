"""The batch pool: loader workers write batches into shared slots that the main process gives back."""

import os
import time
from dataclasses import dataclass

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.accel.batch_pool import BatchMemory, BatchPool, PoolRef, PoolSlot
from pipeline.accel.pool_loader import PooledLoader, PoolKeeper


@dataclass
class Item:
    number: int
    pixels: torch.Tensor  # channels last, like the loaders' clips
    values: torch.Tensor
    big: torch.Tensor | None


class Numbered(IterableDataset):
    """Items whose contents follow from their number, written into pool slots (`big` overflows them)."""

    def __init__(self, count: int, memory: BatchMemory, big_every: int = 0):
        self.count, self.memory, self.big_every = count, memory, big_every

    def __iter__(self):
        info = get_worker_info()
        for n in range(info.id, self.count, info.num_workers):
            slot = self.memory.claim()
            yield slot.seal(make_item(n, slot.empty, self.big_every))


def make_item(n: int, make, big_every: int = 0) -> Item:
    pixels = make((2, 5, 6, 3)).movedim(-1, -3)  # [2, 3, 5, 6] laid out [2, 5, 6, 3]
    pixels.copy_(torch.arange(180, dtype=torch.uint8).view(2, 3, 5, 6) + n)
    values = make((4,), torch.float16)
    values.copy_(torch.tensor([n, n / 2, -n, 0.25]))
    big = None
    if big_every and n % big_every == 0:  # larger than what is left of a slot: sent the old way
        big = make((4096,), torch.int64)
        big.copy_(torch.arange(4096) * n)
    return Item(n, pixels, values, big)


def _loader(
    count: int, *, workers: int, slots: int, slot_bytes: int, big_every: int = 0, keeper: PoolKeeper | None = None
) -> PooledLoader:
    keeper = keeper or PoolKeeper()
    memory = keeper.memory(slots, slot_bytes)
    loader = DataLoader(
        Numbered(count, memory, big_every),
        batch_size=None,
        num_workers=workers,
        collate_fn=lambda x: x,
        prefetch_factor=2,
        multiprocessing_context="fork",
        timeout=60,
    )  # a slot never given back fails, not hangs
    return PooledLoader(loader, memory, torch.device("cpu"), keeper=keeper)


@pytest.mark.unit
def test_items_come_back_intact_in_order_while_few_slots_are_reused():
    # 2 workers x 2 ready items need 4 slots; 40 items through 6 slots reuse each of them many times
    got = list(_loader(40, big_every=7, workers=2, slots=6, slot_bytes=4096))
    assert [item.number for item in got] == list(range(40))
    for item in got:
        want = make_item(item.number, lambda shape, dtype=torch.uint8: torch.empty(shape, dtype=dtype), big_every=7)
        assert torch.equal(item.pixels, want.pixels) and torch.equal(item.values, want.values)
        assert item.pixels.is_contiguous(memory_format=torch.channels_last)
        assert (item.big is None) == (want.big is None)
        if want.big is not None:
            assert torch.equal(item.big, want.big)


@pytest.mark.unit
def test_a_loader_left_early_stops_its_workers_and_the_pool_serves_the_next():
    import multiprocessing

    keeper = PoolKeeper()
    start = time.monotonic()
    for n, _ in enumerate(_loader(1000, workers=2, slots=6, slot_bytes=4096, keeper=keeper)):
        if n == 3:
            break  # the workers are waiting for slots or have items ready
    assert time.monotonic() - start < 20
    assert not multiprocessing.active_children()
    again = _loader(10, workers=2, slots=6, slot_bytes=4096, keeper=keeper)
    assert [item.number for item in again] == list(range(10))


@pytest.mark.unit
def test_slot_refs_describe_tensors_a_forked_process_wrote():
    pool = BatchPool(slots=3, slot_bytes=1000)
    assert pool.slot_bytes == 4096  # rounded up to pages
    read, write = os.pipe()
    if (pid := os.fork()) == 0:  # a worker: writes into slot 2 and sends where things are
        slot = PoolSlot(pool, 2)
        item = make_item(9, slot.empty)
        sealed = slot.seal(item)
        os.write(write, repr((sealed.slot, sealed.item.pixels, sealed.item.values)).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    slot, pixels, values = eval(os.read(read, 10_000).decode(), {"PoolRef": PoolRef, "torch": torch})
    assert slot == 2 and pixels.slot == 2 and values.offset >= 180
    want = make_item(9, lambda shape, dtype=torch.uint8: torch.empty(shape, dtype=dtype))
    assert torch.equal(pool.view(pixels), want.pixels) and torch.equal(pool.view(values), want.values)


def test_pooled_and_segment_training_batches_are_identical(synth_root, tmp_path):
    from pipeline.shards import build as shards
    from pipeline.student.data import ClipSource, ClipSpec, make_loader, split_shards
    from tests.helpers import make_config

    cfg = make_config(synth_root, tmp_path, "student.image_size=32")
    shards.run(cfg)
    files, _ = split_shards(cfg, "train")
    spec = ClipSpec(4, 32, 3, train=True, seed=1)
    runs, keeper = [], PoolKeeper()
    for pooled in (True, False, True):  # the second pooled loader reuses the pool kept from the first
        source = ClipSource(files, spec, 0, 1, 9, None, {})
        runs.append(list(make_loader(source, workers=2, device=torch.device("cpu"), keeper=keeper if pooled else None)))
    assert [len(r) for r in runs] == [9, 9, 9]
    for a, b, c in zip(*runs):
        assert a.ids == b.ids == c.ids and torch.equal(a.labels, b.labels) and torch.equal(a.labels, c.labels)
        assert torch.equal(a.clips, b.clips) and torch.equal(a.clips, c.clips)
        assert a.clips.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
