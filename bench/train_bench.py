"""Student training-step throughput: synthetic in-memory clips versus the real loader, in one run.

    python -m bench.train_bench [--videos 4096] [--workers 14] [--configs mobilevit_xxs:8:64 ...]

Both sides run the trainer's own step (`pipeline.train.train_step`: bf16 autocast on CUDA, loss with
the cached teacher outputs, fused SGD, clipping, schedule). Synthetic: one uint8 batch kept on the
device. Real: the training loader over JPEG shards (built without ffmpeg) and the teacher cache,
`--workers` processes decoding the sampled frames and cropping.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from bench.jpeg_shards import build
from pipeline import teacher_run
from pipeline.device import autocast_dtype, pick_device
from pipeline.evaluate import split_shards, to_device
from pipeline.frames import IMAGENET_MEAN, IMAGENET_STD, normalizer
from pipeline.models import build_student
from pipeline.ssv2 import LABELS_FILE, class_names, load_labels
from pipeline.train import _cosine, make_optimizer, prepare_model, train_step
from pipeline.train_data import CacheSource, ClipBatch, ClipSpec, ShardClips, flip_pairs, make_loader


def _setup(cfg, device):
    torch.manual_seed(0)
    model = prepare_model(build_student(cfg.student, 174), cfg, device)
    optimizer = make_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(0, 10_000))
    scaler = torch.amp.GradScaler(enabled=False)
    return model, optimizer, scheduler, scaler


def _timed(step, batches, warmup: int, device) -> float:
    """Clips/s over the batches after `warmup` (synchronised at both ends)."""
    clips, start = 0, None
    for i, batch in enumerate(batches):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        step(batch)
        if i >= warmup:
            clips += batch.clips.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clips / (time.perf_counter() - start)


def measure(cfg, device, arch: str, frames: int, batch: int, workers: int, warmup: int, steps: int,
            with_loader: bool = True) -> tuple[float, float]:
    """(synthetic clips/s, real-loader clips/s) for one model, frame count and batch size."""
    cfg.student.arch, cfg.student.num_frames, cfg.train.batch_size = arch, frames, batch
    model, optimizer, scheduler, scaler = _setup(cfg, device)
    norm = normalizer(IMAGENET_MEAN, IMAGENET_STD, device)
    dtype = autocast_dtype(device, cfg.train.precision)
    wrapped = torch.compile(model) if cfg.train.compile and device.type == "cuda" else model
    step = lambda b: train_step(wrapped, model, optimizer, scheduler, scaler, norm, dtype, cfg, b)  # noqa: E731
    size = cfg.student.image_size
    fake = ClipBatch(torch.randint(0, 256, (batch, frames, 3, size, size), dtype=torch.uint8, device=device),
                     torch.randint(0, 174, (batch,), device=device), torch.randn(batch, 512, device=device),
                     torch.randn(batch, 174, device=device), [])
    synthetic = _timed(step, [fake] * (warmup + steps), warmup, device)
    if not with_loader:
        return synthetic, float("nan")
    shards, _ = split_shards(cfg, "train")
    spec = ClipSpec(frames, size, batch, train=True, seed=0, shuffle_buffer=cfg.train.shuffle_buffer)
    dataset = ShardClips(shards, spec, 0, 1, warmup + steps, CacheSource(cfg.paths.teacher_cache, "train"),
                         flip_pairs(class_names(load_labels(LABELS_FILE))))
    loader = make_loader(dataset, workers, device.type == "cuda")
    real = _timed(step, (to_device(b, device) for b in loader), warmup, device)
    return synthetic, real


def main() -> None:
    """Build shards and a cache, then measure every configuration; print a Markdown table."""
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4096 if cuda else 96)
    parser.add_argument("--workers", type=int, default=(os.cpu_count() or 2) - 2 if cuda else 2)
    default = ["mobilevit_xxs:8:64", "mobilevit_xxs:16:64", "tsm_r50:8:32", "tsm_r50:16:16"] if cuda else ["tsm_tiny:8:4"]
    parser.add_argument("--configs", nargs="+", default=default, help="arch:frames:batch")
    parser.add_argument("--image-size", type=int, default=224 if cuda else 64)
    parser.add_argument("--steps", type=int, default=30 if cuda else 6)
    parser.add_argument("--warmup", type=int, default=8 if cuda else 2)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--levers", action="store_true", help="also time channels_last and torch.compile (synthetic input)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="train_bench_"))
    frames_max = max(int(c.split(":")[1]) for c in args.configs)
    cfg = build(work / "ssv2", work / "run", args.videos, frames_max, frames_max,
                ["teacher.model=clip-tiny", "teacher.pretrained=random", f"teacher.num_workers={args.workers}",
                 "shards.videos_per_shard=64", f"student.image_size={args.image_size}", "teacher.progress_every_s=1000"])
    teacher_run.run(cfg)
    device = pick_device("auto")
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    rows = []
    for config in args.configs:
        arch, frames, batch = config.split(":")
        synthetic, real = measure(cfg, device, arch, int(frames), int(batch), args.workers, args.warmup, args.steps)
        rows.append(f"| {arch} | {frames} | {batch} | {synthetic:.1f} | {real:.1f} | {real / synthetic:.0%} |")
    precision = cfg.train.precision if cuda else "fp32"
    print(f"\n{name}, {precision}, image {args.image_size}, distillation loss with the cached teacher, SGD (fused on CUDA), "
          f"{args.workers} loader workers, {args.steps} timed steps after {args.warmup}\n")
    print("| model | frames | batch | synthetic input clips/s | real loader clips/s | real / synthetic |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    if args.levers:
        print("\n| model | frames | batch | eager | channels_last | channels_last + compile | best / eager |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for config in args.configs:
            arch, frames, batch = config.split(":")
            rates = []
            for channels_last, compiled in ((False, False), (True, False), (True, True)):
                cfg.train.channels_last, cfg.train.compile = channels_last, compiled
                warm = args.warmup + (10 if compiled else 0)  # compilation happens in the first steps
                rates.append(measure(cfg, device, arch, int(frames), int(batch), args.workers, warm, args.steps, with_loader=False)[0])
            print(f"| {arch} | {frames} | {batch} | {rates[0]:.1f} | {rates[1]:.1f} | {rates[2]:.1f} | {max(rates) / rates[0]:.2f}x |")
        cfg.train.channels_last = cfg.train.compile = False


if __name__ == "__main__":
    main()
