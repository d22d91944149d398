"""Training and evaluation clips from the shards (and the teacher cache), as a WebDataset pipeline.

shard list -> shuffle (seed, epoch) -> split by node -> split by worker -> samples -> buffer shuffle
-> decode only the sampled frames -> segment sampling -> augmentation -> teacher row -> batch.
Frames leave the workers as uint8; normalisation happens on the device.

Training gives every rank exactly `batches_per_rank` batches: each worker cycles over its shards
until it has produced its share, so DDP never waits on a rank that ran out of data. Everything
random is drawn from generators keyed by (seed, epoch, rank, worker, sample), so a run resumed
mid-epoch (skipping the batches it already trained on) sees exactly the batches it would have.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
import webdataset as wds
import zarr
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.accel.batch_pool import BatchMemory, SegmentMemory
from pipeline.accel.pool_loader import PooledLoader, PoolKeeper, worker_loader
from pipeline.accel.shm import empty_for_handover
from pipeline.config import Config
from pipeline.runtime.cpus import TRAIN_RESERVE, loader_workers
from pipeline.runtime.dist import DistEnv
from pipeline.shards.plan import read_index
from pipeline.ssv2.frames import channels_last_empty, decode, stack_channels_last
from pipeline.ssv2.records import select_frames
from pipeline.ssv2.sampling import segment_centres, segment_random
from pipeline.ssv2.views import View, crop_box, replay_view
from pipeline.teacher.heads import HeadChoice
from pipeline.teacher.store import CacheMismatchError, CacheReader


@dataclass
class ClipBatch:
    """A batch of clips: uint8 frames [B, T, 3, S, S], labels, and the teacher's outputs if cached."""

    clips: torch.Tensor
    labels: torch.Tensor
    teacher_feature: torch.Tensor | None
    teacher_logits: torch.Tensor | None
    ids: list[str]

    def pin_memory(self) -> "ClipBatch":
        """Pinned copies, for asynchronous host-to-device transfer."""
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return ClipBatch(pin(self.clips), pin(self.labels), pin(self.teacher_feature), pin(self.teacher_logits), self.ids)


@dataclass(frozen=True)
class ClipSpec:
    """How one stream of clips is made."""

    num_frames: int
    image_size: int
    batch_size: int
    train: bool
    flip: bool = False
    shuffle_buffer: int = 256
    seed: int = 0
    epoch: int = 0


@dataclass(frozen=True)
class ClipSource:
    """Which clips one rank's loader makes: its shards, how, how many batches, and what goes with them."""

    shards: list[str]
    spec: ClipSpec
    rank: int
    world: int
    num_batches: int | None  # None: one pass (evaluation), the last batch may be short
    cache: "CacheSource | None"
    flip_pairs: dict[int, int]
    skip_batches: int = 0  # batches of this epoch already trained on (a resumed run)


class ShardClips(IterableDataset):
    """The clip stream of one rank; its loader workers split the rank's shards between them and
    write each batch through `memory`."""

    def __init__(self, source: ClipSource, memory: BatchMemory | None = None):
        self.source, self.spec = source, source.spec
        self.memory = memory or SegmentMemory()

    def _my_shards(self, worker: int, workers: int) -> list[str]:
        order = list(self.source.shards)
        if self.spec.train:
            random.Random(f"{self.spec.seed}-{self.spec.epoch}").shuffle(order)  # shuffle (seed, epoch)
        return order[self.source.rank :: self.source.world][worker::workers]  # split by node, then by worker

    def __iter__(self) -> Iterator[ClipBatch]:
        info = get_worker_info()
        loader_worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # DataLoader takes batch i from its worker i % workers. Global batch b belongs to role
        # b % workers, so after skipping `skip` batches loader worker w plays role (w + skip) % workers.
        wanted, skipped = self.source.num_batches, self.source.skip_batches
        worker = (loader_worker + skipped) % workers
        shards = self._my_shards(worker, workers)
        samples = self._samples(shards, worker)
        if wanted is None:  # evaluation: one pass, last batch may be short
            yield from self._batches(enumerate(samples), worker)
            return
        share = wanted // workers + (worker < wanted % workers)
        skip = skipped // workers + (worker < skipped % workers)
        sized = islice(enumerate(samples), skip * self.spec.batch_size, share * self.spec.batch_size)
        yield from self._batches(sized, worker)

    def _samples(self, shards: list[str], worker: int) -> Iterator[dict]:
        spec = self.spec
        if not shards:
            return
        passes = 0
        while True:  # training cycles over the worker's shards until its share is produced
            pipeline = wds.DataPipeline(wds.SimpleShardList(shards), wds.tarfile_to_samples())
            stream = iter(pipeline)
            if spec.train:
                rng = random.Random(f"{spec.seed}-{spec.epoch}-{self.source.rank}-{worker}-{passes}")
                stream = wds.shuffle(spec.shuffle_buffer, initial=spec.shuffle_buffer, rng=rng)(stream)
            got = 0
            for got, sample in enumerate(stream, 1):  # noqa: B007 (read after the loop)
                yield sample
            if got == 0 and spec.train:  # cycling over shards that hold nothing would spin for ever
                raise ValueError(f"loader worker {worker}: its shards hold no videos: {', '.join(shards)}")
            passes += 1
            if not spec.train:
                return

    def _batches(self, indexed: Iterator[tuple[int, dict]], worker: int) -> Iterator[ClipBatch]:
        items = []
        for index, sample in indexed:
            items.append(self._clip(sample, worker, index))
            if len(items) == self.spec.batch_size:
                yield self._collate(items)
                items = []
        if items:
            yield self._collate(items)

    def _collate(self, items: list[tuple]):
        slot = self.memory.claim()
        return slot.seal(collate(items, slot.empty))

    def _clip(self, sample: dict, worker: int, index: int) -> tuple:
        spec, cache = self.spec, self.source.cache
        record = json.loads(sample["json"])
        label, view = record["label"], 0
        if spec.train and cache is not None and cache.views > 1:
            # replay: exactly the frames, crop and flip the teacher saw for this epoch's view
            view = replay_view(spec.seed, record["row"], spec.epoch, cache.views)
            frames, flipped = self.replayed_crop(sample, record, view)
            frames = TF.resize(frames, [spec.image_size, spec.image_size], antialias=True)
        elif spec.train:
            rng = np.random.default_rng([spec.seed, spec.epoch, self.source.rank, worker, index])
            picks = segment_random(record["num_frames"], spec.num_frames, rng)
            frames = multiscale_crop(decode(select_frames(record, sample["jpgs"], picks)), spec.image_size, rng)
            flipped = spec.flip and rng.random() < 0.5
        else:
            picks = segment_centres(record["num_frames"], spec.num_frames)
            frames = centre_crop(stack_channels_last(decode(select_frames(record, sample["jpgs"], picks))), spec.image_size)
            flipped = False
        if flipped:
            frames, label = frames.flip(-1), self.source.flip_pairs.get(label, label)
        feature = logits = None
        if cache is not None:
            feature, logits = cache.get(record["row"], record["id"], view)
        return frames, label, feature, logits, record["id"]

    def replayed_crop(self, sample: dict, record: dict, view: int) -> tuple[torch.Tensor, bool]:
        """View `view` of a training video as stored with the teacher's outputs: its frames cut to
        the view's box, before any resize ([T, 3, h, w], channels last), and whether it is flipped."""
        v = self.source.cache.view(record["row"], record["id"], view)
        if len(v.frames) != self.spec.num_frames:
            raise CacheMismatchError(
                f"the teacher cache's views have {len(v.frames)} frames, the student trains on {self.spec.num_frames}: "
                "rebuild the cache (make teacher-cache) with this student.num_frames"
            )
        top, left, h, w = v.box
        frames = decode(select_frames(record, sample["jpgs"], v.frames))
        return stack_channels_last([f[..., top : top + h, left : left + w] for f in frames]), v.flip


def collate(items: list[tuple], make=empty_for_handover) -> ClipBatch:
    """Stack clips (channels last in memory, like the clips), labels and (when present) teacher outputs,
    each into a tensor from `make(shape, dtype)`."""
    frames, labels, features, logits, ids = zip(*items)
    clips = stack_channels_last(frames, out=channels_last_empty((len(frames), *frames[0].shape), make))
    return ClipBatch(clips, _stacked(labels, make), _stacked(features, make), _stacked(logits, make), list(ids))


def _stacked(values: Sequence, make) -> torch.Tensor | None:
    if values[0] is None:
        return None
    array = np.stack(values)
    out = make(array.shape, torch.from_numpy(array[:0]).dtype)
    return out.copy_(torch.from_numpy(array))


def multiscale_crop(frames: Sequence[torch.Tensor], size: int, rng: np.random.Generator) -> torch.Tensor:
    """TSN multi-scale crop of [3, H, W] frames, resized; [T, 3, size, size] out, channels last in memory."""
    top, left, ch, cw = crop_box(*frames[0].shape[-2:], rng)
    # only the crops are stacked: resizing a crop view of whole frames copies it first, slower
    crop = stack_channels_last([f[..., top : top + ch, left : left + cw] for f in frames])
    return TF.resize(crop, [size, size], antialias=True)


def centre_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Evaluation view of [T, 3, H, W]: short side to size * 256/224, then the centre size x size."""
    scaled = TF.resize(frames, int(round(size * 256 / 224)), antialias=True)
    return TF.center_crop(scaled, [size, size])


class CacheSource:
    """Opens the teacher cache lazily in each worker and serves (feature, logits) by row; the logits
    are those of the teacher head in array `logits` (see teacher.store.head_array), divided by the
    head's calibration `temperature`."""

    def __init__(self, store: Path, split: str, *, logits: str = "logits", temperature: float = 1.0):
        self.store, self.split, self.logits, self.temperature = str(store), split, logits, temperature
        self._reader: CacheReader | None = None
        self._views: int | None = None

    @property
    def reader(self) -> CacheReader:
        """This process's reader of the store."""
        if self._reader is None:
            root = zarr.open_group(self.store, mode="r")
            self._reader = CacheReader(root, self.split, logits=self.logits, temperature=self.temperature)
        return self._reader

    @property
    def views(self) -> int:
        """Views per video stored for this split (1: the centre view only)."""
        if self._views is None:
            self._views = int(zarr.open_group(self.store, mode="r")[self.split]["features"].shape[1])
        return self._views

    def get(self, row: int, video_id: str, view: int = 0):
        """The cached teacher outputs of a video's view (refuses invalid rows)."""
        return self.reader.get(row, video_id, view)

    def view(self, row: int, video_id: str, view: int) -> View:
        """The frames, box and flip of a stored training view."""
        return self.reader.view(row, video_id, view)


def teacher_source(cfg: Config, split: str, teacher: HeadChoice | None) -> CacheSource | None:
    """The cache rows a split's clips carry when distilling (None for vanilla training): the chosen
    head's logits (zero_shot when none is given)."""
    if cfg.loss.mode != "distill":
        return None
    if teacher is None:
        return CacheSource(cfg.paths.teacher_cache, split)
    return CacheSource(cfg.paths.teacher_cache, split, logits=teacher.array, temperature=teacher.temperature)


# Batches each worker may have ready. With the batch pool every one of them is a page-locked slot
# held for the whole run (sizes in docs/benchmarks.md, "batch pool"): the same memory that the
# per-batch segments and their pinned copies take while the loader runs.
_PREFETCH = 4


def make_loader(source: ClipSource, *, workers: int, device: torch.device, keeper: PoolKeeper | None = None):
    """The workers' batches of `source` in round-robin order. With a pool `keeper` (and workers),
    they are written into a page-locked pool and come out on `device`; otherwise they come in
    shared-memory segments (pinned by the pin-memory thread on CUDA) and the caller moves them."""
    pooled = keeper is not None and workers > 0
    memory = keeper.memory(workers * _PREFETCH + 4, batch_bytes(source.spec)) if pooled else None
    loader = worker_loader(
        ShardClips(source, memory),
        workers=workers,
        prefetch=_PREFETCH,
        pin_memory=device.type == "cuda" and not pooled,
        fork=pooled,
    )
    # every ready batch, plus a few being copied to the GPU or being written
    return PooledLoader(loader, memory, device, keeper=keeper) if pooled else loader


def batch_bytes(spec: ClipSpec) -> int:
    """Room for one batch: its uint8 clips, plus labels and teacher outputs (a generous 16 KiB a clip)."""
    return spec.batch_size * (spec.num_frames * 3 * spec.image_size**2 + 16 * 1024)


def split_shards(cfg: Config, split: str) -> tuple[list[str], int]:
    """The split's shard paths and its number of videos, from the shards index."""
    index = read_index(cfg.paths.shards_dir, split)
    return [str(cfg.paths.shards_dir / s["name"]) for s in index["shards"]], index["num_videos"]


def to_device(batch: ClipBatch, device: torch.device) -> ClipBatch:
    """The batch on `device` (asynchronously where the host memory is pinned; a no-op for a batch
    the pooled loader already put there)."""
    move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
    return ClipBatch(move(batch.clips), move(batch.labels), move(batch.teacher_feature), move(batch.teacher_logits), batch.ids)


def train_workers(cfg: Config, env: DistEnv) -> int:
    """Loader processes per rank: train.num_workers, or for -1 as many as the rank's CPUs allow.

    The automatic count follows the node, so a run that must resume batch for batch on another kind
    of node should set a fixed number.
    """
    return loader_workers(cfg.train.num_workers, TRAIN_RESERVE, env.local_world_size)


def check_shards_feed(num_shards: int, world: int, workers: int, split: str) -> None:
    """Every training worker needs at least one shard of its own."""
    if num_shards < world * workers:
        raise ValueError(
            f"{num_shards} {split} shards cannot feed {world} ranks x {workers} loader workers "
            f"(each worker needs a shard): lower train.num_workers or rebuild with a smaller shards.videos_per_shard"
        )
