"""DDP scaling of the student step: clips/s on 1 GPU and on N GPUs of one host, in one run.

    python -m bench.ddp_bench [--gpus 1 2] [--configs mobilevit_xxs:8:64 tsm_r50:8:32]

Each count runs under torchrun (NCCL, NVLink multicast off), through the trainer's own process-group
set-up (`pipeline.dist`) and step, on synthetic input kept on each GPU; clips/s counts all ranks.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def worker(configs: list[str], steps: int, warmup: int) -> None:
    """One rank: time every configuration, rank 0 prints one JSON line per configuration."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from pipeline import config, dist
    from pipeline.device import autocast_dtype
    from pipeline.frames import IMAGENET_MEAN, IMAGENET_STD, normalizer
    from pipeline.models import build_student
    from pipeline.train import _cosine, make_optimizer, prepare_model, train_step
    from pipeline.train_data import ClipBatch

    env = dist.from_environment()
    device = torch.device("cuda", env.local_rank)
    torch.cuda.set_device(device)
    dist.init(env, device)
    cfg = config.Config()
    for item in configs:
        arch, frames, batch = item.split(":")
        cfg.student.arch, cfg.student.num_frames, cfg.train.batch_size = arch, int(frames), int(batch)
        torch.manual_seed(0)
        model = prepare_model(build_student(cfg.student, 174), cfg, device)
        wrapped = DDP(model, device_ids=[device.index]) if env.world_size > 1 else model
        optimizer = make_optimizer(cfg, model)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(0, 10_000))
        scaler = torch.amp.GradScaler(enabled=False)
        norm, dtype = normalizer(IMAGENET_MEAN, IMAGENET_STD, device), autocast_dtype(device, "bf16")
        b, t = int(batch), int(frames)
        pixels = torch.randint(0, 256, (b, t, 224, 224, 3), dtype=torch.uint8, device=device).movedim(-1, -3)
        fake = ClipBatch(pixels,  # channels last in memory, like the loader's batches
                         torch.randint(0, 174, (b,), device=device), torch.randn(b, 512, device=device),
                         torch.randn(b, 174, device=device), [])
        for i in range(warmup + steps):
            if i == warmup:
                torch.cuda.synchronize()
                start = time.perf_counter()
            train_step(wrapped, model, optimizer, scheduler, scaler, norm, dtype, cfg, fake)
        torch.cuda.synchronize()
        rate = b * steps * env.world_size / (time.perf_counter() - start)
        if env.is_main:
            print(json.dumps({"config": item, "gpus": env.world_size, "clips_per_s": rate}), flush=True)
    dist.shutdown()


def main() -> None:
    """Run the worker under torchrun for each GPU count and print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--configs", nargs="+", default=["mobilevit_xxs:8:64", "mobilevit_xxs:16:64", "tsm_r50:8:32", "tsm_r50:16:16"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.configs, args.steps, args.warmup)
        return
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
    rates: dict[tuple[str, int], float] = {}
    for gpus in args.gpus:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", "--master_port=29561",
               "-m", "bench.ddp_bench", "--worker", "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--configs", *args.configs]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"torchrun with {gpus} GPU(s) failed:\n{out.stderr[-3000:]}")
        for line in out.stdout.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                rates[(record["config"], record["gpus"])] = record["clips_per_s"]
    base, top = min(args.gpus), max(args.gpus)
    print(f"\n| model:frames:batch per GPU | {base} GPU clips/s | {top} GPUs clips/s | scaling |")
    print("| --- | --- | --- | --- |")
    for item in args.configs:
        one, many = rates[(item, base)], rates[(item, top)]
        print(f"| {item} | {one:.1f} | {many:.1f} | {many / one:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps([{"config": c, "base": base, "top": top, "one": rates[(c, base)], "many": rates[(c, top)]}
                                         for c in args.configs], indent=1))


if __name__ == "__main__":
    main()
