"""Teacher-cache input: whole shards read in loader workers, frames sampled, decoded and cropped.

JPEGs are decoded either in the workers (CPU) or in one batched nvjpeg call on the GPU; frames are
centre-cropped to squares so that one resize call per shard brings them to the model's size.
"""
from __future__ import annotations

import signal

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .cpus import TEACHER_RESERVE, loader_workers
from .frames import channels_last_empty, decode, resize, square_crop, stack_channels_last
from .sampling import segment_centres
from .shm import empty_for_handover
from .slot_loader import SlotLoader
from .shard_format import read_shard, select_frames


Groups = list[tuple[list[int], torch.Tensor]]  # (video positions, uint8 [n, F, 3, s, s]) per crop side s


@dataclass
class ShardItem:
    """One shard's sampled frames, as a loader worker hands them over."""

    split: str
    shard: int
    rows: list[int]
    tar: Path
    frames: Groups | list[list[bytes]]  # square crops when decoded on the CPU, else the JPEGs

    def pin_memory(self) -> "ShardItem":
        """This item with its crops in page-locked memory (called by the loader's pin-memory thread)."""
        if self.frames and isinstance(self.frames[0], tuple):
            self.frames = [(idx, crops.pin_memory()) for idx, crops in self.frames]
        return self


class ShardFrames(IterableDataset):
    """Reads whole shards and samples `num_frames` centre frames per video; workers split the shards.

    Shards are decoded and centre-cropped to squares here, in the worker, except a `gpu_share` of
    them (evenly spread) whose JPEGs go to the device as they are, for nvjpeg: when the CPUs cannot
    keep up with the model, the GPU takes part of the decoding. The resize to the model's size
    happens on the device, one call per crop size (one per shard for SSv2).
    """

    def __init__(self, jobs: list[tuple[str, int, Path]], num_frames: int, gpu_share: float = 0.0):
        self.jobs, self.num_frames, self.gpu_share = jobs, num_frames, gpu_share

    slots = None  # a SlotSource while a SlotLoader runs: decoded crops are then written into its slots

    def __iter__(self):
        info = get_worker_info()
        positions = range(len(self.jobs)) if info is None else range(info.id, len(self.jobs), info.num_workers)
        for i in positions:
            if gpu_decoded(i, self.gpu_share):
                yield self.load(*self.jobs[i], cpu_decode=False)
            elif self.slots is None:
                yield self.load(*self.jobs[i], cpu_decode=True)
            else:
                slot = self.slots.claim()
                yield slot.seal(self.load(*self.jobs[i], cpu_decode=True, make=slot.empty))

    def load(self, split: str, shard: int, path: Path, cpu_decode: bool, make=empty_for_handover) -> ShardItem:
        """One shard's sampled frames: decoded crop groups (in tensors from `make`), or the raw JPEGs."""
        rows, frames = [], []
        for record, blob in read_shard(str(path)):
            jpegs = select_frames(record, blob, segment_centres(record["num_frames"], self.num_frames))
            rows.append(record["row"])
            frames.append(jpegs)
        if cpu_decode:
            frames = group_squares([[square_crop(f) for f in decode(jpegs)] for jpegs in frames], make)
        return ShardItem(split, shard, rows, path, frames)


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


def _identity(x):
    return x


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # each worker decodes one shard; threads would only fight each other
    # SLURM signals every process of a job on preemption; the main process decides how to stop
    # (save and requeue) and its workers end with it, so they must not die of the signal first.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def make_loader(jobs: list, num_frames: int, gpu_share: float, num_workers: int, pin_memory: bool = False,
                device: torch.device | None = None, shard_bytes: int = 0):
    """Shards in, one ShardItem per shard out; workers take every n-th shard (-1: as many as the CPUs allow).

    With `device` and `shard_bytes` (room for one shard's crops), workers write into a page-locked
    pool and the crops come out on `device`, copied on the stream that `prepare` uses; otherwise
    they come in shared-memory segments (pinned on request) for `prepare` to copy.
    """
    workers = min(loader_workers(num_workers, TEACHER_RESERVE), len(jobs))
    pooled = device is not None and shard_bytes > 0 and workers > 0
    dataset = ShardFrames(jobs, num_frames, gpu_share)
    # Two shards in flight per worker keep the GPU fed; more only adds memory (~100 MB a shard).
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_identity,
                        worker_init_fn=_worker_init, pin_memory=pin_memory and not pooled and torch.cuda.is_available(),
                        prefetch_factor=2 if workers else None, persistent_workers=False,
                        multiprocessing_context="fork" if pooled else None,
                        # its own generator: creating a loader must not advance the global RNG that
                        # dropout draws from, or a resumed run would drift from an uninterrupted one
                        generator=torch.Generator().manual_seed(0))
    if not pooled:
        return loader
    stream = _side_stream(device) if device.type == "cuda" else None
    return SlotLoader(loader, workers * 2 + 4, shard_bytes, device, stream)


def prepare(item: ShardItem, size: int, device: torch.device):
    """(item, uint8 frames [V, F, 3, S, S] on device, event marking them ready): for the prep thread."""
    if device.type != "cuda":
        return item, to_device(item, size, device), None
    stream = _side_stream(device)
    with torch.cuda.stream(stream):
        frames = to_device(item, size, device)
        ready = torch.cuda.Event()
        ready.record(stream)
    return item, frames, ready


_streams: dict = {}


def _side_stream(device: torch.device):
    if device not in _streams:
        _streams[device] = torch.cuda.Stream(device)
    return _streams[device]


def wait_ready(ready, frames: torch.Tensor, device: torch.device) -> None:
    """Make the current stream wait for frames prepared on the side stream."""
    if ready is not None:
        current = torch.cuda.current_stream(device)
        current.wait_event(ready)
        frames.record_stream(current)  # made on the side stream, used on this one


def to_device(item: ShardItem, size: int, device: torch.device) -> torch.Tensor:
    """uint8 [V, F, 3, size, size] on `device`; JPEGs are decoded there when the worker left them raw."""
    if not item.rows:
        return torch.empty(0, 0, 3, size, size, dtype=torch.uint8, device=device)
    if isinstance(item.frames[0], tuple):  # crop groups from a CPU-decoding worker
        groups = [(idx, crops.to(device, non_blocking=True)) for idx, crops in item.frames]
    else:
        flat = [j for video in item.frames for j in video]
        images = decode(flat, device)
        per = len(item.frames[0])
        groups = group_squares([[square_crop(f) for f in images[i : i + per]] for i in range(0, len(images), per)])
    return resize_groups(groups, len(item.rows), size)


