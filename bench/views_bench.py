"""The teacher stage with K training views per video against one, end to end against forward only.

    python -m bench.views_bench [--videos 4000] [--views 1 8] [--compile 0 1] [--versions new before] [--decode-share 0.0]

Builds JPEG shards without ffmpeg (SSv2-like lengths, 24-56 frames), then for each (views, compile)
runs the real stage on a fresh store (after a two-shard warm-up) and times the stage's own encoder
alone on random frames at the same batch (eager, CUDA graph, and compiled inside the graph when
asked). Prints frames/s, the ratio end to end / forward only (against the forward the stage runs),
bytes on disk per training video per view, and the lowest cosine between compiled and eager
features of the same videos (the compiled tower must give open_clip's features).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from bench.jpeg_shards import build
from bench.teacher_bench import end_to_end
from pipeline.accel import gpu_resize
from pipeline.accel.batch_pool import BatchPool
from pipeline.runtime.device import pick_device
from pipeline.ssv2 import frames as frames_module
from pipeline.ssv2.annotations import LABELS_FILE, class_names, load_labels
from pipeline.teacher import data as teacher_data
from pipeline.teacher import run as teacher_run
from pipeline.teacher.clip import load_teacher


def forward_rate(cfg, *, iters: int) -> float:
    """Frames/s of the stage's encoder (as configured: graph, compile) on random frames at its batch size."""
    device = pick_device(cfg.teacher.device)
    teacher = load_teacher(cfg.teacher, class_names(load_labels(LABELS_FILE)), device)
    size = teacher.image_size
    x = torch.randint(0, 256, (cfg.teacher.batch_videos, cfg.teacher.num_frames, 3, size, size), dtype=torch.uint8, device=device)
    encode = teacher_run.make_encoder(teacher, cfg.teacher, device)
    for _ in range(3):
        encode(x)
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        encode(x)
    _sync(device)
    return x.shape[0] * x.shape[1] * iters / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def store_bytes_per_view(path: Path) -> float:
    """Bytes on disk of the train group per valid video per view."""
    group = zarr.open_group(path, mode="r")["train"]
    videos, views = int(group["valid"][:].sum()), group["features"].shape[1]
    size = sum(f.stat().st_size for f in (path / "train").rglob("*") if f.is_file())
    return size / max(1, videos * views)


def lowest_cosine(a: Path, b: Path) -> float:
    """The lowest cosine similarity between two stores' per-frame features of the same valid videos and views."""
    low = 1.0
    for split in ("train", "validation"):
        ga, gb = zarr.open_group(a, mode="r")[split], zarr.open_group(b, mode="r")[split]
        valid = ga["valid"][:]
        fa = ga["frame_features"][:][valid].astype(np.float32).reshape(-1, ga["frame_features"].shape[-1])
        fb = gb["frame_features"][:][valid].astype(np.float32).reshape(fa.shape)
        cos = (fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)
        low = min(low, float(cos.min()))
    return low


@contextlib.contextmanager
def loop_version(version: str):
    """`new`: the stage as it is; `before`: whole shards per loader item, float32 resize products and
    the loader pool page-locked in full before the first copy (the stage until the fifth session of
    2026-12-01)."""
    if version == "new":
        yield
        return

    def whole_shard_bytes(cfg) -> int:
        square = cfg.shards.videos_per_shard * cfg.teacher.num_frames * 3 * cfg.shards.short_side**2
        return square if cfg.teacher.views == 1 else int(square * cfg.teacher.views * teacher_run._VIEW_AREA)

    patches = [
        (frames_module, "resize_by_products", functools.partial(gpu_resize.resize_by_products, dtype=torch.float32)),
        (BatchPool, "pin_in_background", lambda pool, done=None: pool.pin()),
        (teacher_data, "split_parts", lambda raw, batch_views: [raw]),
        (teacher_run, "item_bytes", whole_shard_bytes),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def main() -> None:
    """Build shards, run each setting, print a Markdown table."""
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32" if cuda else "clip-tiny")
    parser.add_argument("--videos", type=int, default=4000 if cuda else 96)
    parser.add_argument("--views", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--compile", type=int, nargs="+", default=[0, 1] if cuda else [0], choices=[0, 1])
    parser.add_argument("--decode-share", type=float, default=0.0, help="teacher.gpu_decode_share")
    parser.add_argument("--batch-videos", type=int, default=64)
    parser.add_argument("--workers", type=int, default=-1)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--versions", nargs="+", default=["new"], choices=["new", "before"], help="loop versions, side by side")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pipeline.accel").setLevel(logging.INFO)  # the loader pool's size and page-locking time
    work = args.work or Path(tempfile.mkdtemp(prefix="views_bench_"))
    overrides = [
        f"teacher.model={args.model}",
        "teacher.pretrained=random",
        f"teacher.batch_videos={args.batch_videos}",
        f"teacher.num_workers={args.workers}",
        f"teacher.gpu_decode_share={args.decode_share}",
        "student.num_frames=16",
        "train.flip=true",
        "teacher.progress_every_s=1000",
    ]
    start = time.perf_counter()
    cfg = build(work / "ssv2", work / "run", args.videos, 24, 56, overrides)
    print(f"built {args.videos} videos of JPEG shards in {time.perf_counter() - start:.1f} s", flush=True)
    device = pick_device(cfg.teacher.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    rows, stores = [], {}
    settings = [(v, c, version) for v in args.views for c in args.compile for version in args.versions]
    for views, compiled, version in settings:
        cfg.teacher.views, cfg.teacher.compile = views, bool(compiled)
        cfg.paths.run_dir = str(work / "run")
        t0 = time.perf_counter()
        try:
            forward = forward_rate(cfg, iters=30 if cuda else 3)
            with loop_version(version):
                summary = end_to_end(cfg)
        except Exception as e:  # one setting failing (a compile, say) must not lose the others' figures
            print(f"views {views}, compile {compiled}, {version}: failed: {type(e).__name__}: {str(e)[:500]}", flush=True)
            continue
        store = work / f"store-k{views}-c{compiled}-{version}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        shutil.move(cfg.paths.teacher_cache, store)
        stores.setdefault((views, compiled), store)
        stores[(views, compiled, version)] = store
        e2e = summary.frames / summary.compute_seconds
        row = {
            "views": views,
            "compile": compiled,
            "version": version,
            "forward": forward,
            "end_to_end": e2e,
            "steady": summary.steady_frames_per_s,
            "videos_per_s": summary.videos / summary.compute_seconds,
            "bytes_per_view": store_bytes_per_view(store),
            "wait_input_s": summary.wait_input_s,
            "first_shard_s": summary.first_shard_s,
            "compute_s": summary.compute_seconds,
            "setting_s": time.perf_counter() - t0,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    for views in args.views:
        for compiled in args.compile:
            if (views, compiled, "new") in stores and (views, compiled, "before") in stores:
                low = lowest_cosine(stores[(views, compiled, "new")], stores[(views, compiled, "before")])
                print(f"views {views}, compile {compiled}: lowest cosine, this loop vs the one before: {low:.6f}")
        if (views, 0) in stores and (views, 1) in stores:
            low = lowest_cosine(stores[(views, 0)], stores[(views, 1)])
            print(f"views {views}: lowest cosine, compiled vs eager per-frame features: {low:.6f}")
            for r in rows:
                if r["views"] == views:
                    r["cosine_vs_eager"] = low
    print(
        f"\n{args.model}, {name}, {args.videos} videos (24-56 frames), teacher 8 frames of the student's 16, batch "
        f"{args.batch_videos} videos, bf16, CUDA graph, gpu_decode_share {args.decode_share}\n"
    )
    print(
        "| views | compiled | loop | forward only frames/s | end to end frames/s | steady | end to end / forward "
        "| steady / forward | first shard (s) | waited for input (s) | compute (s) | bytes per video per view |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['views']} | {'yes' if r['compile'] else 'no'} | {r['version']} | {r['forward']:.0f} | {r['end_to_end']:.0f} "
            f"| {r['steady']:.0f} | {r['end_to_end'] / r['forward']:.0%} | {r['steady'] / r['forward']:.0%} "
            f"| {r['first_shard_s']:.1f} | {r['wait_input_s']:.1f} | {r['compute_s']:.1f} | {r['bytes_per_view']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
