"""Where a teacher-cache shard's time goes, each phase timed alone (synchronised), per shard.

python -m bench.teacher_profile --work DIR   (DIR from `bench.teacher_bench --work DIR`)
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path

import torch

from pipeline import config
from pipeline.runtime.device import pick_device
from pipeline.ssv2.annotations import LABELS_FILE, class_names, load_labels
from pipeline.ssv2.frames import decode
from pipeline.teacher import data as teacher_data
from pipeline.teacher import run as teacher_run
from pipeline.teacher.clip import load_teacher


def timed(fn, device, reps: int = 5) -> float:
    """Mean seconds of fn() over `reps` runs after one warm-up."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def main() -> None:
    """Print ms per shard for each phase of the stage's loop."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--workers", type=int, default=14)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = config.load(args.work / "run" / "shards" / "config.yaml", [f"teacher.model={args.model}", "teacher.pretrained=random"])
    device = pick_device("auto")
    teacher = load_teacher(cfg.teacher, class_names(load_labels(LABELS_FILE)), device)
    job = teacher_run.all_shards(cfg)[0]
    size, frames_n = teacher.image_size, cfg.teacher.num_frames
    torch.set_num_threads(1)  # as in a loader worker
    shard_frames = teacher_data.ShardFrames([], teacher_run.view_plan(cfg))
    raw = shard_frames.read(job)  # ShardJpegs: the sampled frames as JPEG bytes
    cpu_item = shard_frames.decoded(job)  # ShardCrops: decoded and cropped on the CPU
    flat = [j for v in raw.jpegs for j in v]
    n = len(flat)
    on_gpu = teacher_data.frames_on_device(raw, size, device)
    cfg.teacher.cuda_graphs = False
    eager = teacher_run.make_encoder(teacher, cfg.teacher, device)
    cfg.teacher.cuda_graphs = device.type == "cuda"
    graphed = teacher_run.make_encoder(teacher, cfg.teacher, device)
    phases = {
        "read shard + pick frames (1 core)": lambda: shard_frames.read(job),
        "read + CPU decode + crop (1 core)": lambda: shard_frames.decoded(job),
        "copy CPU crops to device + resize": lambda: teacher_data.frames_on_device(cpu_item, size, device),
        "GPU decode (nvjpeg, batched)": lambda: decode(flat, device),
        "GPU decode + crop + resize": lambda: teacher_data.frames_on_device(raw, size, device),
        "forward (bf16 autocast, eager)": lambda: eager(on_gpu),
        "forward (bf16 autocast, CUDA graph)": lambda: graphed(on_gpu),
    }
    import shutil

    from pipeline.cache.store import ShardRowsWriter, create_store, expected_attrs

    store = args.work / "profile_store.zarr"
    shutil.rmtree(store, ignore_errors=True)
    create_store(cfg, expected_attrs(cfg), dim=512, num_classes=174, path=store)
    v, k = len(raw.rows), raw.per_video
    outs = {
        "features": torch.randn(v, k, 512).numpy(),
        "logits": torch.randn(v, k, 174).numpy(),
        "frame_features": torch.randn(v, k, frames_n, 512).numpy(),
    } | raw.stored
    writer = ShardRowsWriter()  # as in a writer process: the arrays are opened once (in the warm-up call)
    phases_cpu = {
        "Zarr write of one shard (all arrays, done flag)": lambda: writer.write(
            str(store), job.split, job.shard, raw.rows, str(job.tar), outs
        )
    }
    print(
        f"\n{n} frames per shard ({len(raw.rows)} videos x {frames_n}), "
        f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}\n"
    )
    print("| phase | ms per shard | frames/s |")
    print("| --- | --- | --- |")
    for name, fn in {**phases_cpu, **phases}.items():
        t = timed(fn, device)
        print(f"| {name} | {t * 1e3:.1f} | {n / t:.0f} |")
    # The loader alone: how many frames/s the workers can feed, with nothing else running.
    jobs = teacher_run.all_shards(cfg)[:200]
    for cpu_decode in (True, False):
        loader = teacher_data.make_loader(jobs, frames_n, num_workers=args.workers, gpu_share=0.0 if cpu_decode else 1.0)
        start, count = time.perf_counter(), 0
        for item in loader:
            count += len(item.rows) * frames_n
            if cpu_decode:
                teacher_data.frames_on_device(item, size, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        what = "CPU decode + crop, copy to GPU + resize" if cpu_decode else "read only (JPEG bytes)"
        print(f"| loader alone, {args.workers} workers: {what} | | {count / (time.perf_counter() - start):.0f} |")
    # Does GPU decode in a thread let the main thread keep the GPU busy? (the GIL question)
    stop = threading.Event()

    def decode_loop():
        while not stop.is_set():
            teacher_data.frames_on_device(raw, size, device)
            torch.cuda.synchronize()

    torch.set_num_threads(torch.get_num_threads())
    if device.type == "cuda":
        fwd = lambda: eager(on_gpu)
        alone = timed(fwd, device, 10)
        thread = threading.Thread(target=decode_loop, daemon=True)
        thread.start()
        together = timed(fwd, device, 10)
        stop.set()
        thread.join()
        print(
            f"| eager forward while another thread decodes | {together * 1e3:.1f} | {n / together:.0f} (alone {n / alone:.0f}) |"
        )


if __name__ == "__main__":
    main()
