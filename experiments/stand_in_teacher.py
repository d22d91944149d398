"""A stand-in teacher for the synthetic set: per-frame features that keep where the object is.

A CLIP teacher with random weights (all that tests and CPU experiments have) averages its patches
into features that say almost nothing about where the synthetic set's object is (measured in
docs/teacher_heads.md), so no head can learn direction from them. This stand-in makes the features
a real teacher would give a head something to learn from: per frame, the saturation (max - min over
RGB) of the centred square, pooled to 16 x 16, through a fixed random projection to 512 dimensions.
The synthetic object is saturated on a muted background, so a frame's feature encodes its position.

It fills the stage's own Zarr store (same layout, fingerprint and done flags), so the head stage,
training and the report run on it unchanged. Its config must name it: `teacher.model=stand-in`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import Config
from pipeline.ssv2.frames import decode, square_crop
from pipeline.ssv2.records import read_shard, select_frames
from pipeline.ssv2.sampling import segment_centres
from pipeline.teacher import run as teacher_run
from pipeline.teacher.store import ShardRowsWriter, create_store, expected_attrs

MODEL = "stand-in"
DIM, GRID = 512, 16


def frame_features(jpegs: list[bytes], projection: torch.Tensor) -> torch.Tensor:
    """[F, DIM] features of one video's sampled frames."""
    frames = torch.stack([square_crop(f) for f in decode(jpegs)]).float()  # [F, 3, s, s]
    saturation = frames.amax(1, keepdim=True) - frames.amin(1, keepdim=True)
    pooled = F.adaptive_avg_pool2d(saturation, GRID).flatten(1) / 255.0  # [F, GRID * GRID]
    return pooled @ projection


def fill_cache(cfg: Config, num_classes: int = 174) -> None:
    """Compute every shard's stand-in outputs into `paths.teacher_cache` (zero-shot logits: zeros)."""
    if cfg.teacher.model != MODEL:
        raise ValueError(f"the stand-in teacher's cache must be configured as teacher.model={MODEL}")
    path = cfg.paths.teacher_cache
    if not path.exists():
        attrs = expected_attrs(cfg) | {"stand_in": "saturation of the centred square, 16 x 16, random projection"}
        create_store(path, attrs, DIM, num_classes, cfg.teacher.num_frames)
    projection = torch.randn(GRID * GRID, DIM, generator=torch.Generator().manual_seed(0)) / GRID
    writer = ShardRowsWriter()
    for job in teacher_run.all_shards(cfg):
        rows, feats = [], []
        for record, blob in read_shard(str(job.tar)):
            picks = segment_centres(record["num_frames"], cfg.teacher.num_frames)
            rows.append(record["row"])
            feats.append(frame_features(select_frames(record, blob, picks), projection))
        frames = torch.stack(feats).numpy() if feats else np.zeros((0, cfg.teacher.num_frames, DIM), np.float32)
        mean = frames.mean(1)
        writer.write(
            str(path),
            job.split,
            job.shard,
            rows,
            str(job.tar),
            mean,
            np.zeros((len(rows), num_classes), np.float32),
            frames.astype(np.float16),
        )
