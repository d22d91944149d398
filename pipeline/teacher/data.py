"""Teacher-cache input: whole shards read in loader workers, frames sampled, decoded and cropped.

JPEGs are decoded either in the workers (CPU) or in one batched nvjpeg call on the GPU; frames are
centre-cropped to squares so that one resize call per shard brings them to the model's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.accel.batch_pool import BatchMemory, SegmentMemory
from pipeline.accel.pool_loader import PooledLoader, PoolKeeper, worker_loader
from pipeline.accel.shm import empty_for_handover
from pipeline.runtime.cpus import TEACHER_RESERVE, loader_workers
from pipeline.ssv2.frames import channels_last_empty, decode, resize, square_crop, stack_channels_last
from pipeline.ssv2.records import read_shard, select_frames
from pipeline.ssv2.sampling import segment_centres

Groups = list[tuple[list[int], torch.Tensor]]  # (video positions, uint8 [n, F, 3, s, s]) per crop side s


@dataclass(frozen=True)
class ShardJob:
    """One shard to compute: its split, its number in the split's index, and its tar."""

    split: str
    shard: int
    tar: Path


@dataclass
class ShardCrops:
    """One shard's sampled frames decoded by a loader worker: square crops grouped by side."""

    job: ShardJob
    rows: list[int]
    groups: Groups

    def pin_memory(self) -> ShardCrops:
        """This item with its crops in page-locked memory (called by the loader's pin-memory thread)."""
        self.groups = [(idx, crops.pin_memory()) for idx, crops in self.groups]
        return self


@dataclass
class ShardJpegs:
    """One shard's sampled frames left as JPEG bytes, for nvjpeg on the GPU."""

    job: ShardJob
    rows: list[int]
    jpegs: list[list[bytes]]  # per video, its sampled frames

    def pin_memory(self) -> ShardJpegs:
        """Nothing to pin: bytes go to nvjpeg as they are."""
        return self


ShardItem = ShardCrops | ShardJpegs


class ShardFrames(IterableDataset):
    """Reads whole shards and samples `num_frames` centre frames per video; workers split the shards.

    Shards are decoded and centre-cropped to squares here, in the worker, into tensors from
    `memory`, except a `gpu_share` of them (evenly spread) whose JPEGs go to the device as they
    are, for nvjpeg: when the CPUs cannot keep up with the model, the GPU takes part of the
    decoding. The resize to the model's size happens on the device, one call per crop size (one
    per shard for SSv2).
    """

    def __init__(self, jobs: list[ShardJob], num_frames: int, *, gpu_share: float = 0.0, memory: BatchMemory | None = None):
        self.jobs, self.num_frames, self.gpu_share = jobs, num_frames, gpu_share
        self.memory = memory or SegmentMemory()

    def __iter__(self):
        info = get_worker_info()
        positions = range(len(self.jobs)) if info is None else range(info.id, len(self.jobs), info.num_workers)
        for i in positions:
            if gpu_decoded(i, self.gpu_share):
                yield self.read(self.jobs[i])
            else:
                slot = self.memory.claim()
                yield slot.seal(self.decoded(self.jobs[i], make=slot.empty))

    def read(self, job: ShardJob) -> ShardJpegs:
        """One shard's sampled frames as JPEG bytes."""
        rows, jpegs = [], []
        for record, blob in read_shard(str(job.tar)):
            rows.append(record["row"])
            jpegs.append(select_frames(record, blob, segment_centres(record["num_frames"], self.num_frames)))
        return ShardJpegs(job, rows, jpegs)

    def decoded(self, job: ShardJob, make=empty_for_handover) -> ShardCrops:
        """One shard's sampled frames decoded and cropped to squares, in tensors from `make`."""
        raw = self.read(job)
        groups = group_squares([[square_crop(f) for f in decode(video)] for video in raw.jpegs], make)
        return ShardCrops(job, raw.rows, groups)


def gpu_decoded(position: int, share: float) -> bool:
    """Whether the shard at `position` is left for GPU decoding: `share` of all, evenly spread."""
    return int((position + 1) * share) > int(position * share)


def group_squares(videos: list[list[torch.Tensor]], make=empty_for_handover) -> Groups:
    """Stack videos of square frames [3, s, s] by crop side s, each group in one tensor (channels last).

    Inside a loader worker the groups are made in shared memory (`make`: a pool slot or a segment of
    their own), so this is the only copy of the decoded pixels: a tensor made elsewhere is copied
    again into shared memory when it is sent.
    """
    by_side: dict[int, list[int]] = {}
    for i, v in enumerate(videos):
        by_side.setdefault(v[0].shape[-1], []).append(i)
    groups = []
    for idx in by_side.values():
        first = videos[idx[0]][0]
        shape = (len(idx), len(videos[idx[0]]), *first.shape)
        alloc = make if first.device.type == "cpu" else partial(torch.empty, dtype=torch.uint8, device=first.device)
        out = channels_last_empty(shape, alloc)
        for k, i in enumerate(idx):
            stack_channels_last(videos[i], out=out[k])
        groups.append((idx, out))
    return groups


def resize_groups(groups: Groups, num_videos: int, size: int) -> torch.Tensor:
    """uint8 [V, F, 3, size, size] from crop groups: one resize call per group."""
    out = None
    for idx, crops in groups:
        resized = resize(crops.flatten(0, 1), size).view(*crops.shape[:3], size, size)
        if out is None:
            out = resized.new_empty(num_videos, *resized.shape[1:])
        out[torch.as_tensor(idx, device=resized.device)] = resized
    return out


# Shards each worker may have ready: two keep the GPU fed; more only add memory.
_PREFETCH = 2


class FramePrep:
    """Brings each shard's frames to the device at the model's size; on CUDA on a side stream of its
    own, so the next shard's copy and resize overlap this one's forward."""

    def __init__(self, size: int, device: torch.device):
        self.size, self.device = size, device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __call__(self, item: ShardItem) -> tuple[ShardItem, torch.Tensor, torch.cuda.Event | None]:
        """(item, uint8 frames [V, F, 3, S, S] on the device, event marking them ready)."""
        if self.stream is None:
            return item, frames_on_device(item, self.size, self.device), None
        with torch.cuda.stream(self.stream):
            frames = frames_on_device(item, self.size, self.device)
            ready = torch.cuda.Event()
            ready.record(self.stream)
        return item, frames, ready

    def wait(self, ready: torch.cuda.Event | None, frames: torch.Tensor) -> None:
        """Make the current stream wait for frames prepared on the side stream."""
        if ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready)
            frames.record_stream(current)  # made on the side stream, used on this one


def make_loader(
    jobs: list[ShardJob],
    num_frames: int,
    *,
    num_workers: int,
    gpu_share: float = 0.0,
    prep: FramePrep | None = None,
    keeper: PoolKeeper | None = None,
    shard_bytes: int = 0,
    pin_memory: bool = False,
):
    """Shards in, one ShardItem per shard out; workers take every n-th shard (-1: as many as the CPUs allow).

    With `prep`, a pool `keeper` and `shard_bytes` (room for one shard's crops), workers write into
    a page-locked pool and the crops come out on the device, copied on `prep`'s stream; otherwise
    they come in shared-memory segments (pinned on request) for `prep` to copy.
    """
    workers = min(loader_workers(num_workers, TEACHER_RESERVE), len(jobs))
    pooled = prep is not None and keeper is not None and shard_bytes > 0 and workers > 0
    memory = keeper.memory(workers * _PREFETCH + 4, shard_bytes) if pooled else None
    dataset = ShardFrames(jobs, num_frames, gpu_share=gpu_share, memory=memory)
    loader = worker_loader(
        dataset,
        workers=workers,
        prefetch=_PREFETCH,
        fork=pooled,
        pin_memory=pin_memory and not pooled and torch.cuda.is_available(),
    )
    if not pooled:
        return loader
    return PooledLoader(loader, memory, prep.device, keeper=keeper, stream=prep.stream)


def frames_on_device(item: ShardItem, size: int, device: torch.device) -> torch.Tensor:
    """uint8 [V, F, 3, size, size] on `device`; JPEGs are decoded there when the worker left them raw."""
    if not item.rows:
        return torch.empty(0, 0, 3, size, size, dtype=torch.uint8, device=device)
    if isinstance(item, ShardCrops):
        groups = [(idx, crops.to(device, non_blocking=True)) for idx, crops in item.groups]
    else:
        images = decode([j for video in item.jpegs for j in video], device)
        per = len(item.jpegs[0])
        groups = group_squares([[square_crop(f) for f in images[i : i + per]] for i in range(0, len(images), per)])
    return resize_groups(groups, len(item.rows), size)
