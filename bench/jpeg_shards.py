"""Shards of synthetic videos written without ffmpeg (for machines that have none, like the GPU box).

The frames are rendered by `pipeline.ssv2.synthetic` and JPEG-encoded with Pillow; everything else (plan,
tar layout, manifests, index) is the real shards stage, through its pluggable decoder.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from pathlib import Path

from PIL import Image

from pipeline import config
from pipeline.shards import build as shards
from pipeline.shards.ffmpeg import DecodedVideo
from pipeline.ssv2 import synthetic
from pipeline.ssv2.annotations import VideoEntry


def rendering_decoder(
    videos: list[synthetic.SyntheticVideo], cfg: config.SyntheticConfig, quality: int = 90, short_side: int = 0
):
    """A shards-stage decoder that renders each video's frames and encodes them as JPEG (scaled so the
    short side is at most `short_side`, as the ffmpeg decoder does; 0: as rendered)."""
    by_id = {v.id: v for v in videos}

    def decode(entry: VideoEntry) -> DecodedVideo:
        frames = synthetic.render(by_id[entry.id], cfg.min_frames, cfg.max_frames)
        jpegs = []
        h, w = frames.shape[1:3]
        if short_side and min(h, w) > short_side:
            h, w = (short_side, round(w * short_side / h)) if h <= w else (round(h * short_side / w), short_side)
        for frame in frames:
            buf = io.BytesIO()
            image = Image.fromarray(frame)
            if image.size != (w, h):
                image = image.resize((w, h), Image.BICUBIC)
            image.save(buf, format="JPEG", quality=quality)
            jpegs.append(buf.getvalue())
        return DecodedVideo(jpegs, w, h, float(synthetic.FPS), len(frames) / synthetic.FPS)

    return decode


def build(root: Path, run_dir: Path, num_videos: int, min_frames: int, max_frames: int, overrides: list[str]) -> config.Config:
    """Write annotations under `root` and shards under `run_dir`; returns the config used."""
    syn = config.SyntheticConfig(num_videos=num_videos, min_frames=min_frames, max_frames=max_frames)
    repo = Path(__file__).resolve().parents[1]
    cfg = config.load(repo / "pipeline.yaml", [f"paths.ssv2_root={root}", f"paths.run_dir={run_dir}", *overrides])
    return build_from(cfg, syn)


def build_from(cfg: config.Config, syn: config.SyntheticConfig) -> config.Config:
    """The synthetic set `syn` (any preset) as annotations under paths.ssv2_root and shards under paths.run_dir."""
    root = Path(cfg.paths.ssv2_root)
    videos = synthetic.plan(syn)
    synthetic.write_annotations(root, videos, syn)
    # One process per core, each an array task of the real stage (Pillow's encoder holds the GIL).
    tasks = os.cpu_count() or 1
    _STATE.update(cfg=cfg, decoder=rendering_decoder(videos, syn, short_side=cfg.shards.short_side), tasks=tasks)
    with multiprocessing.get_context("fork").Pool(tasks) as pool:
        pool.map(_task, range(tasks))
    shards.run(cfg, decoder=_STATE["decoder"])  # writes the split indexes once all shards are there
    return cfg


_STATE: dict = {}


def _task(task_id: int) -> None:
    shards.run(_STATE["cfg"], task_id, _STATE["tasks"], decoder=_STATE["decoder"])
