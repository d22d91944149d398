"""Stage 1 work: decode SSv2 videos once and write them into WebDataset tar shards."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Config, dump
from pipeline.runtime import atomic
from pipeline.runtime.progress import Progress, format_duration
from pipeline.shards.ffmpeg import DecodedVideo, VideoError, decode_video
from pipeline.shards.plan import (
    MANIFEST_VERSION,
    ShardSpec,
    decode_settings,
    manifest_path,
    plan_all,
    why_not_done,
    write_index_if_complete,
)
from pipeline.ssv2.annotations import VideoEntry
from pipeline.ssv2.records import ShardWriter

log = logging.getLogger(__name__)


@dataclass
class ShardsSummary:
    """What one task did."""

    shards_built: int = 0
    shards_skipped: int = 0
    videos: int = 0
    frames: int = 0
    bytes: int = 0
    rejected: dict[str, str] = field(default_factory=dict)  # id -> reason
    seconds: float = 0.0
    indexes_written: list[str] = field(default_factory=list)


Decoder = Callable[[VideoEntry], "DecodedVideo | str"]


def run(
    cfg: Config, task_id: int = 0, num_tasks: int = 1, decoder: Decoder | None = None, only: list[int] | None = None
) -> ShardsSummary:
    """Build shards task_id, task_id + num_tasks, ... of the plan (or the plan positions in `only`),
    skipping those already done.

    `decoder` turns an annotation entry into frames or a reject reason; the default runs ffmpeg on
    the entry's .webm (benchmarks on machines without ffmpeg pass one that renders frames).
    """
    decoder = decoder or ffmpeg_decoder(cfg)
    start = time.monotonic()
    out_dir = cfg.paths.shards_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out_dir / "config.yaml", dump(cfg))
    specs = plan_all(cfg)
    mine = [specs[i] for i in only] if only is not None else specs[task_id::num_tasks]
    todo = []
    for spec in mine:
        _remove_stale_tmp(out_dir, spec)
        reason = why_not_done(out_dir, spec, cfg)
        if reason is None:
            continue
        if reason != "no manifest":
            log.info("%s: rebuilding (%s)", spec.name, reason)
        todo.append(spec)
    summary = ShardsSummary(shards_skipped=len(mine) - len(todo))
    log.info(
        "task %d/%d: %d shards, %d already done, %d to build", task_id, num_tasks, len(mine), summary.shards_skipped, len(todo)
    )
    progress = Progress("videos", sum(len(s.videos) for s in todo), cfg.shards.progress_every_s, log)
    with ThreadPoolExecutor(max(1, cfg.shards.cpus_per_task)) as pool:
        try:
            for spec in todo:
                _build_shard(cfg, spec, pool, decoder, progress, summary)
        except BaseException:  # stopped or failed: start no more decodes of the shard being built
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    for split in cfg.data.splits:
        if write_index_if_complete(out_dir, cfg, split, [s for s in specs if s.split == split]):
            summary.indexes_written.append(split)
    summary.seconds = time.monotonic() - start
    log.info(_summary_paragraph(summary, task_id, num_tasks, out_dir))
    return summary


def _remove_stale_tmp(out_dir: Path, spec: ShardSpec) -> None:
    # Temporary files of this task's shards are leftovers of a killed run: never trusted, so drop them.
    for tmp in out_dir.glob(f".{spec.name[:-4]}*.tmp-*"):
        tmp.unlink(missing_ok=True)


def missing(cfg: Config) -> list[int]:
    """Plan positions of the shards without a done marker that matches (hashes are left to the tasks)."""
    out = cfg.paths.shards_dir
    return [i for i, spec in enumerate(plan_all(cfg)) if why_not_done(out, spec, cfg, check_hash=False) is not None]


def ffmpeg_decoder(cfg: Config) -> Decoder:
    """The stage's decoder: ffmpeg on `<ssv2_root>/<videos_subdir>/<id>.webm`."""
    video_dir = Path(cfg.paths.ssv2_root) / cfg.data.videos_subdir
    s = cfg.shards

    def decode(entry: VideoEntry) -> DecodedVideo | str:
        # DecodeInterrupted is not caught: it ends the shard (no manifest) and the task.
        try:
            return decode_video(video_dir / f"{entry.id}.webm", s.short_side, s.jpeg_qscale, s.decode_timeout_s)
        except VideoError as e:
            return str(e)

    return decode


def _checked(cfg: Config, decoder: Decoder, entry: VideoEntry) -> DecodedVideo | str:
    """The decoded video, or the reason it is rejected."""
    if entry.problem:
        return entry.problem
    video = decoder(entry)
    if isinstance(video, str):
        return video
    if len(video.jpegs) < cfg.shards.min_frames:
        return f"too short: {len(video.jpegs)} frames < shards.min_frames={cfg.shards.min_frames}"
    return video


def _build_shard(
    cfg: Config, spec: ShardSpec, pool: ThreadPoolExecutor, decoder: Decoder, progress: Progress, summary: ShardsSummary
) -> None:
    out_dir = cfg.paths.shards_dir
    tar_path = out_dir / spec.name
    tmp = atomic.tmp_name(tar_path)
    videos, rejected, frames = [], [], 0
    with atomic.discard_on_error(tmp, tar_path), open(tmp, "wb") as f:
        writer = ShardWriter(f)
        results = pool.map(lambda e: _checked(cfg, decoder, e), spec.videos)
        for pos, (entry, result) in enumerate(zip(spec.videos, results)):
            row = spec.first_row + pos
            if isinstance(result, str):
                rejected.append({"id": entry.id, "row": row, "reason": result})
                log.warning("%s: video %s rejected: %s", spec.name, entry.id, result)
            else:
                writer.write(_record(entry, result, row), result.jpegs)
                videos.append({"id": entry.id, "row": row, "label": entry.label, "num_frames": len(result.jpegs)})
                frames += len(result.jpegs)
            progress.update()
        writer.close()
    with atomic.discard_on_error(tmp, tar_path):
        atomic.publish(tmp, tar_path)
    manifest = _manifest(cfg, spec, tar_path, videos, rejected, frames)
    atomic.write_json(manifest_path(out_dir, spec.name), manifest)  # written last: the done marker
    summary.shards_built += 1
    summary.videos += len(videos)
    summary.frames += frames
    summary.bytes += manifest["bytes"]
    summary.rejected.update({r["id"]: r["reason"] for r in rejected})


def _record(entry: VideoEntry, video: DecodedVideo, row: int) -> dict[str, Any]:
    return {
        "id": entry.id,
        "label": entry.label,
        "label_text": entry.text,
        "template": entry.template,
        "num_frames": len(video.jpegs),
        "fps": video.fps,
        "height": video.height,
        "width": video.width,
        "row": row,
    }


def _manifest(cfg: Config, spec: ShardSpec, tar_path: Path, videos: list, rejected: list, frames: int) -> dict[str, Any]:
    return {
        "version": MANIFEST_VERSION,
        "name": spec.name,
        "split": spec.split,
        "index": spec.index,
        "first_row": spec.first_row,
        "settings": decode_settings(cfg),
        "planned_ids": [v.id for v in spec.videos],
        "sha256": atomic.sha256_file(tar_path),
        "bytes": tar_path.stat().st_size,
        "num_videos": len(videos),
        "num_frames": frames,
        "num_rejected": len(rejected),
        "videos": videos,
        "rejected": rejected,
    }


def _summary_paragraph(s: ShardsSummary, task_id: int, num_tasks: int, out_dir: Path) -> str:
    rate = s.videos / s.seconds if s.seconds else 0.0
    per_video = s.bytes / s.videos / 1024 if s.videos else 0.0
    reasons: dict[str, int] = {}
    for reason in s.rejected.values():
        key = reason.split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    rejects = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) or "none"
    indexes = ", ".join(s.indexes_written) or "none yet (other tasks still running or failed)"
    return (
        f"Shards task {task_id}/{num_tasks} finished in {format_duration(s.seconds)}: built {s.shards_built} shards "
        f"and skipped {s.shards_skipped} already verified; wrote {s.videos} videos ({s.frames} frames, "
        f"{rate:.1f} videos/s), {s.bytes / 1e6:.1f} MB ({per_video:.0f} KiB per video) to {out_dir}; "
        f"rejected {len(s.rejected)} videos ({rejects}); complete split indexes: {indexes}."
    )
