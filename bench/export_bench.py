"""The exported student's latency at batch 1: onnxruntime on the CPU (one thread and all) and PyTorch
on the GPU, per frame count, for both students (random weights, image 224), with each exported
file checked against PyTorch on the way (`pipeline.student.export`, what `make export` runs).

    python -m bench.export_bench [--configs mobilevit_xxs tsm_r50 tsm_r50:4,8,16] [--runs 8]

A config `arch:c1,c2,...` is a frame-flexible (FFN) student with those trained counts.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch

from pipeline import config
from pipeline.models import build_student
from pipeline.student.export import export_count, latency

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    """Export and time every configuration at every frame count; print one Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["mobilevit_xxs", "tsm_r50", "tsm_r50:4,8,16"])
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=8, help="timed batch-1 runs per engine (median)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="export_bench_"))
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"\n{gpu}; image {args.size}; median of {args.runs} batch-1 runs; random weights\n")
    print(
        "| model | frames | max abs diff ONNX / torch.export | onnxruntime CPU 1 thread ms | onnxruntime CPU all threads ms "
        "| PyTorch GPU bf16 ms | ONNX MB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for spec in args.configs:
        arch, _, counts = spec.partition(":")
        trained = sorted(int(c) for c in counts.split(",")) if counts else None
        cfg = config.load(REPO / "pipeline.yaml", [f"student.arch={arch}", f"student.image_size={args.size}"])
        torch.manual_seed(0)
        student = build_student(cfg.student, 174, trained).eval()
        for frames in args.frames:
            clips = torch.randint(0, 256, (2, frames, 3, args.size, args.size), dtype=torch.uint8)
            done = export_count(student, frames=frames, size=args.size, out=work / spec.replace(":", "_"), check_clips=clips)
            t = latency(student, done.onnx, frames=frames, size=args.size, runs=args.runs)
            gpu_ms = f"{t['torch_gpu']:.2f}" if t["torch_gpu"] is not None else "-"
            print(
                f"| {spec} | {frames} | {done.onnx_diff:.1e} / {done.program_diff:.1e} | {t['onnx_cpu_1_thread']:.1f} "
                f"| {t['onnx_cpu_all_threads']:.1f} ({t['cpu_threads']}) | {gpu_ms} | {done.onnx.stat().st_size / 2**20:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
