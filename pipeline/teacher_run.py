"""Stage 2 work: run the frozen teacher once over the shards and fill the Zarr cache.

The loop keeps the GPU busy: loader workers decode, a prep thread copies the next shard to the GPU
and resizes it on a side stream while this one is encoded (one CUDA graph replay), and a hand-over
thread waits for each shard's results and passes them to writer processes, which write Zarr
without taking this process's GIL. The launching thread itself never waits on the GPU.
"""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import zarr

from . import atomic
from .clip_teacher import Teacher, load_teacher
from .config import Config, TeacherConfig, dump
from .cuda_graph import GraphedForward
from .device import autocast_dtype, pick_device
from .frames import normalizer
from .overlap import Behind, HostSlots, ProcessWriter, map_ahead
from .progress import Progress, format_duration
from .shard_plan import manifest_path, read_index, read_manifest
from .ssv2 import class_names, load_labels
from .teacher_cache import CacheMismatchError, create_store, expected_attrs, open_checked
from .teacher_data import ShardItem, make_loader, prepare, wait_ready

log = logging.getLogger(__name__)


@dataclass
class TeacherSummary:
    """What one task did."""

    shards_computed: list[tuple[str, int]] = field(default_factory=list)
    shards_skipped: int = 0
    videos: int = 0
    frames: int = 0
    seconds: float = 0.0  # the whole task, teacher loading included
    compute_seconds: float = 0.0  # the loop over shards: read, decode, forward, write
    first_shard_s: float = 0.0  # until the first shard was through: worker start-up and pipeline fill
    wait_input_s: float = 0.0  # the loop waiting for decoded frames (loader-bound when large)
    wait_output_s: float = 0.0  # the loop waiting for the hand-over thread (GPU- or storage-bound)
    wait_gpu_s: float = 0.0  # the hand-over thread waiting for the GPU's results
    wait_write_s: float = 0.0  # the hand-over thread waiting for the writers' queue (storage-bound when large)
    write_busy_s: float = 0.0  # the writer processes' time inside Zarr writes, summed

    @property
    def steady_frames_per_s(self) -> float:
        """Frames/s once the pipeline is full (what a task with thousands of shards sees)."""
        first = self.frames / max(1, len(self.shards_computed))
        span = self.compute_seconds - self.first_shard_s
        return (self.frames - first) / span if span > 0 else 0.0


def run(cfg: Config, task_id: int = 0, num_tasks: int = 1, stop_after_shards: int | None = None,
        only: list[int] | None = None) -> TeacherSummary:
    """Compute the teacher outputs of shards task_id, task_id + num_tasks, ... (or the positions in
    `only` of `all_shards`) not yet done."""
    start = time.monotonic()
    device = pick_device(cfg.teacher.device)
    summary = TeacherSummary()
    # Forked, like the loader's workers: they never touch CUDA. Spawned writers re-import torch,
    # open_clip and zarr first, and the loop was measured waiting ~10 s for them at every start.
    writer = ProcessWriter(write_shard, cfg.teacher.writers, start_method="fork")
    try:
        names = class_names(load_labels(Path(cfg.paths.ssv2_root) / cfg.data.labels_subdir / "labels.json"))
        teacher = load_teacher(cfg.teacher, names, device)
        root = _open_store(cfg, teacher, names)
        atomic.write_text(cfg.paths.teacher_cache.with_suffix(".config.yaml"), dump(cfg))
        jobs, summary.shards_skipped = _todo(cfg, root, task_id, num_tasks, only)
        jobs = jobs[:stop_after_shards] if stop_after_shards is not None else jobs
        log.info("task %d/%d: %d shards to compute, %d already done (teacher %s on %s)",
                 task_id, num_tasks, len(jobs), summary.shards_skipped, cfg.teacher.model, device)
        _loop(cfg, teacher, device, jobs, writer, summary)
    finally:
        summary.write_busy_s = writer.close()
    summary.seconds = time.monotonic() - start
    log.info(_summary_paragraph(summary, task_id, num_tasks, cfg))
    return summary


_LAG = 2  # shards queued for the hand-over thread; with the GPU's own queue this keeps it fed


def _loop(cfg: Config, teacher: Teacher, device: torch.device, jobs: list, writer: ProcessWriter, summary: TeacherSummary) -> None:
    loader = make_loader(jobs, cfg.teacher.num_frames, gpu_share(cfg.teacher, device), cfg.teacher.num_workers,
                         cfg.teacher.pin_memory, device, shard_bytes(cfg) if cfg.teacher.batch_pool else 0)
    encode = make_encoder(teacher, cfg.teacher, device)
    progress = Progress("teacher shards", len(jobs), cfg.teacher.progress_every_s, log)
    store = str(cfg.paths.teacher_cache)
    slots = HostSlots(_LAG + 2, pinned=device.type == "cuda")  # queued, being handed over, being filled
    handed = Behind(lambda job: _hand_over(writer, store, *job, summary), depth=_LAG)
    loop_start = time.monotonic()
    try:
        prepared = map_ahead(lambda it: prepare(it, teacher.image_size, device), loader)
        for n in itertools.count():
            t0 = time.monotonic()
            got = next(prepared, None)
            summary.wait_input_s += time.monotonic() - t0
            if got is None:
                break
            item, frames, ready = got
            wait_ready(ready, frames, device)
            frame_features = encode(frames)
            features = frame_features.mean(1)
            outputs = slots.copy(n, [features, teacher.logits(features), frame_features.half()])
            t0 = time.monotonic()
            handed.put((item, _event(device), outputs))
            summary.wait_output_s += time.monotonic() - t0
            summary.shards_computed.append((item.split, item.shard))
            summary.videos += len(item.rows)
            summary.frames += len(item.rows) * cfg.teacher.num_frames
            summary.first_shard_s = summary.first_shard_s or time.monotonic() - loop_start
            progress.update()
    finally:
        handed.close()
    summary.compute_seconds = time.monotonic() - loop_start


def shard_bytes(cfg: Config) -> int:
    """Room for one shard's square crops as the shards stage makes them (a larger shard is sent the old way)."""
    return cfg.shards.videos_per_shard * cfg.teacher.num_frames * 3 * cfg.shards.short_side**2


def gpu_share(cfg: TeacherConfig, device: torch.device) -> float:
    """The share of shards whose JPEGs are decoded on the GPU (the rest by the loader workers)."""
    if not 0.0 <= cfg.gpu_decode_share <= 1.0:
        raise ValueError(f"teacher.gpu_decode_share={cfg.gpu_decode_share} is not between 0 and 1")
    if device.type != "cuda" or cfg.decode == "cpu":
        return 0.0
    return 1.0 if cfg.decode == "gpu" else cfg.gpu_decode_share


def _event(device: torch.device):
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record()
    return event


def _hand_over(writer: ProcessWriter, store: str, item: ShardItem, copied, outputs: list[torch.Tensor],
               summary: TeacherSummary) -> None:
    t0 = time.monotonic()
    if copied is not None:
        copied.synchronize()  # later shards are queued behind it, so the GPU keeps working
    t1 = time.monotonic()
    arrays = [t.numpy().copy() for t in outputs]  # the host slot is reused _LAG + 1 shards later
    writer.submit(store, item.split, item.shard, item.rows, str(item.tar), *arrays)
    summary.wait_gpu_s += t1 - t0
    summary.wait_write_s += time.monotonic() - t1


def make_encoder(teacher: Teacher, cfg: TeacherConfig, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 frames [V, F, 3, S, S] -> per-frame embeddings [V, F, D] float32, `batch_videos` at a time."""
    dtype = autocast_dtype(device, cfg.precision)
    norm = normalizer(teacher.mean, teacher.std, device)

    def forward(flat: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=False):
            return teacher.encode_frames(norm(flat))

    batch = cfg.batch_videos * cfg.num_frames
    step = forward
    if device.type == "cuda" and cfg.cuda_graphs:
        size = teacher.image_size
        step = GraphedForward(forward, torch.zeros(batch, 3, size, size, dtype=torch.uint8, device=device))

    def encode(frames: torch.Tensor) -> torch.Tensor:
        v, f = frames.shape[:2]
        if v == 0:
            return torch.zeros(0, cfg.num_frames, teacher.classifier.shape[1], device=device)
        flat = frames.flatten(0, 1)
        out = torch.cat([step(flat[i : i + batch]) for i in range(0, flat.shape[0], batch)])
        return out.view(v, f, -1)

    return encode


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


def _todo(cfg: Config, root: zarr.Group, task_id: int, num_tasks: int, only) -> tuple[list[tuple[str, int, Path]], int]:
    shards = all_shards(cfg)
    mine = [shards[i] for i in only] if only is not None else shards[task_id::num_tasks]
    done = {split: root[split]["done"][:] for split in cfg.data.splits}
    jobs = [job for job in mine if not done[job[0]][job[1]]]
    return jobs, len(mine) - len(jobs)


def missing(cfg: Config) -> list[int]:
    """Positions in `all_shards` whose rows are not done (all of them when there is no cache yet)."""
    shards = all_shards(cfg)
    if not cfg.paths.teacher_cache.exists():
        return list(range(len(shards)))
    root = zarr.open_group(cfg.paths.teacher_cache, mode="r")
    done = {split: root[split]["done"][:] for split in cfg.data.splits if split in root}
    return [i for i, (split, shard, _) in enumerate(shards) if split not in done or not done[split][shard]]


_arrays: dict = {}  # a writer process's open Zarr arrays: opening one reads its metadata from disk


def _open_arrays(store: str, split: str) -> dict[str, zarr.Array]:
    if (store, split) not in _arrays:
        group = zarr.open_group(store, mode="r+")[split]
        _arrays[(store, split)] = {name: group[name] for name in group.array_keys()}
    return _arrays[(store, split)]


def write_shard(store: str, split: str, shard: int, rows: list[int], tar: str, features, logits, frame_features) -> None:
    """Write one shard's rows (one chunk per array), then its done flag; runs in a writer process."""
    group = _open_arrays(store, split)
    per = group["features"].chunks[0]
    first = shard * per
    pos = np.asarray(rows, dtype=np.int64) - first
    planned = read_manifest(manifest_path(Path(tar).parent, Path(tar).name))["planned_ids"]
    ids = np.full(per, "", dtype=object)
    ids[: len(planned)] = planned
    sl = slice(first, first + per)
    for name, values in (("features", features), ("logits", logits), ("frame_features", frame_features)):
        array = group[name]
        block = np.zeros((per, *array.shape[1:]), dtype=array.dtype)
        if len(pos):
            block[pos] = values
        array[sl] = block
    valid = np.zeros(per, dtype=bool)
    valid[pos] = True
    group["ids"][sl] = ids.astype(str)
    group["valid"][sl] = valid
    group["done"][shard] = True  # last: the shard counts only once all its rows are in


def _summary_paragraph(s: TeacherSummary, task_id: int, num_tasks: int, cfg: Config) -> str:
    rate = s.frames / s.compute_seconds if s.compute_seconds else 0.0
    steady = f", {s.steady_frames_per_s:.0f} once the pipeline is full" if len(s.shards_computed) > 1 else ""
    waits = (f"; the loop waited {s.wait_input_s:.1f} s for input and {s.wait_output_s:.1f} s for output, which waited "
             f"{s.wait_gpu_s:.1f} s for the GPU and {s.wait_write_s:.1f} s for the writers (busy {s.write_busy_s:.1f} s)")
    return (
        f"Teacher cache task {task_id}/{num_tasks} finished in {format_duration(s.seconds)}: computed "
        f"{len(s.shards_computed)} shards and skipped {s.shards_skipped} already done; {s.videos} videos, "
        f"{s.frames} frames ({rate:.0f} frames/s over the shards{steady}{waits}) with {cfg.teacher.model} "
        f"({cfg.teacher.pretrained}) into {cfg.paths.teacher_cache}."
    )
