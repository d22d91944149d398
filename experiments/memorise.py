"""Can a student memorise a handful of random clips? A check that its gradients reach every layer.

    python -m experiments.memorise --arch mobilevit_xxs --temporal attention_pos [--clips 32 --steps 150]

Builds the student as `make train-student` does (pipeline.yaml plus the given overrides, random
weights, no dropout), then trains it with AdamW on `--clips` clips of Gaussian noise with random
labels, 8 at a time, and logs the loss and the top-1 over all clips (eval mode) as it goes. A
student that cannot reach 1.0 here has a broken path; one that reaches it quickly but does not fit
real training clips lacks something else (docs/frame_flexible.md, the MobileViT probe).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline import config
from pipeline.models import build_student
from pipeline.runtime.progress import setup_logging
from pipeline.student.metrics import topk_accuracy

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


def memorise(student: torch.nn.Module, *, clips: torch.Tensor, labels: torch.Tensor, steps: int, lr: float) -> float:
    """Train `student` on (clips, labels) in batches of 8 for `steps` steps; the final top-1 over all clips."""
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=1e-4)
    start, top1 = time.monotonic(), 0.0
    for step in range(steps + 1):
        batch = torch.randperm(len(clips))[:8]
        loss = F.cross_entropy(student(clips[batch]).logits, labels[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps:
            top1 = _top1(student, clips=clips, labels=labels)
            log.info(
                "step %d/%d: loss %.3f, top-1 over all clips %.2f (%.0f s)",
                step,
                steps,
                loss.item(),
                top1,
                time.monotonic() - start,
            )
    return top1


def _top1(student: torch.nn.Module, *, clips: torch.Tensor, labels: torch.Tensor) -> float:
    student.eval()
    with torch.no_grad():
        top1, _ = topk_accuracy(student(clips).logits, labels)
    student.train()
    return top1.item()


def main() -> None:
    """Parse the options, build the student, memorise, summarise."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="mobilevit_xxs")
    p.add_argument("--temporal", default=None, help="mobilevit_xxs only: attention, attention_pos or shift")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    setup_logging()
    torch.manual_seed(args.seed)
    cfg = config.load(
        REPO / "pipeline.yaml",
        [
            f"student.arch={args.arch}",
            *([f"student.temporal={args.temporal}"] if args.temporal else []),
            "student.dropout=0",
            "student.image_size=64",
        ],
    )
    student = build_student(cfg.student, 28)
    clips = torch.randn(args.clips, cfg.student.num_frames, 3, 64, 64)
    labels = torch.randint(0, 28, (args.clips,))
    top1 = memorise(student, clips=clips, labels=labels, steps=args.steps, lr=args.lr)
    log.info(
        "%s (temporal: %s) memorised %.0f%% of %d noise clips with random labels in %d steps at lr %g.",
        args.arch,
        args.temporal or "its own",
        100 * top1,
        args.clips,
        args.steps,
        args.lr,
    )


if __name__ == "__main__":
    main()
