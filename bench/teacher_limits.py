"""What bounds the teacher-cache loop: each side's ceiling under the loop's real concurrency.

    python -m bench.teacher_limits --work DIR [--workers 8 12 15]   (DIR from `bench.teacher_bench --work DIR`)

1. the machine's CPUs (logical and physical cores);
2. the loader alone, CPU decode, with nothing on the GPU: how many frames/s the workers can make;
3. the encoder alone, and while another thread copies a shard's crops to the GPU (pageable and
   pinned) and resizes them on a side stream: whether input work steals GPU time from the forward;
4. the stage end to end under the PyTorch profiler: GPU busy time per shard and the top kernels.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import threading
import time
from pathlib import Path

import torch

from pipeline import config
from pipeline.runtime.device import pick_device
from pipeline.ssv2.annotations import LABELS_FILE, class_names, load_labels
from pipeline.teacher import data as teacher_data
from pipeline.teacher import run as teacher_run
from pipeline.teacher.clip import load_teacher


def cpu_facts() -> str:
    """Model name, logical CPUs and physical cores from /proc/cpuinfo."""
    text = Path("/proc/cpuinfo").read_text()
    blocks = [
        {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in b.splitlines() if ":" in line)}
        for b in text.split("\n\n")
        if b.strip()
    ]
    cores = {(b.get("physical id", "0"), b.get("core id", str(i))) for i, b in enumerate(blocks)}
    model = blocks[0].get("model name", "?") if blocks else "?"
    return f"{model}: {len(blocks)} logical CPUs, {len(cores)} physical cores"


def loader_rate(jobs: list, frames_n: int, workers: int) -> float:
    """Frames/s of the CPU-decoding loader alone; items are dropped as they arrive."""
    loader = teacher_data.make_loader(jobs, teacher_data.ViewPlan(frames_n), num_workers=workers, gpu_share=0.0)
    it = iter(loader)
    first = next(it)  # worker start-up is not part of the rate
    start, count = time.perf_counter(), 0
    for item in it:
        count += len(item.rows) * frames_n
    del first
    return count / (time.perf_counter() - start)


def forward_while(encode, frames, side_work, seconds: float = 4.0) -> tuple[float, float]:
    """(encoder frames/s, side-work calls/s) with `side_work` looping in another thread (None: alone)."""
    stop, calls = threading.Event(), [0]

    def loop():
        while not stop.is_set():
            side_work()
            calls[0] += 1

    thread = threading.Thread(target=loop, daemon=True) if side_work else None
    if thread:
        thread.start()
        time.sleep(0.5)
    torch.cuda.synchronize()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        encode(frames)
        n += 1
        if n % 4 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    took = time.perf_counter() - start
    stop.set()
    if thread:
        thread.join()
    return n * frames.shape[0] * frames.shape[1] / took, calls[0] / (took + 0.5)


def main() -> None:
    """Print each ceiling."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 12, 15])
    parser.add_argument("--profile-shards", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None, help="folder for the profiler tables")
    parser.add_argument("--loop-only", type=int, default=0, help="only run the stage over this many shards (to attach py-spy)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(cpu_facts())
    cfg = config.load(args.work / "run" / "shards" / "config.yaml", [f"teacher.model={args.model}", "teacher.pretrained=random"])
    if args.loop_only:
        cfg.teacher.num_workers = max(args.workers)
        shutil.rmtree(cfg.paths.teacher_cache, ignore_errors=True)
        logging.getLogger("pipeline").setLevel(logging.INFO)
        teacher_run.run(cfg, stop_after_shards=args.loop_only)
        return
    jobs = teacher_run.all_shards(cfg)
    frames_n = cfg.teacher.num_frames
    for w in args.workers:
        print(f"loader alone, CPU decode + crop, {w} workers: {loader_rate(jobs[: 40 * w], frames_n, w):.0f} frames/s")
    device = pick_device("auto")
    if device.type != "cuda":
        return
    teacher = load_teacher(cfg.teacher, class_names(load_labels(LABELS_FILE)), device)
    size = teacher.image_size
    item = teacher_data.ShardFrames([], teacher_data.ViewPlan(frames_n)).decoded(jobs[0])  # ShardCrops, in pageable memory
    on_gpu = teacher_data.frames_on_device(item, size, device)
    encode = teacher_run.make_encoder(teacher, cfg.teacher, device)
    pinned = teacher_data.ShardCrops(item.job, item.rows, [(i, c.pin_memory()) for i, c in item.groups])
    side = torch.cuda.Stream(device)

    def copy_resize(src):
        def work():
            with torch.cuda.stream(side):
                teacher_data.frames_on_device(src, size, device)
            side.synchronize()

        return work

    def copy_only(src):
        def work():
            with torch.cuda.stream(side):
                for _, c in src.groups:
                    c.to(device, non_blocking=True)
            side.synchronize()

        return work

    print(
        f"\nencoder (CUDA graph) on one {on_gpu.shape[0] * on_gpu.shape[1]}-frame shard, "
        f"{sum(c.numel() for _, c in item.groups) / 1e6:.0f} MB of crops per shard"
    )
    for name, work in [
        ("alone", None),
        ("pageable H2D copies", copy_only(item)),
        ("pinned H2D copies", copy_only(pinned)),
        ("pageable H2D + resize", copy_resize(item)),
        ("pinned H2D + resize", copy_resize(pinned)),
    ]:
        fps, calls = forward_while(encode, on_gpu, work)
        print(
            f"| forward while {name} | {fps:.0f} frames/s | side thread {calls:.1f} shards/s "
            f"= {calls * on_gpu.shape[0] * frames_n:.0f} frames/s |"
        )
    for bench_algos in (False, True):
        torch.backends.cudnn.benchmark = bench_algos
        fps, _ = forward_while(teacher_run.make_encoder(teacher, cfg.teacher, device), on_gpu, None)
        print(f"| encoder, cudnn.benchmark={bench_algos} | {fps:.0f} frames/s |")
    torch.backends.cudnn.benchmark = False
    profile_loop(cfg, args)


def profile_loop(cfg, args) -> None:
    """The stage over `--profile-shards` shards under the profiler: GPU time against wall time."""
    from torch.profiler import ProfilerActivity, profile

    cfg.teacher.num_workers = max(args.workers)
    shutil.rmtree(cfg.paths.teacher_cache, ignore_errors=True)
    teacher_run.run(cfg, stop_after_shards=2)
    shutil.rmtree(cfg.paths.teacher_cache)
    summary = teacher_run.run(cfg, stop_after_shards=args.profile_shards)
    print(
        f"\nunprofiled: {summary.frames / summary.compute_seconds:.0f} frames/s, waited {summary.wait_input_s:.1f} s "
        f"for input, {summary.wait_output_s:.1f} s for output, over {summary.compute_seconds:.1f} s"
    )
    shutil.rmtree(cfg.paths.teacher_cache)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        summary = teacher_run.run(cfg, stop_after_shards=args.profile_shards)
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events)
    shards = len(summary.shards_computed)
    print(
        f"profiled: {summary.frames / summary.compute_seconds:.0f} frames/s over {shards} shards, loop "
        f"{summary.compute_seconds * 1e3 / shards:.1f} ms per shard, GPU busy {gpu_us / 1e3 / shards:.1f} ms per shard "
        f"(all streams summed), waited {summary.wait_input_s:.1f} s for input, {summary.wait_output_s:.1f} s for output"
    )
    table = events.table(sort_by="self_device_time_total", row_limit=25)
    cpu_table = events.table(sort_by="self_cpu_time_total", row_limit=25)
    print(table)
    print(cpu_table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(args.out / "teacher_trace.json"))


if __name__ == "__main__":
    main()
