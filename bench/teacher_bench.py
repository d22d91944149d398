"""Teacher-cache throughput end to end versus the teacher's forward alone, in one run.

    python -m bench.teacher_bench [--model ViT-B-32] [--videos 4096] [--batch-videos 64]

End to end: the real stage (reading shards, JPEG decode, resize/crop, forward, Zarr writes) over
JPEG shards built without ffmpeg; model loading is excluded (it happens once per task). Forward
only: the stage's own encoder (normalise + image tower, eager and as a CUDA graph) on random
frames at the same batch size and precision; the ratio is against the one the stage runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from bench.jpeg_shards import build
from pipeline.runtime.device import pick_device
from pipeline.ssv2.annotations import LABELS_FILE, class_names, load_labels
from pipeline.teacher import run as teacher_run
from pipeline.teacher.clip import load_teacher


def forward_only(cfg, iters: int) -> dict[str, float]:
    """Frames/s of the stage's own encoder alone (eager and CUDA graph) on random frames at its batch size."""
    device = pick_device(cfg.teacher.device)
    teacher = load_teacher(cfg.teacher, class_names(load_labels(LABELS_FILE)), device)
    size = teacher.image_size
    x = torch.randint(0, 256, (cfg.teacher.batch_videos, cfg.teacher.num_frames, 3, size, size), dtype=torch.uint8, device=device)
    rates = {}
    for graphs in [False, True] if device.type == "cuda" else [False]:
        cfg.teacher.cuda_graphs = graphs
        encode = teacher_run.make_encoder(teacher, cfg.teacher, device)
        for _ in range(3):
            encode(x)
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            encode(x)
        _sync(device)
        rates["graph" if graphs else "eager"] = x.shape[0] * x.shape[1] * iters / (time.perf_counter() - start)
    cfg.teacher.cuda_graphs = device.type == "cuda"
    return rates


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def nchw_groups(videos, make=None):
    """The loader's grouping before it stacked crops channels last: [n, F, 3, s, s] contiguous in shared memory
    (on the frames' device for frames decoded there)."""
    from pipeline.accel.shm import empty_for_handover

    make = make or empty_for_handover
    by_side: dict[int, list[int]] = {}
    for i, v in enumerate(videos):
        by_side.setdefault(v[0].shape[-1], []).append(i)
    groups = []
    for idx in by_side.values():
        first = videos[idx[0]][0]
        alloc = make if first.device.type == "cpu" else partial(torch.empty, dtype=torch.uint8, device=first.device)
        out = alloc((len(idx), len(videos[idx[0]]), *first.shape))
        for k, i in enumerate(idx):
            torch.stack(videos[i], out=out[k])
        groups.append((idx, out))
    return groups


DECODE_SHARES = {"cpu": 0.0, "gpu": 1.0}  # --decode cpu|gpu; auto:SHARE is SHARE


def gpu_decode_share(mode: str) -> float:
    """teacher.gpu_decode_share for a --decode mode: cpu 0, gpu 1, auto:SHARE SHARE (plain auto: 0, the stage's default)."""
    kind, _, share = mode.partition(":")
    if kind in DECODE_SHARES and not share:
        return DECODE_SHARES[kind]
    if kind == "auto":
        try:
            value = float(share or 0)
        except ValueError:
            value = -1.0
        if 0.0 <= value <= 1.0:
            return value
    raise argparse.ArgumentTypeError(f"--decode {mode!r}: expected cpu, gpu or auto:SHARE with SHARE between 0 and 1")


def end_to_end(cfg) -> teacher_run.TeacherSummary:
    """The stage over every shard on a fresh store (after a short warm-up run)."""
    shutil.rmtree(cfg.paths.teacher_cache, ignore_errors=True)
    teacher_run.run(cfg, stop_after_shards=2)  # warm-up: CUDA context, kernels, page cache
    shutil.rmtree(cfg.paths.teacher_cache)
    return teacher_run.run(cfg)


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
    parser.add_argument("--videos", type=int, default=20000 if cuda else 256)
    parser.add_argument("--batch-videos", type=int, default=64)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument(
        "--pin-memory",
        type=int,
        nargs="+",
        default=[0],
        help="0 and/or 1: loader pins host memory (experimental.pin_memory; without the batch pool)",
    )
    parser.add_argument(
        "--batch-pool",
        type=int,
        nargs="+",
        default=[1],
        choices=[0, 1],
        help="1: workers write into the page-locked pool (experimental.batch_pool, the stage's default), 0: a segment per shard",
    )
    parser.add_argument(
        "--decode",
        nargs="+",
        default=["auto:0.25", "gpu", "cpu"] if cuda else ["cpu"],
        help="cpu, gpu, or auto:SHARE (SHARE of the shards decoded on the GPU, the rest on the CPU): "
        "teacher.gpu_decode_share 0, 1 or SHARE",
    )
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--work", type=Path, default=None, help="where to build the shards (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--crop-layout",
        nargs="+",
        default=["channels_last"],
        choices=["channels_last", "nchw"],
        help="channels_last: the workers' crops as decoded, [H, W, 3] per frame (the stage); nchw: transposed, the earlier way",
    )
    args = parser.parse_args()
    for mode in args.decode:
        try:
            gpu_decode_share(mode)
        except argparse.ArgumentTypeError as e:
            parser.error(str(e))
    logging.basicConfig(level=logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="teacher_bench_"))
    overrides = [
        f"teacher.model={args.model}",
        "teacher.pretrained=random",
        f"teacher.batch_videos={args.batch_videos}",
        f"teacher.num_frames={args.num_frames}",
        f"teacher.num_workers={args.workers}",
        f"teacher.writers={args.writers}",
        f"teacher.precision={args.precision}",
        f"shards.videos_per_shard={args.batch_videos}",
        f"shards.cpus_per_task={os.cpu_count()}",
        "data.splits=[train, validation]",
        "teacher.progress_every_s=1000",
    ]
    start = time.perf_counter()
    cfg = build(work / "ssv2", work / "run", args.videos, args.num_frames, args.num_frames, overrides)
    print(f"built {args.videos} videos of JPEG shards in {time.perf_counter() - start:.1f} s")
    device = pick_device(cfg.teacher.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    rows, stores, figures = [], {}, []
    from pipeline.teacher import data as teacher_data

    stage_groups = teacher_data.group_crops
    for mode, pin, copy, pool in [
        (m, p, c, b) for m in args.decode for p in args.pin_memory for c in args.crop_layout for b in args.batch_pool
    ]:
        teacher_data.group_crops = stage_groups if copy == "channels_last" else nchw_groups  # workers fork after this
        cfg.teacher.gpu_decode_share = gpu_decode_share(mode)
        cfg.experimental.pin_memory, cfg.experimental.batch_pool = bool(pin), bool(pool)
        summary = end_to_end(cfg)
        e2e, steady, frames = summary.frames / summary.compute_seconds, summary.steady_frames_per_s, summary.frames
        print(
            f"{mode} decode, pin {pin}, {copy} crops, batch pool {pool}: loop {summary.compute_seconds:.1f} s, "
            f"waited {summary.wait_input_s:.1f} s "
            f"for input, {summary.wait_output_s:.1f} s for output; hand-over waited {summary.wait_gpu_s:.1f} s for the GPU, "
            f"{summary.wait_write_s:.1f} s for the writers (busy {summary.write_busy_s:.1f} s)"
        )
        key = f"{mode}/pin {pin}/{copy}/pool {pool}"
        stores[key] = cfg.paths.teacher_cache.with_name(f"cache_{mode.replace(':', '_')}_{pin}_{copy}_{pool}.zarr")
        shutil.rmtree(stores[key], ignore_errors=True)
        cfg.paths.teacher_cache.rename(stores[key])
        rates = forward_only(cfg, iters=max(3, min(50, frames // (args.batch_videos * args.num_frames))))
        fwd = rates.get("graph", rates["eager"])  # the forward the stage itself runs
        figures.append(
            dict(
                decode=mode,
                pin=pin,
                batch_pool=pool,
                precision=args.precision if device.type == "cuda" else "fp32",
                end_to_end=e2e,
                steady=steady,
                forward=fwd,
                forward_eager=rates["eager"],
                batch=args.batch_videos * args.num_frames,
                model=args.model,
                device=name,
            )
        )
        rows.append(
            f"| {args.model} | {name} | {args.batch_videos * args.num_frames} | {mode}{', pinned' if pin else ''}"
            f"{', ' + copy + ' crops' if len(args.crop_layout) > 1 else ''}{', batch pool' if pool else ', a segment per shard'} "
            f"| {e2e:.0f} | {steady:.0f} "
            f"| {rates['eager']:.0f} | {rates.get('graph', float('nan')):.0f} | {e2e / fwd:.0%} | {steady / fwd:.0%} |"
        )
    precision = args.precision if device.type == "cuda" else "fp32"
    print(
        f"\n{args.model}, {name}, batch {args.batch_videos * args.num_frames} frames ({args.batch_videos} videos x "
        f"{args.num_frames}), {precision}, {args.workers} loader workers, {frames} frames per pass\n"
    )
    print(
        "| model | device | batch (frames) | JPEG decode | end to end frames/s | steady frames/s | forward only, eager "
        "| forward only, CUDA graph | end to end / forward | steady / forward |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    if len(stores) >= 2:
        (a_name, a), *others = stores.items()
        for b_name, b in others:
            print(f"check: lowest cosine similarity of video features, {a_name} vs {b_name}: {compare_stores(a, b):.4f}")
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
