"""Stage 2 work: run the frozen teacher once over the shards and fill the Zarr cache."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import atomic
from .clip_teacher import Teacher, load_teacher
from .config import Config, dump
from .device import autocast_dtype, pick_device
from .frames import decode, normalize, resize_crop
from .progress import Progress, format_duration
from .sampling import segment_centres
from .shard_format import read_shard, select_frames
from .shard_plan import manifest_path, read_index, read_manifest
from .ssv2 import class_names, load_labels
from .teacher_cache import CacheMismatchError, create_store, expected_attrs, open_checked

log = logging.getLogger(__name__)


@dataclass
class ShardItem:
    """One shard's sampled frames, as a loader worker hands them over."""

    split: str
    shard: int
    rows: list[int]
    tar: Path
    frames: torch.Tensor | list[list[bytes]]  # uint8 [V, F, 3, S, S] when decoded on the CPU, else JPEGs


class ShardFrames(IterableDataset):
    """Reads whole shards and samples `num_frames` centre frames per video; workers split the shards."""

    def __init__(self, jobs: list[tuple[str, int, Path]], num_frames: int, image_size: int | None):
        self.jobs, self.num_frames, self.image_size = jobs, num_frames, image_size

    def __iter__(self):
        info = get_worker_info()
        jobs = self.jobs if info is None else self.jobs[info.id :: info.num_workers]
        for split, shard, path in jobs:
            yield self._load(split, shard, path)

    def _load(self, split: str, shard: int, path: Path) -> ShardItem:
        rows, frames = [], []
        for record, blob in read_shard(str(path)):
            jpegs = select_frames(record, blob, segment_centres(record["num_frames"], self.num_frames))
            rows.append(record["row"])
            frames.append(jpegs if self.image_size is None else resize_crop(torch.stack(decode(jpegs)), self.image_size))
        if self.image_size is not None:
            frames = torch.stack(frames) if frames else torch.empty(0, self.num_frames, 3, self.image_size, self.image_size, dtype=torch.uint8)
        return ShardItem(split, shard, rows, path, frames)


def _identity(x):
    return x


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # each worker decodes one shard; threads would only fight each other


@dataclass
class TeacherSummary:
    """What one task did."""

    shards_computed: list[tuple[str, int]] = field(default_factory=list)
    shards_skipped: int = 0
    videos: int = 0
    frames: int = 0
    seconds: float = 0.0  # the whole task, teacher loading included
    compute_seconds: float = 0.0  # the loop over shards: read, decode, forward, write


def run(cfg: Config, task_id: int = 0, num_tasks: int = 1, stop_after_shards: int | None = None) -> TeacherSummary:
    """Compute the teacher outputs of shards task_id, task_id + num_tasks, ... not yet done."""
    start = time.monotonic()
    device = pick_device(cfg.teacher.device)
    names = class_names(load_labels(Path(cfg.paths.ssv2_root) / cfg.data.labels_subdir / "labels.json"))
    teacher = load_teacher(cfg.teacher, names, device)
    root = _open_store(cfg, teacher, names)
    atomic.write_text(cfg.paths.teacher_cache.with_suffix(".config.yaml"), dump(cfg))
    jobs, skipped = _todo(cfg, root, task_id, num_tasks)
    if stop_after_shards is not None:
        jobs = jobs[:stop_after_shards]
    summary = TeacherSummary(shards_skipped=skipped)
    log.info("task %d/%d: %d shards to compute, %d already done (teacher %s on %s)", task_id, num_tasks, len(jobs), skipped, cfg.teacher.model, device)
    gpu_decode = device.type == "cuda" and cfg.teacher.decode in ("auto", "gpu")
    loader = _loader(cfg, jobs, None if gpu_decode else teacher.image_size)
    progress = Progress("teacher shards", len(jobs), cfg.teacher.progress_every_s, log)
    loop_start = time.monotonic()
    for item in loader:
        frames = _to_device(item, teacher.image_size, device)
        features, frame_features = _encode(teacher, frames, cfg.teacher.batch_videos, device, cfg.teacher.precision)
        _write_shard(root[item.split], item, features, teacher.logits(features), frame_features)
        summary.shards_computed.append((item.split, item.shard))
        summary.videos += len(item.rows)
        summary.frames += len(item.rows) * cfg.teacher.num_frames
        progress.update()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    summary.compute_seconds = time.monotonic() - loop_start
    summary.seconds = time.monotonic() - start
    log.info(_summary_paragraph(summary, task_id, num_tasks, cfg))
    return summary


def _open_store(cfg: Config, teacher: Teacher, names: list[str]) -> zarr.Group:
    path = cfg.paths.teacher_cache
    if not path.exists():
        attrs = expected_attrs(cfg)
        extra = {"weights_sha256": teacher.weights_sha256, "prompt_texts": teacher.prompt_texts,
                 "class_names": names,
                 "logit_scale": teacher.logit_scale, "image_size": teacher.image_size,
                 "mean": list(teacher.mean), "std": list(teacher.std)}
        dim = int(teacher.classifier.shape[1])
        create_store(path, {**attrs, **extra}, dim, len(names), cfg.teacher.num_frames)
    root = open_checked(cfg, mode="r+")
    if root.attrs.get("weights_sha256") != teacher.weights_sha256:
        raise CacheMismatchError(
            f"teacher cache {path} was built with other teacher weights (sha256 {root.attrs.get('weights_sha256', '?')[:12]}, "
            f"now {teacher.weights_sha256[:12]}); delete it to rebuild"
        )
    return root


def all_shards(cfg: Config) -> list[tuple[str, int, Path]]:
    """(split, shard number, tar path) of every shard in the split indexes, the order tasks stride over."""
    out = []
    for split in cfg.data.splits:
        for i, shard in enumerate(read_index(cfg.paths.shards_dir, split)["shards"]):
            out.append((split, i, cfg.paths.shards_dir / shard["name"]))
    return out


def _todo(cfg: Config, root: zarr.Group, task_id: int, num_tasks: int) -> tuple[list[tuple[str, int, Path]], int]:
    mine = all_shards(cfg)[task_id::num_tasks]
    done = {split: root[split]["done"][:] for split in cfg.data.splits}
    jobs = [job for job in mine if not done[job[0]][job[1]]]
    return jobs, len(mine) - len(jobs)


def _loader(cfg: Config, jobs: list, image_size: int | None) -> DataLoader:
    workers = min(cfg.teacher.num_workers, len(jobs))
    dataset = ShardFrames(jobs, cfg.teacher.num_frames, image_size)
    return DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_identity,
                      worker_init_fn=_worker_init, pin_memory=torch.cuda.is_available(),
                      prefetch_factor=4 if workers else None, persistent_workers=False)


def _to_device(item: ShardItem, size: int, device: torch.device) -> torch.Tensor:
    """uint8 [V, F, 3, S, S] on `device`; JPEGs are decoded there when the worker left them raw."""
    if isinstance(item.frames, torch.Tensor):
        return item.frames.to(device, non_blocking=True)
    flat = [j for video in item.frames for j in video]
    if not flat:
        return torch.empty(0, 0, 3, size, size, dtype=torch.uint8, device=device)
    images = decode(flat, device)
    per = len(item.frames[0])
    videos = [resize_crop(torch.stack(images[i : i + per]), size) for i in range(0, len(images), per)]
    return torch.stack(videos)


@torch.no_grad()
def _encode(teacher: Teacher, frames: torch.Tensor, batch_videos: int, device: torch.device, precision: str):
    """(video features [V, D], frame features [V, F, D]) in float32."""
    v = frames.shape[0]
    if v == 0:
        dim = teacher.classifier.shape[1]
        return torch.empty(0, dim, device=device), torch.empty(0, 0, dim, device=device)
    outs = []
    dtype = autocast_dtype(device, precision)
    for i in range(0, v, batch_videos):
        chunk = frames[i : i + batch_videos]
        x = normalize(chunk.flatten(0, 1), teacher.mean, teacher.std)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            outs.append(teacher.encode_frames(x).view(chunk.shape[0], chunk.shape[1], -1))
    frame_features = torch.cat(outs)
    return frame_features.mean(1), frame_features


def _write_shard(group: zarr.Group, item: ShardItem, features, logits, frame_features) -> None:
    """Write one shard's rows (one chunk per array), then its done flag."""
    per = group["features"].chunks[0]
    first = item.shard * per
    pos = np.asarray(item.rows, dtype=np.int64) - first
    planned = read_manifest(manifest_path(item.tar.parent, item.tar.name))["planned_ids"]
    ids = np.full(per, "", dtype=object)
    ids[: len(planned)] = planned
    chunk = {
        "features": np.zeros(group["features"].shape[1:], np.float32),
        "logits": np.zeros(group["logits"].shape[1:], np.float32),
        "frame_features": np.zeros(group["frame_features"].shape[1:], np.float16),
    }
    values = {"features": features, "logits": logits, "frame_features": frame_features}
    rows = slice(first, first + per)
    for name, empty in chunk.items():
        block = np.broadcast_to(empty, (per, *empty.shape)).copy()
        block[pos] = values[name].float().cpu().numpy().astype(empty.dtype)
        group[name][rows] = block
    valid = np.zeros(per, dtype=bool)
    valid[pos] = True
    group["ids"][rows] = ids.astype(str)
    group["valid"][rows] = valid
    group["done"][item.shard] = True  # last: the shard counts only once all its rows are in


def _summary_paragraph(s: TeacherSummary, task_id: int, num_tasks: int, cfg: Config) -> str:
    rate = s.frames / s.compute_seconds if s.compute_seconds else 0.0
    return (
        f"Teacher cache task {task_id}/{num_tasks} finished in {format_duration(s.seconds)}: computed "
        f"{len(s.shards_computed)} shards and skipped {s.shards_skipped} already done; {s.videos} videos, "
        f"{s.frames} frames ({rate:.0f} frames/s over the shards) with {cfg.teacher.model} "
        f"({cfg.teacher.pretrained}) into {cfg.paths.teacher_cache}."
    )
