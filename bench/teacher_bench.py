"""Teacher-cache throughput end to end versus the teacher's forward alone, in one run.

    python -m bench.teacher_bench [--model ViT-B-32] [--videos 4096] [--batch-videos 64]

End to end: the real stage (reading shards, JPEG decode, resize/crop, forward, Zarr writes) over
JPEG shards built without ffmpeg; model loading is excluded (it happens once per task). Forward
only: the same teacher on random normalised frames at the same batch size and precision.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bench.jpeg_shards import build
from pipeline import teacher_run
from pipeline.clip_teacher import load_teacher
from pipeline.device import autocast_dtype, pick_device
from pipeline.ssv2 import LABELS_FILE, class_names, load_labels


def forward_only(cfg, iters: int) -> float:
    """Frames/s of the image tower alone on random input at the stage's batch size."""
    device = pick_device(cfg.teacher.device)
    teacher = load_teacher(cfg.teacher, class_names(load_labels(LABELS_FILE)), device)
    n = cfg.teacher.batch_videos * cfg.teacher.num_frames
    x = torch.randn(n, 3, teacher.image_size, teacher.image_size, device=device)
    dtype = autocast_dtype(device, cfg.teacher.precision)

    def step():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            teacher.encode_frames(x)

    for _ in range(3):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return n * iters / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def end_to_end(cfg) -> tuple[float, int]:
    """Frames/s of the stage's compute loop on a fresh store (after a short warm-up run)."""
    shutil.rmtree(cfg.paths.teacher_cache, ignore_errors=True)
    teacher_run.run(cfg, stop_after_shards=2)  # warm-up: CUDA context, kernels, page cache
    shutil.rmtree(cfg.paths.teacher_cache)
    summary = teacher_run.run(cfg)
    return summary.frames / summary.compute_seconds, summary.frames


def compare_stores(a: Path, b: Path) -> float:
    """The lowest cosine similarity between the two stores' valid video features."""
    import numpy as np
    import zarr

    low = 1.0
    for split in ("train", "validation"):
        ga, gb = zarr.open_group(a, mode="r")[split], zarr.open_group(b, mode="r")[split]
        valid = ga["valid"][:]
        fa, fb = ga["features"][:][valid], gb["features"][:][valid]
        cos = (fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)
        low = min(low, float(cos.min()))
    return low


def main() -> None:
    """Build shards, time both sides for each decode mode, print a Markdown table."""
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32" if cuda else "clip-tiny")
    parser.add_argument("--videos", type=int, default=4096 if cuda else 256)
    parser.add_argument("--batch-videos", type=int, default=64)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--decode", nargs="+", default=["gpu", "cpu"] if cuda else ["cpu"])
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--work", type=Path, default=None, help="where to build the shards (default: a temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="teacher_bench_"))
    overrides = [f"teacher.model={args.model}", "teacher.pretrained=random", f"teacher.batch_videos={args.batch_videos}",
                 f"teacher.num_frames={args.num_frames}", f"teacher.num_workers={args.workers}",
                 f"teacher.precision={args.precision}", f"shards.videos_per_shard={args.batch_videos}",
                 f"shards.cpus_per_task={os.cpu_count()}", "data.splits=[train, validation]", "teacher.progress_every_s=1000"]
    start = time.perf_counter()
    cfg = build(work / "ssv2", work / "run", args.videos, 16, 16, overrides)
    print(f"built {args.videos} videos of JPEG shards in {time.perf_counter() - start:.1f} s")
    device = pick_device(cfg.teacher.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    rows, stores = [], {}
    for mode in args.decode:
        cfg.teacher.decode = mode
        e2e, frames = end_to_end(cfg)
        stores[mode] = cfg.paths.teacher_cache.with_name(f"cache_{mode}.zarr")
        shutil.rmtree(stores[mode], ignore_errors=True)
        cfg.paths.teacher_cache.rename(stores[mode])
        fwd = forward_only(cfg, iters=max(3, min(50, frames // (args.batch_videos * args.num_frames))))
        rows.append(f"| {args.model} | {name} | {args.batch_videos * args.num_frames} | {mode} | {e2e:.0f} | {fwd:.0f} | {e2e / fwd:.0%} |")
    precision = args.precision if device.type == "cuda" else "fp32"
    print(f"\n{args.model}, {name}, batch {args.batch_videos * args.num_frames} frames ({args.batch_videos} videos x "
          f"{args.num_frames}), {precision}, {args.workers} loader workers, {frames} frames per pass\n")
    print("| model | device | batch (frames) | JPEG decode | end to end frames/s | forward only frames/s | end to end / forward |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    if len(stores) == 2:
        a, b = stores.values()
        print(f"\ncheck: lowest cosine similarity of video features, {' vs '.join(stores)} decode: {compare_stores(a, b):.4f}")
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
