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

from pipeline.accel.batch_pool import BatchMemory, SegmentMemory, map_tensors
from pipeline.accel.pool_loader import PooledLoader, PoolKeeper, worker_loader
from pipeline.accel.shm import empty_for_handover
from pipeline.cache.heads import HeadChoice
from pipeline.cache.store import CacheMismatchError, CacheReader
from pipeline.config import Config
from pipeline.runtime.cpus import TRAIN_RESERVE, loader_workers
from pipeline.runtime.dist import DistEnv
from pipeline.shards.plan import read_index
from pipeline.ssv2.frames import channels_last_empty, decode, stack_channels_last
from pipeline.ssv2.multi_view import clip_frames as test_clips
from pipeline.ssv2.multi_view import three_crop_boxes
from pipeline.ssv2.records import select_frames
from pipeline.ssv2.sampling import segment_centres, segment_of, segment_random
from pipeline.ssv2.views import View, crop_box, replay_view, teacher_subset


@dataclass
class ClipBatch:
    """A batch of clips: uint8 frames [B, T, 3, S, S], labels, and the teacher's outputs if cached."""

    clips: torch.Tensor
    labels: torch.Tensor  # -1 for a clip of an unlabelled split
    teacher_feature: torch.Tensor | None
    teacher_logits: torch.Tensor | None
    ids: list[str]
    lower: tuple[torch.Tensor, ...] = ()  # FFN training: the same videos at the lower frame counts, ascending
    teacher_frames: torch.Tensor | None = None  # [B, T, D]: the cached teacher frame each student frame shows

    def pin_memory(self) -> "ClipBatch":
        """Pinned copies, for asynchronous host-to-device transfer."""
        return map_tensors(self, lambda t: t.pin_memory())


@dataclass(frozen=True)
class ClipSpec:
    """How one stream of clips is made."""

    num_frames: int
    image_size: int
    batch_size: int
    train: bool
    flip: bool = False
    lower_counts: tuple[int, ...] = ()  # FFN training: the lower frame counts, ascending (num_frames is the highest)
    test_clips: int = 1  # evaluation: clips per video (ssv2/multi_view.py); with test_crops > 1 or clips > 1,
    test_crops: int = 1  # each video's views are stacked clip by clip into one [views * T, 3, S, S] tensor
    test_size: int = 0  # the three crops' size (test_crops=3); one crop is the usual centre crop at image_size
    shuffle_buffer: int = 256
    seed: int = 0
    epoch: int = 0


@dataclass(frozen=True)
class UnlabelledSource:
    """The unlabelled splits' share of every training batch: their shards (split, path) and caches."""

    shards: list[tuple[str, str]]
    caches: dict[str, "CacheSource"]  # split -> its teacher rows (the teacher's terms are all these clips train on)
    per_batch: int  # unlabelled clips in each batch, beside the spec's batch_size labelled ones


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
    unlabelled: UnlabelledSource | None = None  # training: unlabelled clips in every batch


class ShardClips(IterableDataset):
    """The clip stream of one rank; its loader workers split the rank's shards between them and
    write each batch through `memory`."""

    def __init__(self, source: ClipSource, memory: BatchMemory | None = None):
        self.source, self.spec = source, source.spec
        self.memory = memory or SegmentMemory()

    def _my_shards(self, worker: int, workers: int, shards: Sequence | None = None, salt: str = "") -> list:
        order = list(self.source.shards if shards is None else shards)
        if self.spec.train:
            random.Random(f"{self.spec.seed}-{self.spec.epoch}{salt}").shuffle(order)  # shuffle (seed, epoch)
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
        extra = self.source.unlabelled
        if extra is None:
            yield from self._batches(sized, worker)
            return
        # the unlabelled stream is cut like the labelled one: `per_batch` of its clips per batch
        mine = self._my_shards(worker, workers, extra.shards, salt="-unlabelled")
        if not mine:
            raise ValueError(f"loader worker {worker} of rank {self.source.rank} has no unlabelled shard")
        split_of = {path: split for split, path in mine}
        others = self._samples([path for _, path in mine], worker, salt="-unlabelled")
        tagged = ((i, sample, split_of[sample["__url__"]]) for i, sample in enumerate(others))
        yield from self._mixed_batches(sized, islice(tagged, skip * extra.per_batch, share * extra.per_batch), worker)

    def _samples(self, shards: list[str], worker: int, salt: str = "") -> Iterator[dict]:
        spec = self.spec
        if not shards:
            return
        passes = 0
        while True:  # training cycles over the worker's shards until its share is produced
            pipeline = wds.DataPipeline(wds.SimpleShardList(shards), wds.tarfile_to_samples())
            stream = iter(pipeline)
            if spec.train:
                rng = random.Random(f"{spec.seed}-{spec.epoch}-{self.source.rank}-{worker}-{passes}{salt}")
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

    def _mixed_batches(self, labelled: Iterator[tuple[int, dict]], unlabelled: Iterator[tuple[int, dict, str]], worker: int):
        """Batches of `batch_size` labelled clips followed by `per_batch` unlabelled ones (label -1)."""
        size, extra = self.spec.batch_size, self.source.unlabelled.per_batch
        while True:
            items = [self._clip(sample, worker, index) for index, sample in islice(labelled, size)]
            if len(items) < size:
                return
            items += [self._clip(sample, worker, index, split=split) for index, sample, split in islice(unlabelled, extra)]
            yield self._collate(items)

    def _collate(self, items: list[tuple]):
        slot = self.memory.claim()
        return slot.seal(collate(items, slot.empty))

    def _clip(self, sample: dict, worker: int, index: int, split: str | None = None) -> tuple:
        """One clip and what goes with it; `split`: an unlabelled split's clip (label -1, its own cache and draws)."""
        spec = self.spec
        cache = self.source.cache if split is None else self.source.unlabelled.caches[split]
        record = json.loads(sample["json"])
        label, view = (record["label"] if split is None else -1), 0
        if not spec.train and spec.test_clips * spec.test_crops > 1:
            clips, flipped = [test_views(sample, record, spec)], False
        elif not spec.train:
            picks = segment_centres(record["num_frames"], spec.num_frames)
            frames = decode(select_frames(record, sample["jpgs"], picks))
            clips, flipped = [centre_crop(stack_channels_last(frames), spec.image_size)], False
        else:
            if cache is not None and cache.views > 1:
                # replay: exactly the frames, crop and flip the teacher saw for this epoch's view
                view = replay_view(spec.seed, record["row"], spec.epoch, cache.views)
                picks, box, flipped = self._replayed(record, view, cache)
            else:
                picks, box, flipped = self._drawn(record, worker, index, unlabelled=split is not None)
            size = [spec.image_size, spec.image_size]
            clips = [TF.resize(crop, size, antialias=True) for crop in cut_clips(sample, record, picks, box)]
        if flipped:
            clips, label = [c.flip(-1) for c in clips], self.source.flip_pairs.get(label, label)
        feature = logits = frames = None
        if cache is not None:
            feature, logits = cache.get(record["row"], record["id"], view)
            if cache.frames and spec.train:
                frames = self._teacher_frames(cache, record, view, picks[0])
        return clips[0], label, feature, logits, record["id"], tuple(clips[1:]), frames

    def _teacher_frames(self, cache: "CacheSource", record: dict, view: int, picks: list[int]) -> np.ndarray:
        """For each student frame, the cached teacher frame it shows (`teacher_frame_index`)."""
        stored = cache.frame_features(record["row"], record["id"], view)  # [F, D]
        return stored[teacher_frame_index(len(picks), len(stored))]

    def _drawn(self, record: dict, worker: int, index: int, unlabelled: bool = False) -> tuple[list[list[int]], tuple, bool]:
        """A fresh training clip: a random frame per segment at every trained count (drawn
        independently, as FFN does), one multi-scale crop box and one flip for all of them."""
        spec = self.spec
        key = [spec.seed, spec.epoch, self.source.rank, worker, index] + ([1] if unlabelled else [])
        rng = np.random.default_rng(key)
        n = record["num_frames"]
        picks = [segment_random(n, spec.num_frames, rng)]
        box = crop_box(record["height"], record["width"], rng)
        flipped = spec.flip and rng.random() < 0.5
        picks += [segment_random(n, count, rng) for count in spec.lower_counts]
        return picks, box, bool(flipped)

    def _replayed(self, record: dict, view: int, cache: "CacheSource | None" = None) -> tuple[list[list[int]], tuple, bool]:
        """A stored view's frames (lower counts: evenly spaced subsets of them), box and flip."""
        v = (cache or self.source.cache).view(record["row"], record["id"], view)
        if len(v.frames) != self.spec.num_frames:
            raise CacheMismatchError(
                f"the teacher cache's views have {len(v.frames)} frames, the student trains on {self.spec.num_frames}: "
                "rebuild the cache (make teacher-cache) with this student.num_frames"
            )
        picks = [list(v.frames)] + [list(teacher_subset(v.frames, count)) for count in self.spec.lower_counts]
        return picks, v.box, v.flip

    def replayed_crop(self, sample: dict, record: dict, view: int) -> tuple[torch.Tensor, bool]:
        """View `view` of a training video as stored with the teacher's outputs: its frames cut to
        the view's box, before any resize ([T, 3, h, w], channels last), and whether it is flipped."""
        picks, box, flipped = self._replayed(record, view)
        return cut_clips(sample, record, picks[:1], box)[0], flipped


def teacher_frame_index(count: int, teacher_frames: int) -> list[int]:
    """Which of the teacher's frames each of a clip's `count` frames maps to. Student frame k was drawn
    in segment k of `count` equal segments (of the video, or of a replayed view's frames), and teacher
    frame j is the centre of segment j of `teacher_frames` (of the same video or view): frame k maps
    to the teacher segment its own segment falls in, by position (a frame's index would cross
    segment edges, since the samplers round them down)."""
    return [segment_of(k, count, teacher_frames) for k in range(count)]


def cut_clips(sample: dict, record: dict, picks: list[list[int]], box: tuple[int, int, int, int]) -> list[torch.Tensor]:
    """Per frame list in `picks`, its frames cut to `box` ([T, 3, h, w], channels last); every
    frame is decoded once however many lists hold it."""
    union = sorted(set().union(*picks))
    decoded = dict(zip(union, decode(select_frames(record, sample["jpgs"], union))))
    top, left, h, w = box
    return [stack_channels_last([decoded[i][..., top : top + h, left : left + w] for i in p]) for p in picks]


def test_views(sample: dict, record: dict, spec: ClipSpec) -> torch.Tensor:
    """The test protocol's views of a video, clip by clip and crop by crop: [views * T, 3, S, S]."""
    picks = test_clips(record["num_frames"], spec.num_frames, spec.test_clips)
    union = sorted(set().union(*picks))
    decoded = dict(zip(union, decode(select_frames(record, sample["jpgs"], union))))
    views = []
    for clip in picks:
        frames = stack_channels_last([decoded[i] for i in clip])
        if spec.test_crops == 1:
            views.append(centre_crop(frames, spec.image_size))
            continue
        for top, left, h, w in three_crop_boxes(record["height"], record["width"]):
            crop = stack_channels_last([f[..., top : top + h, left : left + w] for f in frames])
            views.append(TF.resize(crop, [spec.test_size, spec.test_size], antialias=True))
    return stack_channels_last([f for view in views for f in view])


def view_size(spec: ClipSpec) -> int:
    """The side of the frames a batch of `spec` holds."""
    return spec.test_size if not spec.train and spec.test_crops > 1 else spec.image_size


def collate(items: list[tuple], make=empty_for_handover) -> ClipBatch:
    """Stack clips (channels last in memory, like the clips; lower frame counts each on their own),
    labels and (when present) teacher outputs, each into a tensor from `make(shape, dtype)`.

    An item is (clip, label, teacher feature, teacher logits, id[, lower-count clips[, teacher frames]])."""
    frames, labels, features, logits, ids, *rest = zip(*items)  # then, when there: lower counts, teacher frames
    lower, teacher_frames = (rest + [None, None])[:2]

    def stack(clips):
        return stack_channels_last(clips, out=channels_last_empty((len(clips), *clips[0].shape), make))

    per_count = tuple(stack(clips) for clips in zip(*lower)) if lower else ()
    return ClipBatch(
        stack(frames),
        _stacked(labels, make),
        _stacked(features, make),
        _stacked(logits, make),
        list(ids),
        per_count,
        _stacked(teacher_frames, make) if teacher_frames else None,
    )


def _stacked(values: Sequence, make) -> torch.Tensor | None:
    if values[0] is None:
        return None
    array = np.stack(values)
    out = make(array.shape, torch.from_numpy(array[:0]).dtype)
    return out.copy_(torch.from_numpy(array))


def multiscale_crop(frames: Sequence[torch.Tensor], size: int, rng: np.random.Generator) -> torch.Tensor:
    """TSN multi-scale crop of [3, H, W] frames, resized; [T, 3, size, size] out, channels last in memory
    (the loader's crop, `cut_clips` then resize, for a list of decoded frames)."""
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
    are those of the teacher head in array `logits` (see cache.store.head_array), divided by the
    head's calibration `temperature`; with `frames`, the per-frame features too."""

    def __init__(self, store: Path, split: str, *, logits: str = "logits", temperature: float = 1.0, frames: bool = False):
        self.store, self.split, self.logits, self.temperature = str(store), split, logits, temperature
        self.frames = frames
        self._reader: CacheReader | None = None
        self._views: int | None = None

    @property
    def reader(self) -> CacheReader:
        """This process's reader of the store."""
        if self._reader is None:
            root = zarr.open_group(self.store, mode="r")
            self._reader = CacheReader(root, self.split, logits=self.logits, temperature=self.temperature, frames=self.frames)
        return self._reader

    def frame_features(self, row: int, video_id: str, view: int = 0) -> np.ndarray:
        """The cached per-frame features [F, D] of a video's view."""
        return self.reader.frames(row, video_id, view)

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


def teacher_source(cfg: Config, split: str, teacher: HeadChoice | None, *, frames: bool | None = None) -> CacheSource | None:
    """The cache rows a split's clips carry when distilling (None for vanilla training): the chosen
    head's logits (zero_shot when none is given)."""
    if cfg.loss.mode != "distill":
        return None
    check_feature_width(cfg, split)
    frames = cfg.loss.frame_alpha > 0 if frames is None else frames
    if teacher is None:
        return CacheSource(cfg.paths.teacher_cache, split, frames=frames)
    return CacheSource(cfg.paths.teacher_cache, split, logits=teacher.array, temperature=teacher.temperature, frames=frames)


def unlabelled_source(cfg: Config, teacher: HeadChoice | None) -> UnlabelledSource | None:
    """The unlabelled splits' shards and teacher rows that join every training batch (None without `train.unlabelled_splits`)."""
    splits = list(cfg.train.unlabelled_splits)
    if not splits:
        return None
    shards = [(split, path) for split in splits for path in split_shards(cfg, split)[0]]
    caches = {split: teacher_source(cfg, split, teacher) for split in splits}
    return UnlabelledSource(shards, caches, unlabelled_per_batch(cfg))


# `train.unlabelled_ratio: auto` stops here: a step's batch grows with the ratio, and 1 and 3 are
# the ratios measured (docs/proxy_benchmark.md)
AUTO_RATIO_MAX = 3.0


def unlabelled_ratio(setting: float | str, *, labelled: int, unlabelled: int) -> float:
    """Unlabelled clips per labelled clip in a batch: the setting, or for `auto` the unlabelled videos
    per labelled one (each unlabelled clip seen about once an epoch), at most AUTO_RATIO_MAX."""
    if setting != "auto":
        return float(setting)
    return min(AUTO_RATIO_MAX, unlabelled / max(1, labelled))


def unlabelled_per_batch(cfg: Config) -> int:
    """Unlabelled clips in each training batch: batch_size x the unlabelled ratio (`auto` from the
    shards' video counts), at least 1; 0 without unlabelled splits."""
    if not cfg.train.unlabelled_splits:
        return 0
    ratio = cfg.train.unlabelled_ratio
    if ratio == "auto":
        labelled = split_shards(cfg, "train")[1]
        unlabelled = sum(split_shards(cfg, split)[1] for split in cfg.train.unlabelled_splits)
        ratio = unlabelled_ratio(ratio, labelled=labelled, unlabelled=unlabelled)
    return max(1, round(ratio * cfg.train.batch_size))


def check_feature_width(cfg: Config, split: str) -> None:
    """The cached teacher feature and the student's distilled feature have one width (a student as
    the teacher, `teacher.model=student:`, caches its backbone's: 2048 for TSM-R50)."""
    path = Path(cfg.paths.teacher_cache)
    if not (path / split / "features").exists():
        return  # no cache yet: the cache's own checks say what to run
    width = int(zarr.open_group(path, mode="r")[split]["features"].shape[-1])
    if width != cfg.student.feature_dim:
        raise ValueError(
            f"the teacher cache {path} holds {width}-d features, the student distils a {cfg.student.feature_dim}-d "
            f"one: set student.feature_dim={width}"
        )


# Batches each worker may have ready. With the batch pool every one of them is a page-locked slot
# held for the whole run (sizes in docs/benchmarks.md, "batch pool"): the same memory that the
# per-batch segments and their pinned copies take while the loader runs.
_PREFETCH = 4


def make_loader(source: ClipSource, *, workers: int, device: torch.device, keeper: PoolKeeper | None = None):
    """The workers' batches of `source` in round-robin order. With a pool `keeper` (and workers),
    they are written into a page-locked pool and come out on `device`; otherwise they come in
    shared-memory segments (pinned by the pin-memory thread on CUDA) and the caller moves them."""
    pooled = keeper is not None and workers > 0
    extra = source.unlabelled.per_batch if source.unlabelled else 0
    memory = keeper.memory(workers * _PREFETCH + 4, batch_bytes(source.spec, extra)) if pooled else None
    loader = worker_loader(
        ShardClips(source, memory),
        workers=workers,
        prefetch=_PREFETCH,
        pin_memory=device.type == "cuda" and not pooled,
        fork=pooled,
    )
    # every ready batch, plus a few being copied to the GPU or being written
    return PooledLoader(loader, memory, device, keeper=keeper) if pooled else loader


def batch_bytes(spec: ClipSpec, unlabelled: int = 0) -> int:
    """Room for one batch of `spec.batch_size` clips and `unlabelled` more: their uint8 clips at every
    count, plus labels and teacher outputs (a generous 16 KiB a clip, and 4 KiB a frame for the
    teacher's frame features, up to 2048 float16 each)."""
    frames = (spec.num_frames + sum(spec.lower_counts)) * (1 if spec.train else spec.test_clips * spec.test_crops)
    return (spec.batch_size + unlabelled) * (frames * 3 * view_size(spec) ** 2 + 16 * 1024 + spec.num_frames * 4096)


def split_shards(cfg: Config, split: str) -> tuple[list[str], int]:
    """The split's shard paths and its number of videos, from the shards index."""
    index = read_index(cfg.paths.shards_dir, split)
    return [str(cfg.paths.shards_dir / s["name"]) for s in index["shards"]], index["num_videos"]


def to_device(batch: ClipBatch, device: torch.device) -> ClipBatch:
    """The batch on `device` (asynchronously where the host memory is pinned; a no-op for a batch
    the pooled loader already put there)."""
    return map_tensors(batch, lambda t: t.to(device, non_blocking=True))


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
