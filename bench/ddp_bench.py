"""DDP scaling of the student step: clips/s on 1 GPU and on N GPUs of one host, in one run.

    python -m bench.ddp_bench [--gpus 1 2] [--configs mobilevit_xxs:8:64 tsm_r50:8:32] [--real-loader]

Each count runs under torchrun (NCCL, NVLink multicast off), through the trainer's own process-group
set-up (`pipeline.runtime.dist`), state (`pipeline.student.train.build_state`) and step, on synthetic
input kept on each GPU; clips/s counts all ranks.
With --real-loader, each configuration is also timed with every rank reading its share of JPEG
shards and a teacher cache (built first, without ffmpeg) through the trainer's loader, with the
trainer's automatic worker count (the node's CPUs shared between the ranks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(configs: list[str], steps: int, warmup: int, data: Path | None) -> None:
    """One rank: time every configuration (with `data`, a config file: also with the real loader),
    rank 0 prints one JSON line per configuration and input."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from pipeline import config
    from pipeline.models import input_normalizer
    from pipeline.runtime import dist
    from pipeline.runtime.device import autocast_dtype
    from pipeline.student.data import ClipBatch
    from pipeline.student.train import build_state, train_step

    env = dist.from_environment()
    device = torch.device("cuda", env.local_rank)
    torch.cuda.set_device(device)
    dist.init(env, device)
    cfg = config.load(data) if data else config.Config()
    for item in configs:
        arch, frames, batch = item.split(":")
        cfg.student.arch, cfg.student.num_frames, cfg.train.batch_size = arch, int(frames), int(batch)
        cfg.train.compile = False  # the eager student (build_state compiles when train.compile is set)
        state = build_state(cfg, device, num_classes=174, total_steps=10_000)  # same seed, so same weights on every rank
        if env.world_size > 1:
            state.wrapped = DDP(state.wrapped, device_ids=[device.index])
        norm, dtype = input_normalizer(state.model, device), autocast_dtype(device, "bf16")
        b, t = int(batch), int(frames)
        pixels = torch.randint(0, 256, (b, t, 224, 224, 3), dtype=torch.uint8, device=device).movedim(-1, -3)
        fake = ClipBatch(
            pixels,  # channels last in memory, like the loader's batches
            torch.randint(0, 174, (b,), device=device),
            torch.randn(b, 512, device=device),
            torch.randn(b, 174, device=device),
            [],
        )
        step = lambda batch, state=state, norm=norm, dtype=dtype: train_step(state, batch, cfg=cfg, norm=norm, dtype=dtype)
        inputs = {"synthetic": [fake] * (warmup + steps)}
        if data:
            inputs["real"] = _real_batches(cfg, env, device, warmup + steps)
        for name, batches in inputs.items():
            rate = _timed(step, batches, warmup, b * env.world_size)
            if env.is_main:
                print(json.dumps({"config": item, "input": name, "gpus": env.world_size, "clips_per_s": rate}), flush=True)
    dist.shutdown()


def _timed(step, batches, warmup: int, clips_per_step: int) -> float:
    import torch

    for i, batch in enumerate(batches):
        if i == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        step(batch)
    torch.cuda.synchronize()
    return clips_per_step * (i + 1 - warmup) / (time.perf_counter() - start)


def _real_batches(cfg, env, device, count: int):
    """This rank's batches from the trainer's loader over the built shards and cache, on the device
    (through the batch pool when `experimental.batch_pool` is set, as in the trainer)."""
    from pipeline.accel.pool_loader import PoolKeeper
    from pipeline.student.data import CacheSource, ClipSource, ClipSpec, make_loader, split_shards, to_device, train_workers

    shards, _ = split_shards(cfg, "train")
    spec = ClipSpec(cfg.student.num_frames, cfg.student.image_size, cfg.train.batch_size, train=True)
    source = ClipSource(shards, spec, env.rank, env.world_size, count, CacheSource(cfg.paths.teacher_cache, "train"), {})
    keeper = PoolKeeper() if cfg.experimental.batch_pool else None
    try:
        for b in make_loader(source, workers=train_workers(cfg, env), device=device, keeper=keeper):
            yield to_device(b, device)
    finally:
        if keeper is not None:
            keeper.close()


def _build_data(work: Path, videos: int, frames: int) -> Path:
    """JPEG shards and a teacher cache under `work`; returns the config file that points at them."""
    from bench.jpeg_shards import build
    from pipeline.config import dump
    from pipeline.teacher import run as teacher_run

    cfg = build(
        work / "ssv2",
        work / "run",
        videos,
        frames,
        frames,
        ["teacher.model=clip-tiny", "teacher.pretrained=random", "shards.videos_per_shard=64", "teacher.progress_every_s=1000"],
    )
    teacher_run.run(cfg)
    path = work / "config.yaml"
    path.write_text(dump(cfg))
    return path


def main() -> None:
    """Run the worker under torchrun for each GPU count and print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--configs", nargs="+", default=["mobilevit_xxs:8:64", "mobilevit_xxs:16:64", "tsm_r50:8:32", "tsm_r50:16:16"]
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--real-loader", action="store_true", help="also time the trainer's loader over JPEG shards and a cache")
    parser.add_argument("--videos", type=int, default=4096, help="--real-loader: videos to build")
    parser.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.configs, args.steps, args.warmup, args.data)
        return
    data = []
    if args.real_loader:
        frames = max(int(c.split(":")[1]) for c in args.configs)
        data = ["--data", str(_build_data(Path(tempfile.mkdtemp(prefix="ddp_bench_")), args.videos, frames))]
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
    rates: dict[tuple[str, int], float] = {}
    for gpus in args.gpus:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={gpus}",
            "--master_port=29561",
            "-m",
            "bench.ddp_bench",
            "--worker",
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--configs",
            *args.configs,
            *data,
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"torchrun with {gpus} GPU(s) failed:\n{out.stderr[-3000:]}")
        for line in out.stdout.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                rates[(record["config"], record["input"], record["gpus"])] = record["clips_per_s"]
    base, top = min(args.gpus), max(args.gpus)
    inputs = ["synthetic", "real"] if args.real_loader else ["synthetic"]
    print(f"\n| model:frames:batch per GPU | input | {base} GPU clips/s | {top} GPUs clips/s | scaling |")
    print("| --- | --- | --- | --- | --- |")
    records = []
    for item in args.configs:
        for name in inputs:
            one, many = rates[(item, name, base)], rates[(item, name, top)]
            print(f"| {item} | {name} | {one:.1f} | {many:.1f} | {many / one:.2f}x |")
            records.append({"config": item, "input": name, "base": base, "top": top, "one": one, "many": many})
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
