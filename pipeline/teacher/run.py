"""Stage 2 work: run the frozen teacher once over the shards and fill the Zarr cache.

Per shard: load its frames (decoded, cropped, on the device at the model's size) -> encode every
frame with the image tower -> pool the frames into the video feature -> zero-shot logits -> write
one chunk per array. How these steps overlap on the GPU is `flow.ShardFlow`'s business.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import zarr

from pipeline.accel.cuda_graph import GraphedForward
from pipeline.accel.overlap import ProcessWriter
from pipeline.accel.pool_loader import PoolKeeper
from pipeline.cache.store import (
    CacheMismatchError,
    ShardRowsWriter,
    check_views,
    create_store,
    expected_attrs,
    open_checked,
    training_splits,
)
from pipeline.config import Config, TeacherConfig, dump
from pipeline.runtime import atomic
from pipeline.runtime.device import autocast_dtype, pick_device
from pipeline.runtime.progress import Progress, format_duration
from pipeline.shards.plan import read_index
from pipeline.ssv2.annotations import class_names, labels_path, load_labels
from pipeline.ssv2.frames import normalizer
from pipeline.teacher.clip import Teacher, load_teacher
from pipeline.teacher.data import FramePrep, ShardJob, ViewPlan, make_loader
from pipeline.teacher.flow import ShardFlow

log = logging.getLogger(__name__)


@dataclass
class TeacherSummary:
    """What one task did."""

    shards_computed: list[tuple[str, int]] = field(default_factory=list)
    shards_skipped: int = 0
    videos: int = 0
    views: int = 0  # clips encoded: videos x their views
    frames: int = 0
    seconds: float = 0.0  # the whole task, teacher loading included
    compute_seconds: float = 0.0  # the loop over shards: read, decode, forward, write
    first_shard_s: float = 0.0  # until the first item (a shard or part of one) was through: start-up and pipeline fill
    first_frames: int = 0  # that first item's frames
    wait_input_s: float = 0.0  # the loop waiting for decoded frames (loader-bound when large)
    wait_output_s: float = 0.0  # the loop waiting for the hand-over thread (GPU- or storage-bound)
    wait_gpu_s: float = 0.0  # the hand-over thread waiting for the GPU's results
    wait_write_s: float = 0.0  # the hand-over thread waiting for the writers' queue (storage-bound when large)
    write_busy_s: float = 0.0  # the writer processes' time inside Zarr writes, summed

    @property
    def steady_frames_per_s(self) -> float:
        """Frames/s once the pipeline is full (what a task with thousands of shards sees)."""
        span = self.compute_seconds - self.first_shard_s
        return (self.frames - self.first_frames) / span if span > 0 else 0.0


def run(
    cfg: Config, task_id: int = 0, num_tasks: int = 1, stop_after_shards: int | None = None, only: list[int] | None = None
) -> TeacherSummary:
    """Compute the teacher outputs of shards task_id, task_id + num_tasks, ... (or the positions in
    `only` of `all_shards`) not yet done."""
    start = time.monotonic()
    device = pick_device(cfg.teacher.device)
    summary = TeacherSummary()
    # Forked, like the loader's workers: they never touch CUDA. Spawned writers re-import torch,
    # open_clip and zarr first, which kept the loop waiting at every start (docs/benchmarks.md).
    writer = ProcessWriter(ShardRowsWriter().write, cfg.teacher.writers, start_method="fork")
    try:
        names = class_names(load_labels(labels_path(cfg)))
        teacher = load_teacher(cfg.teacher, names, device)
        root = _open_store(cfg, teacher, names)
        atomic.write_text(cfg.paths.teacher_cache.with_suffix(".config.yaml"), dump(cfg))
        jobs, summary.shards_skipped = _todo(cfg, root, task_id, num_tasks, only)
        jobs = jobs[:stop_after_shards] if stop_after_shards is not None else jobs
        log.info(
            "task %d/%d: %d shards to compute, %d already done (teacher %s on %s)",
            task_id,
            num_tasks,
            len(jobs),
            summary.shards_skipped,
            cfg.teacher.model,
            device,
        )
        _compute(cfg, teacher, device=device, jobs=jobs, writer=writer, summary=summary)
    finally:
        summary.write_busy_s = writer.close()
    summary.seconds = time.monotonic() - start
    log.info(_summary_paragraph(summary, task_id, num_tasks, cfg))
    return summary


def _compute(
    cfg: Config, teacher: Teacher, *, device: torch.device, jobs: list[ShardJob], writer: ProcessWriter, summary: TeacherSummary
) -> None:
    prep = FramePrep(teacher.image_size, device)
    pools = PoolKeeper() if cfg.experimental.batch_pool else None
    loader = make_loader(
        jobs,
        view_plan(cfg),
        num_workers=cfg.teacher.num_workers,
        gpu_share=gpu_share(cfg.teacher, device),
        prep=prep,
        keeper=pools,
        shard_bytes=item_bytes(cfg),
        pin_memory=cfg.experimental.pin_memory,
        batch_views=cfg.teacher.batch_videos,
    )
    encode = make_encoder(teacher, cfg.teacher, device)
    progress = Progress("teacher shards", len(jobs), cfg.teacher.progress_every_s, log)
    try:
        with ShardFlow(loader, prep=prep, writer=writer, store=str(cfg.paths.teacher_cache), summary=summary) as flow:
            for item, frames in flow:  # load: uint8 [V x K views, F, 3, S, S] on the device (a shard, or part of one)
                frame_features = encode(frames).unflatten(0, (len(item.rows), item.per_video))  # encode: [V, K, F, D]
                features = frame_features.mean(2)  # pool over time: [V, K, D]
                logits = teacher.logits(features)  # zero-shot head: [V, K, C]
                flow.write(item, {"features": features, "logits": logits, "frame_features": frame_features.half()})
                summary.videos += len(item.rows)
                summary.views += len(item.rows) * item.per_video
                summary.frames += len(item.rows) * item.per_video * cfg.teacher.num_frames
                summary.first_frames = summary.first_frames or summary.frames
                if item.part == item.parts - 1:  # a worker sends a shard's parts in order
                    summary.shards_computed.append((item.job.split, item.job.shard))
                    progress.update()
    finally:
        if pools is not None:
            pools.close()


# Training views crop 0.69 of the short side's square on average (views.SCALES); slots sized for all
# of it would double the page-locked pool, so they take 0.75 and a rarer larger shard's last crops
# travel in a segment of their own.
_VIEW_AREA = 0.75


def item_bytes(cfg: Config) -> int:
    """Room for one loader item's crops as the shards stage makes them (what does not fit is sent the old way):
    a part of `teacher.batch_videos` views, of training views or of centre views, whichever is larger."""
    t = cfg.teacher
    frame = t.num_frames * 3 * cfg.shards.short_side**2
    centre = min(t.batch_videos, cfg.shards.videos_per_shard) * frame
    if t.views == 1:
        return centre
    videos = min(max(1, t.batch_videos // t.views), cfg.shards.videos_per_shard)
    return max(centre, int(videos * t.views * frame * _VIEW_AREA))


def view_plan(cfg: Config) -> ViewPlan:
    """The views the teacher encodes: the training views of `teacher.views`, the centre view elsewhere."""
    check_views(cfg)
    t = cfg.teacher
    return ViewPlan(
        t.num_frames,
        count=t.views,
        seed=t.view_seed,
        clip_frames=cfg.student.num_frames,
        flip=cfg.train.flip,
        splits=training_splits(cfg),
    )


def gpu_share(cfg: TeacherConfig, device: torch.device) -> float:
    """The share of shards whose JPEGs are decoded on the GPU (the rest by the loader workers)."""
    if not 0.0 <= cfg.gpu_decode_share <= 1.0:
        raise ValueError(f"teacher.gpu_decode_share={cfg.gpu_decode_share} is not between 0 and 1")
    return cfg.gpu_decode_share if device.type == "cuda" else 0.0


def make_encoder(teacher: Teacher, cfg: TeacherConfig, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 frames [V, F, 3, S, S] -> per-frame embeddings [V, F, D] float32, `batch_videos` at a time."""
    dtype = autocast_dtype(device, cfg.precision)
    norm = normalizer(teacher.mean, teacher.std, device)

    def forward(flat: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=False):
            return teacher.encode_frames(norm(flat))

    batch = cfg.batch_videos * cfg.num_frames
    if device.type == "cuda" and cfg.compile:
        forward = torch.compile(forward, dynamic=False)  # compiled on the graph's warm-up calls, then captured
    step = forward
    if device.type == "cuda" and cfg.cuda_graphs:
        size = teacher.image_size
        step = GraphedForward(forward, torch.zeros(batch, 3, size, size, dtype=torch.uint8, device=device))

    def encode(frames: torch.Tensor) -> torch.Tensor:
        v, f = frames.shape[:2]
        if v == 0:
            return torch.zeros(0, cfg.num_frames, teacher.dim, device=device)
        flat = frames.flatten(0, 1)
        out = torch.cat([step(flat[i : i + batch]) for i in range(0, flat.shape[0], batch)])
        return out.view(v, f, -1)

    return encode


def _open_store(cfg: Config, teacher: Teacher, names: list[str]) -> zarr.Group:
    path = cfg.paths.teacher_cache
    if not path.exists():
        attrs = expected_attrs(cfg)
        extra = {
            "weights_sha256": teacher.weights_sha256,
            "prompt_texts": teacher.prompt_texts,
            "class_names": names,
            "logit_scale": teacher.logit_scale,
            "image_size": teacher.image_size,
            "mean": list(teacher.mean),
            "std": list(teacher.std),
        }
        create_store(cfg, {**attrs, **extra}, dim=teacher.dim, num_classes=len(names))
    root = open_checked(cfg, mode="r+")
    if root.attrs.get("weights_sha256") != teacher.weights_sha256:
        raise CacheMismatchError(
            f"teacher cache {path} was built with other teacher weights (sha256 {root.attrs.get('weights_sha256', '?')[:12]}, "
            f"now {teacher.weights_sha256[:12]}); delete it to rebuild"
        )
    return root


def all_shards(cfg: Config) -> list[ShardJob]:
    """Every shard in the split indexes, in the order tasks stride over."""
    out = []
    for split in cfg.data.splits:
        for i, shard in enumerate(read_index(cfg.paths.shards_dir, split)["shards"]):
            out.append(ShardJob(split, i, cfg.paths.shards_dir / shard["name"]))
    return out


def _todo(cfg: Config, root: zarr.Group, task_id: int, num_tasks: int, only) -> tuple[list[ShardJob], int]:
    shards = all_shards(cfg)
    mine = [shards[i] for i in only] if only is not None else shards[task_id::num_tasks]
    done = {split: root[split]["done"][:] for split in cfg.data.splits}
    jobs = [job for job in mine if not done[job.split][job.shard]]
    return jobs, len(mine) - len(jobs)


def missing(cfg: Config) -> list[int]:
    """Positions in `all_shards` whose rows are not done (all of them when there is no cache yet)."""
    shards = all_shards(cfg)
    if not cfg.paths.teacher_cache.exists():
        return list(range(len(shards)))
    root = open_checked(cfg)  # a cache from other settings is refused here, not reported as complete
    done = {split: root[split]["done"][:] for split in cfg.data.splits if split in root}
    return [i for i, job in enumerate(shards) if job.split not in done or not done[job.split][job.shard]]


def _summary_paragraph(s: TeacherSummary, task_id: int, num_tasks: int, cfg: Config) -> str:
    rate = s.frames / s.compute_seconds if s.compute_seconds else 0.0
    steady = f", {s.steady_frames_per_s:.0f} once the pipeline is full" if len(s.shards_computed) > 1 else ""
    waits = (
        f"; the loop waited {s.wait_input_s:.1f} s for input and {s.wait_output_s:.1f} s for output, which waited "
        f"{s.wait_gpu_s:.1f} s for the GPU and {s.wait_write_s:.1f} s for the writers (busy {s.write_busy_s:.1f} s)"
    )
    return (
        f"Teacher cache task {task_id}/{num_tasks} finished in {format_duration(s.seconds)}: computed "
        f"{len(s.shards_computed)} shards and skipped {s.shards_skipped} already done; {s.videos} videos "
        f"({s.views} views), "
        f"{s.frames} frames ({rate:.0f} frames/s over the shards{steady}{waits}) with {cfg.teacher.model} "
        f"({cfg.teacher.pretrained}) into {cfg.paths.teacher_cache}."
    )
