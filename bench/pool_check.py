"""Check on this machine's device that the batch pool delivers exactly what per-batch segments do.

    python -m bench.pool_check [--videos 512] [--workers 4]

Both loaders (training clips and teacher shards) run twice over the same JPEG shards, with the
batch pool (a PoolKeeper, what experimental.batch_pool=true gives) and without, and every tensor
is compared bit for bit on the host. On CUDA this covers
what the CPU tests cannot: the page-locked pool, the copies on a side stream and the slots given
back after them. Exits non-zero on any difference.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from pathlib import Path

import torch

from bench.jpeg_shards import build
from pipeline.accel.pool_loader import PoolKeeper
from pipeline.runtime.device import pick_device
from pipeline.student.data import ClipSource, ClipSpec, make_loader, split_shards, to_device
from pipeline.teacher import data as teacher_data
from pipeline.teacher import run as teacher_run


def training_batches(cfg, device, workers: int, pool: bool) -> list:
    """Every batch of one pass of the training loader, moved to the host."""
    files, _ = split_shards(cfg, "train")
    source = ClipSource(files, ClipSpec(8, 224, 16, train=True, seed=3), 0, 1, 48, None, {})
    out = []
    with contextlib.closing(PoolKeeper()) as keeper:
        for b in make_loader(source, workers=workers, device=device, keeper=keeper if pool else None):
            b = to_device(b, device)
            out.append((b.ids, b.labels.cpu(), b.clips.cpu()))
    return out


def teacher_items(cfg, device, workers: int, pool: bool) -> list:
    """Every shard's model input from the teacher loader and its `FramePrep`, moved to the host."""
    jobs = teacher_run.all_shards(cfg)
    prep = teacher_data.FramePrep(224, device)
    out = []
    with contextlib.closing(PoolKeeper()) as keeper:
        loader = teacher_data.make_loader(
            jobs,
            teacher_data.ViewPlan(8),
            num_workers=workers,
            gpu_share=0.0,
            prep=prep,
            keeper=keeper if pool else None,
            shard_bytes=teacher_run.item_bytes(cfg),
            batch_views=cfg.teacher.batch_videos,
        )
        for item in loader:
            _, frames, ready = prep(item)
            prep.wait(ready, frames)
            out.append((item.rows, frames.cpu()))
    return out


def _same(a: tuple, b: tuple) -> bool:
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b, strict=True))


def main() -> None:
    """Build shards, run both loaders both ways, compare."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=512)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    work = Path(tempfile.mkdtemp(prefix="pool_check_"))
    cfg = build(work / "ssv2", work / "run", args.videos, 8, 16, ["shards.videos_per_shard=16"])
    device = pick_device("auto")
    failures = 0
    for name, run in (("training loader", training_batches), ("teacher loader", teacher_items)):
        pooled, segments = run(cfg, device, args.workers, True), run(cfg, device, args.workers, False)
        same = len(pooled) == len(segments) and all(_same(a, b) for a, b in zip(pooled, segments))
        failures += not same
        print(
            f"{name} on {device}: {len(pooled)} batches with the pool, {len(segments)} without: "
            f"{'identical' if same else 'DIFFERENT'}",
            flush=True,
        )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
