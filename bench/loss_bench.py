"""What the distillation issue's additions cost a training step, side by side in one run.

    python -m bench.loss_bench [--configs tsm_r50:16:16 mobilevit_xxs:16:32] [--compile]

On synthetic input kept on the device, with the trainer's own set-up and step (`build_state`,
`train_step`: bf16 autocast on CUDA, fused SGD, clipping), per student config, these rows:
- vanilla: cross-entropy alone;
- distilled: the default loss with the cached teacher feature and logits (the reference);
- + per-frame term: `loss.frame_alpha` 1 with the cached teacher frames;
- + unlabelled clips: as many unlabelled clips (label -1) as labelled ones in the batch, BatchNorm
  statistics shared (`train.unlabelled_norm: shared`) and apart (`separate`).
A row's cost is its time per clip against the reference's (a batch with unlabelled clips has twice
the clips: the figure is what each clip costs more, the goal at most 5%).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
from functools import partial
from pathlib import Path

import torch

from bench.train_bench import clips_per_s, synthetic_batch
from pipeline.config import Config, load
from pipeline.models import input_normalizer
from pipeline.runtime.device import autocast_dtype, pick_device
from pipeline.student.data import ClipBatch
from pipeline.student.train import build_state, train_step

log = logging.getLogger(__name__)
ROWS = ("vanilla", "distilled", "+ per-frame term", "+ unlabelled, shared statistics", "+ unlabelled, separate statistics")


def fake_batch(cfg: Config, device: torch.device, *, labelled: int, unlabelled: int) -> ClipBatch:
    """The benchmark's synthetic training batch with its unlabelled clips (label -1) last and teacher frames."""
    b, t = labelled + unlabelled, cfg.student.num_frames
    batch = synthetic_batch(device, clips=b, frames=t, size=cfg.student.image_size)
    batch.labels[labelled:] = -1
    return dataclasses.replace(batch, teacher_frames=torch.randn(b, t, 512, device=device))


def seconds_per_clip(cfg: Config, device: torch.device, row: str, *, warmup: int, steps: int) -> float:
    """One row's training-step seconds per clip over the timed steps."""
    cfg = copy.deepcopy(cfg)
    unlabelled = cfg.train.batch_size if "unlabelled" in row else 0
    cfg.loss.mode = "vanilla" if row == "vanilla" else "distill"
    cfg.loss.frame_alpha = 1.0 if row == "+ per-frame term" else 0.0
    cfg.train.unlabelled_splits = ["test"] if unlabelled else []  # the step's task weight and norms as in training
    cfg.train.unlabelled_norm = "separate" if "separate" in row else "shared"
    torch._dynamo.reset()  # each student compiles afresh, as a run's would
    state = build_state(cfg, device, num_classes=174, total_steps=10_000)
    norm, dtype = input_normalizer(state.model, device), autocast_dtype(device, cfg.train.precision)
    batch = fake_batch(cfg, device, labelled=cfg.train.batch_size, unlabelled=unlabelled)
    step = partial(train_step, state, cfg=cfg, norm=norm, dtype=dtype, labelled=cfg.train.batch_size)
    return 1.0 / clips_per_s(step, [batch] * (warmup + steps), warmup, device)


def main() -> None:
    """Time every row for every config; print one Markdown table."""
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = ["tsm_r50:16:16", "mobilevit_xxs:16:32"] if cuda else ["tsm_tiny:8:4"]
    parser.add_argument("--configs", nargs="+", default=default, help="arch:frames:labelled clips per batch")
    parser.add_argument("--image-size", type=int, default=224 if cuda else 64)
    parser.add_argument("--steps", type=int, default=40 if cuda else 4)
    parser.add_argument("--warmup", type=int, default=8 if cuda else 1)
    parser.add_argument("--compile", action="store_true", help="torch.compile the student (train.compile=true)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = pick_device("auto")
    cfg = load(Path(__file__).resolve().parents[1] / "pipeline.yaml", [f"student.image_size={args.image_size}"])
    cfg.train.compile = args.compile
    cfg.train.precision = cfg.train.precision if cuda else "fp32"
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    warm = args.warmup + (10 if args.compile else 0)  # compilation happens in the first steps
    print(
        f"\n{name}, {cfg.train.precision}, image {args.image_size}, {'compiled' if args.compile else 'eager'} student, "
        f"synthetic input, {args.steps} timed steps after {warm}; cost: time per clip against the distilled row\n"
    )
    print("| model | frames | labelled clips a batch | row | ms per step | ms per clip | cost per clip |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for config in args.configs:
        arch, frames, batch = config.split(":")
        cfg.student.arch, cfg.student.num_frames, cfg.train.batch_size = arch, int(frames), int(batch)
        per_clip = {row: seconds_per_clip(cfg, device, row, warmup=warm, steps=args.steps) for row in ROWS}
        for row, s in per_clip.items():
            clips = int(batch) * (2 if "unlabelled" in row else 1)
            cost = s / per_clip["distilled"] - 1
            print(f"| {arch} | {frames} | {batch} | {row} | {s * clips * 1e3:.1f} | {s * 1e3:.2f} | {cost:+.1%} |")


if __name__ == "__main__":
    main()
