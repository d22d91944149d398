"""Teacher-cache input: whole shards read in loader workers, each video's views cut from its frames.

A view is frames + crop box + flip (pipeline/ssv2/views.py): the centre view (segment centres,
centred square), or for training videos with `teacher.views` > 1 the K views the student replays.
JPEGs are decoded either in the workers (CPU) or in one batched nvjpeg call on the GPU; crops of one
shape are stacked so that one resize call per shape brings them to the model's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.accel.batch_pool import BatchMemory, SegmentMemory
from pipeline.accel.pool_loader import PooledLoader, PoolKeeper, worker_loader
from pipeline.accel.shm import empty_for_handover
from pipeline.runtime.cpus import TEACHER_RESERVE, loader_workers
from pipeline.ssv2.frames import channels_last_empty, decode, resize, stack_channels_last
from pipeline.ssv2.records import read_shard, select_frames
from pipeline.ssv2.views import View, centre_view, draw_views, teacher_subset, view_arrays

Groups = list[tuple[list[int], torch.Tensor]]  # (entry positions, uint8 [n, F, 3, h, w]) per crop shape (h, w)


@dataclass(frozen=True)
class ShardJob:
    """One shard to compute: its split, its number in the split's index, and its tar."""

    split: str
    shard: int
    tar: Path


@dataclass(frozen=True)
class ViewPlan:
    """Which views of each video the teacher encodes: the training views (count > 1, train only),
    else the centre view; and how many frames of each it takes."""

    teacher_frames: int
    count: int = 1
    seed: int = 0
    clip_frames: int = 8
    flip: bool = False
    splits: tuple[str, ...] = ("train",)  # the splits students train on: train and the unlabelled ones

    def stores_views(self, split: str) -> bool:
        """Whether `split`'s videos get training views (whose parameters are stored with the outputs)."""
        return split in self.splits and self.count > 1

    def views(self, record: dict, split: str) -> list[View]:
        """The views of the video in `record`."""
        if not self.stores_views(split):
            return [centre_view(record, self.teacher_frames)]
        return draw_views(record, count=self.count, clip_frames=self.clip_frames, flip=self.flip, seed=self.seed)

    def frames(self, view: View, split: str) -> tuple[int, ...]:
        """The frames of `view` the teacher encodes."""
        return teacher_subset(view.frames, self.teacher_frames) if self.stores_views(split) else view.frames


@dataclass(frozen=True)
class Entry:
    """One view of one video to encode: its video's position, which of that video's read frames, the box, the flip."""

    video: int
    picks: tuple[int, ...]
    box: tuple[int, int, int, int]
    flip: bool


@dataclass
class ShardCrops:
    """One shard's views decoded and cropped by a loader worker: crops grouped by shape."""

    job: ShardJob
    rows: list[int]
    groups: Groups
    flips: list[bool]  # per entry (video-major: entry = video * per_video + view)
    stored: dict[str, np.ndarray]  # the views' parameters to store with the outputs (training views only)
    part: int = 0  # which of the shard's consecutive runs of videos this is
    parts: int = 1

    @property
    def per_video(self) -> int:
        """Views per video."""
        return len(self.flips) // max(1, len(self.rows))

    def pin_memory(self) -> ShardCrops:
        """This item with its crops in page-locked memory (called by the loader's pin-memory thread)."""
        self.groups = [(idx, crops.pin_memory()) for idx, crops in self.groups]
        return self


@dataclass
class ShardJpegs:
    """One shard's frames left as JPEG bytes, for nvjpeg on the GPU, with the views to cut from them."""

    job: ShardJob
    rows: list[int]
    jpegs: list[list[bytes]]  # per video, every frame any of its views needs, once
    entries: list[Entry]
    stored: dict[str, np.ndarray]
    part: int = 0
    parts: int = 1

    @property
    def flips(self) -> list[bool]:
        """Per entry, whether it is flipped."""
        return [e.flip for e in self.entries]

    @property
    def per_video(self) -> int:
        """Views per video."""
        return len(self.entries) // max(1, len(self.rows))

    def pin_memory(self) -> ShardJpegs:
        """Nothing to pin: bytes go to nvjpeg as they are."""
        return self


ShardItem = ShardCrops | ShardJpegs


class ShardFrames(IterableDataset):
    """Reads whole shards and cuts each video's views (the centre view, or the training views of
    `plan`); workers split the shards. A shard goes out in parts of consecutive videos holding about
    `batch_views` views each (0: whole shards), so that with many views per video the first part
    reaches the GPU after a few videos rather than a whole shard, and a part's room in the pool is
    an eighth of a shard's.

    Each video's frames are decoded once, however many of its views share them, and cropped here,
    in the worker, into tensors from `memory`, except a `gpu_share` of the shards (evenly spread)
    whose JPEGs go to the device as they are, for nvjpeg: when the CPUs cannot keep up with the
    model, the GPU takes part of the decoding. The resize to the model's size happens on the
    device, one call per crop shape.
    """

    def __init__(
        self,
        jobs: list[ShardJob],
        plan: ViewPlan,
        *,
        gpu_share: float = 0.0,
        memory: BatchMemory | None = None,
        batch_views: int = 0,
    ):
        self.jobs, self.plan, self.gpu_share, self.batch_views = jobs, plan, gpu_share, batch_views
        self.memory = memory or SegmentMemory()

    def __iter__(self):
        info = get_worker_info()
        positions = range(len(self.jobs)) if info is None else range(info.id, len(self.jobs), info.num_workers)
        for i in positions:
            for raw in split_parts(self.read(self.jobs[i]), self.batch_views):
                if gpu_decoded(i, self.gpu_share):
                    yield raw
                else:
                    slot = self.memory.claim()
                    yield slot.seal(cropped(raw, make=slot.empty))

    def read(self, job: ShardJob) -> ShardJpegs:
        """One shard's needed frames as JPEG bytes, and its views."""
        rows, jpegs, entries, views = [], [], [], []
        for record, blob in read_shard(str(job.tar)):
            mine = self.plan.views(record, job.split)
            wanted = [self.plan.frames(v, job.split) for v in mine]
            union = sorted(set().union(*wanted))
            where = {f: i for i, f in enumerate(union)}
            entries += [Entry(len(rows), tuple(where[f] for f in w), v.box, v.flip) for v, w in zip(mine, wanted)]
            jpegs.append(select_frames(record, blob, union))
            rows.append(record["row"])
            views.append(mine)
        stored = view_arrays(views, self.plan.clip_frames) if self.plan.stores_views(job.split) else {}
        return ShardJpegs(job, rows, jpegs, entries, stored)

    def decoded(self, job: ShardJob, make=empty_for_handover) -> ShardCrops:
        """One shard's views decoded and cropped, in tensors from `make`."""
        return cropped(self.read(job), make)


def cropped(raw: ShardJpegs, make=empty_for_handover) -> ShardCrops:
    """`raw`'s views decoded and cropped, in tensors from `make`."""
    groups = group_crops(cut_views([decode(video) for video in raw.jpegs], raw.entries), make)
    return ShardCrops(raw.job, raw.rows, groups, raw.flips, raw.stored, raw.part, raw.parts)


def split_parts(raw: ShardJpegs, batch_views: int) -> list[ShardJpegs]:
    """`raw` as parts of consecutive videos with about `batch_views` views each (one part for 0)."""
    videos = len(raw.rows)
    per = max(1, batch_views // max(1, raw.per_video)) if batch_views else max(1, videos)
    starts = list(range(0, videos, per)) or [0]
    parts = []
    for k, start in enumerate(starts):
        end = min(start + per, videos)
        entries = [Entry(e.video - start, e.picks, e.box, e.flip) for e in raw.entries if start <= e.video < end]
        stored = {name: values[start:end] for name, values in raw.stored.items()}
        parts.append(ShardJpegs(raw.job, raw.rows[start:end], raw.jpegs[start:end], entries, stored, k, len(starts)))
    return parts


def cut_views(videos: list[list[torch.Tensor]], entries: list[Entry]) -> list[list[torch.Tensor]]:
    """Per entry, its frames [3, h, w] cut out of its video's decoded frames (views, no copies)."""
    out = []
    for e in entries:
        top, left, h, w = e.box
        out.append([videos[e.video][i][..., top : top + h, left : left + w] for i in e.picks])
    return out


def gpu_decoded(position: int, share: float) -> bool:
    """Whether the shard at `position` is left for GPU decoding: `share` of all, evenly spread."""
    return int((position + 1) * share) > int(position * share)


def group_crops(clips: list[list[torch.Tensor]], make=empty_for_handover) -> Groups:
    """Stack clips of frames [3, h, w] by crop shape (h, w), each group in one tensor (channels last).

    Inside a loader worker the groups are made in shared memory (`make`: a pool slot or a segment of
    their own), so this is the only copy of the cropped pixels: a tensor made elsewhere is copied
    again into shared memory when it is sent.
    """
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, clip in enumerate(clips):
        by_shape.setdefault(tuple(clip[0].shape[-2:]), []).append(i)
    groups = []
    for idx in by_shape.values():
        first = clips[idx[0]][0]
        shape = (len(idx), len(clips[idx[0]]), *first.shape)
        alloc = make if first.device.type == "cpu" else partial(torch.empty, dtype=torch.uint8, device=first.device)
        out = channels_last_empty(shape, alloc)
        for k, i in enumerate(idx):
            stack_channels_last(clips[i], out=out[k])
        groups.append((idx, out))
    return groups


def resize_groups(groups: Groups, num_entries: int, size: int) -> torch.Tensor:
    """uint8 [E, F, 3, size, size] from crop groups: one resize call per group."""
    out = None
    for idx, crops in groups:
        resized = resize(crops.flatten(0, 1), size).view(*crops.shape[:3], size, size)
        if out is None:
            out = resized.new_empty(num_entries, *resized.shape[1:])
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
    plan: ViewPlan,
    *,
    num_workers: int,
    gpu_share: float = 0.0,
    prep: FramePrep | None = None,
    keeper: PoolKeeper | None = None,
    shard_bytes: int = 0,
    pin_memory: bool = False,
    batch_views: int = 0,
):
    """Shards in, ShardItems out (a shard's parts in order, `batch_views` views each; 0: whole
    shards); workers take every n-th shard (-1: as many as the CPUs allow).

    With `prep`, a pool `keeper` and `shard_bytes` (room for one item's crops), workers write into
    a page-locked pool and the crops come out on the device, copied on `prep`'s stream; otherwise
    they come in shared-memory segments (pinned on request) for `prep` to copy.
    """
    workers = min(loader_workers(num_workers, TEACHER_RESERVE), len(jobs))
    pooled = prep is not None and keeper is not None and shard_bytes > 0 and workers > 0
    # every item a worker may hold ready, plus a few in flight: fewer slots deadlock, since the
    # loader hands items over in order and a worker waiting for a slot may hold the next one
    memory = keeper.memory(workers * _PREFETCH + 4, shard_bytes) if pooled else None
    dataset = ShardFrames(jobs, plan, gpu_share=gpu_share, memory=memory, batch_views=batch_views)
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
    """uint8 [E, F, 3, size, size] on `device`, one clip per entry (video-major), flipped where its view is;
    JPEGs are decoded there when the worker left them raw."""
    if not item.rows:
        return torch.empty(0, 0, 3, size, size, dtype=torch.uint8, device=device)
    if isinstance(item, ShardCrops):
        groups = [(idx, crops.to(device, non_blocking=True)) for idx, crops in item.groups]
    else:
        images = iter(decode([j for video in item.jpegs for j in video], device))
        videos = [[next(images) for _ in video] for video in item.jpegs]
        groups = group_crops(cut_views(videos, item.entries))
    frames = resize_groups(groups, len(item.flips), size)
    flipped = [i for i, f in enumerate(item.flips) if f]
    if flipped:
        idx = torch.as_tensor(flipped, device=frames.device)
        frames[idx] = frames[idx].flip(-1)
    return frames
