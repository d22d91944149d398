"""The order-aware MobileViT head against the seeds' head on time-reversed classes (CPU, seconds).

    python -m experiments.order_heads [--seeds 0 1 2 3 4] [--steps 600]

The synthetic set's depth pair ("towards the camera" / "away from the camera": the object grows or
shrinks) is rendered without ffmpeg; each video is also shown reversed, with the other label, in
training and in validation, so order is the only cue that holds. The MobileViT-XXS encoder stays
frozen at its seeded random weights (its pooled per-frame features see the object's size) and only
the temporal head trains (AdamW, full batch). The seeds' head gives a video and its reversal the
same logits, so it is right on exactly half of the validation clips; a head with temporal positions
can learn the direction. Prints a Markdown table (per seed, mean and spread).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import StudentConfig
from pipeline.models import build_student
from pipeline.ssv2.synthetic import PAIRS, SyntheticVideo, render

log = logging.getLogger(__name__)

FRAMES, SIZE = 4, 64


def _clips(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` depth-pair videos, alternating classes: uint8 clips [N, T, 3, S, S] and labels."""
    towards, away, motion = PAIRS[2]
    clips, labels = [], []
    for i in range(count):
        video = SyntheticVideo(str(i), towards if i % 2 == 0 else away, "train", seed * 10_000 + i, motion, i % 2 == 0)
        frames = render(video, 12, 24)
        picks = np.linspace(0, len(frames) - 1, FRAMES).round().astype(int)
        side = frames.shape[1]
        left = (frames.shape[2] - side) // 2
        square = torch.from_numpy(frames[picks, :, left : left + side]).permute(0, 3, 1, 2).float()
        clips.append(F.interpolate(square, size=(SIZE, SIZE), mode="bilinear", antialias=True).round().clamp(0, 255))
        labels.append(i % 2)
    return torch.stack(clips).to(torch.uint8), torch.tensor(labels)


def _with_reversals(clips: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([clips, clips.flip(1)]), torch.cat([labels, 1 - labels])


def _features(model, clips: torch.Tensor) -> torch.Tensor:
    """The frozen encoder's per-frame features [N, T, 320]."""
    mean = torch.tensor(model.input_mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(model.input_std).view(1, 3, 1, 1) * 255
    with torch.no_grad():
        flat = (clips.flatten(0, 1).float() - mean) / std
        return model.encoder(flat).view(clips.shape[0], clips.shape[1], -1)


def reversal_accuracy(temporal: str, seed: int, *, steps: int = 600) -> tuple[float, float]:
    """(train accuracy, accuracy on validation videos and their reversals) of the head alone."""
    torch.manual_seed(seed)
    cfg = dataclasses.replace(StudentConfig(), arch="mobilevit_xxs", temporal=temporal, dropout=0.0, image_size=SIZE)
    model = build_student(cfg, 2).eval()
    # every video also reversed, with the other label: order is then the only cue that holds
    train_clips, train_labels = _with_reversals(*_clips(96, seed))
    val_clips, val_labels = _with_reversals(*_clips(32, seed + 100))
    train, val = _features(model, train_clips), _features(model, val_clips)
    scale = train.std(dim=(0, 1), keepdim=True) + 1e-6  # the random encoder's features, brought to unit scale
    train, val = train / scale, val / scale
    head = model.head.train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = F.cross_entropy(head(train).logits, train_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    with torch.no_grad():
        fit = (head(train).logits.argmax(1) == train_labels).float().mean().item()
        held = (head(val).logits.argmax(1) == val_labels).float().mean().item()
    return fit, held


def main() -> None:
    """Both heads over the given seeds; one Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = {}
    for temporal in ("attention", "attention_pos"):
        rows[temporal] = [reversal_accuracy(temporal, seed, steps=args.steps) for seed in args.seeds]
        log.info("%s done", temporal)
    lines = [
        "| head | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | spread (std) | train accuracy (mean) |",
        "| --- |" + " --- |" * (len(args.seeds) + 3),
    ]
    for temporal, results in rows.items():
        held = [h for _, h in results]
        lines.append(
            f"| {temporal} | "
            + " | ".join(f"{h:.3f}" for h in held)
            + f" | {np.mean(held):.3f} | {np.std(held):.3f} | {np.mean([f for f, _ in results]):.3f} |"
        )
    log.info("\n%s", "\n".join(lines))


if __name__ == "__main__":
    main()
