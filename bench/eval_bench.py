"""The evaluate stage's speed: the published 2 clips x 3 crops against the single view, with the real
loader against the model alone on synthetic input, in one run.

    python -m bench.eval_bench [--videos 1024] [--configs mobilevit_xxs:8 tsm_r50:8] [--batch 8]

Real: `pipeline.student.protocol.evaluate_views` over the validation shards (JPEG shards built
without ffmpeg), the stage's own loader (writing into one page-locked pool kept across passes, as
the stage does), normalisation and bf16 forward, timed over the whole pass (loader start included)
and after its first batch (steady). Synthetic: the same model's forward on one uint8 batch of the
same shape kept on the device. Clips/s count every view (a 2 x 3 video is six clips).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
from pathlib import Path

import torch

from bench.jpeg_shards import build
from pipeline.accel.pool_loader import PoolKeeper
from pipeline.models import build_student, input_normalizer
from pipeline.runtime.cpus import EVAL_RESERVE, loader_workers
from pipeline.runtime.device import autocast_dtype, pick_device
from pipeline.runtime.dist import DistEnv
from pipeline.student.protocol import Protocol, evaluate_views
from pipeline.student.train import prepare_model


def synthetic_rate(model, cfg, device, *, frames: int, protocol: Protocol, steps: int) -> float:
    """Clips/s of the model alone on one batch of the protocol's shape."""
    views = protocol.clips * protocol.crops
    size = protocol.size
    clips = torch.randint(0, 256, (cfg.eval.batch_size * views, frames, 3, size, size), dtype=torch.uint8, device=device)
    norm, dtype = input_normalizer(model, device), autocast_dtype(device, cfg.train.precision)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for i in range(steps + 3):
            if i == 3:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            model(norm(clips))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * clips.shape[0] / (time.perf_counter() - start)


def main() -> None:
    """Build shards, then time every model and protocol; print one Markdown table."""
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=1024 if cuda else 48)
    parser.add_argument("--configs", nargs="+", default=["mobilevit_xxs:8", "tsm_r50:8"] if cuda else ["tsm_tiny:8"])
    parser.add_argument("--batch", type=int, default=8 if cuda else 2, help="videos per step (eval.batch_size)")
    parser.add_argument(
        "--workers",
        type=int,
        default=loader_workers(-1, EVAL_RESERVE) if cuda else 2,
        help="default: the stage's automatic count",
    )
    parser.add_argument("--steps", type=int, default=20 if cuda else 2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="eval_bench_"))
    size = 224 if cuda else 64
    cfg = build(work / "ssv2", work / "run", args.videos, 24, 56, [f"student.image_size={size}", "shards.videos_per_shard=64"])
    cfg.eval.batch_size, cfg.train.num_workers = args.batch, args.workers
    cfg.eval.image_size = round(size * 256 / 224)
    device = pick_device("auto")
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{name}, {cfg.train.precision if cuda else 'fp32'}, batch {args.batch} videos, {args.workers} loader workers\n")
    print(
        "| model | frames | views | crop size | synthetic clips/s | real clips/s (whole pass) | real / synthetic "
        "| real clips/s (steady) | steady / synthetic | videos/s (whole pass) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with contextlib.closing(PoolKeeper()) as pools:
        for config in args.configs:
            _measure(cfg, config, device=device, size=size, steps=args.steps, pools=pools)


def _measure(cfg, config: str, *, device: torch.device, size: int, steps: int, pools: PoolKeeper) -> None:
    """One model: the single view and 2 x 3, synthetic against the real pass; prints table rows."""
    arch, frames = config.split(":")
    cfg.student.arch = arch
    model = prepare_model(build_student(cfg.student, 174), cfg, device).eval()
    for protocol in (Protocol(1, 1, size), Protocol(2, 3, cfg.eval.image_size)):
        synthetic = synthetic_rate(model, cfg, device, frames=int(frames), protocol=protocol, steps=steps)
        real = evaluate_views(cfg, model, env=DistEnv(), device=device, num_frames=int(frames), protocol=protocol, pools=pools)
        views = protocol.clips * protocol.crops
        clips, steady = real.videos_per_s * views, real.steady_videos_per_s * views
        print(
            f"| {arch} | {frames} | {protocol.name} | {protocol.size} | {synthetic:.0f} | {clips:.0f} "
            f"| {clips / synthetic:.0%} | {steady:.0f} | {steady / synthetic:.0%} | {real.videos_per_s:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
