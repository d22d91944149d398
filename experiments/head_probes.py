"""Probes of the teacher head behind the proxy benchmark's unlabelled table (docs/proxy_benchmark.md).

    python -m experiments.head_probes self-training --base WORK/base-l10-u30-s96-v1-pretrained [--rounds 3]
    python -m experiments.head_probes width --base WORK/base-l10-u30-s96-v1-pretrained [--widths 128 256]

Both read a base the benchmark prepared with unlabelled videos (`@unlabelled=30`) and fit the
temporal head on the labelled clips' cached frame features (pipeline.yaml's `teacher_head`, one
seed), scoring it on validation and on the unlabelled clips (the proxy ids carry their class,
digits 2-3 indexing `proxy.TEMPLATES`: a check the fitting never sees).

- `self-training`: does the head label unlabelled videos better after training on its own
  confident guesses? Per round it refits on the labelled clips plus, per predicted class, the
  `--keep` share of unlabelled clips it is surest of, labelled with its guesses.
- `width`: the head at each `teacher_head.temporal_width` (the proxy world fits 128 to save CPU
  time; pipeline.yaml's is 256).

Each prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from pipeline import config
from pipeline.runtime.progress import setup_logging
from pipeline.shards.plan import row_labels
from pipeline.ssv2 import proxy
from pipeline.teacher import heads as H

log = logging.getLogger(__name__)


def _split(root: zarr.Group, base: Path, split: str) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """A split's centre-view frame features [n, F, D], its labels (-1 where none) and ids."""
    rows = np.flatnonzero(root[split]["valid"][:])
    features = torch.from_numpy(np.ascontiguousarray(root[split]["frame_features"][:][rows][:, 0])).float()
    return features, row_labels(base / "shards", split)[rows], root[split]["ids"][:][rows]


def _true_classes(ids: np.ndarray, class_names: list[str]) -> np.ndarray:
    """The class of each proxy test video, read from its id (split digit, two class digits, index)."""
    return np.array([class_names.index(proxy.TEMPLATES[int(str(i)[1:3])]) for i in ids])


def _confident(logits: np.ndarray, keep: float) -> tuple[np.ndarray, np.ndarray]:
    """The rows to keep (per predicted class, the `keep` share with the highest probability) and the guesses."""
    probs = torch.from_numpy(logits).softmax(-1).numpy()
    guess, confidence = probs.argmax(1), probs.max(1)
    kept = np.zeros(len(guess), dtype=bool)
    for c in np.unique(guess):
        rows = np.flatnonzero(guess == c)
        kept[rows[np.argsort(-confidence[rows])[: max(1, round(keep * len(rows)))]]] = True
    return kept, guess


@dataclass
class Clips:
    """The probe's data: labelled training clips, validation, and unlabelled clips with their true classes."""

    x_train: torch.Tensor
    y_train: np.ndarray
    x_val: torch.Tensor
    y_val: np.ndarray
    x_unl: torch.Tensor
    y_unl: np.ndarray


def _clips(base: Path) -> tuple[Clips, int]:
    """The base's cached clips, and the number of classes."""
    root = zarr.open_group(str(base / "teacher_cache.zarr"), mode="r")
    names = list(root.attrs["class_names"])
    (x_train, y_train, _), (x_val, y_val, _), (x_unl, _, ids) = (_split(root, base, s) for s in ("train", "validation", "test"))
    return Clips(x_train, y_train, x_val, y_val, x_unl, _true_classes(ids, names)), len(names)


Fit = Callable[[torch.Tensor, np.ndarray], torch.nn.Module]  # labelled rows -> a fitted head


def self_train(clips: Clips, fit: Fit, *, rounds: int, keep: list[float]) -> list[str]:
    """The table's rows: the head fitted on the labelled clips, then refitted on its confident guesses, per round."""
    device = torch.device("cpu")

    def scores(head: torch.nn.Module) -> tuple[np.ndarray, float, float]:
        logits = H.predict(head, clips.x_unl, device=device)
        val = H.top_k(H.predict(head, clips.x_val, device=device), clips.y_val, 1)
        return logits, val, H.top_k(logits, clips.y_unl, 1)

    unl_logits, val, unl = scores(fit(clips.x_train, clips.y_train))
    rows = [f"| labelled clips alone ({len(clips.y_train)}) | - | - | {val:.3f} | {unl:.3f} |"]
    for rnd in range(1, rounds + 1):
        for share in keep:
            kept, guess = _confident(unl_logits, share)
            x, y = torch.cat([clips.x_train, clips.x_unl[kept]]), np.concatenate([clips.y_train, guess[kept]])
            logits, val, unl = scores(fit(x, y))
            right = (guess[kept] == clips.y_unl[kept]).mean()
            rows.append(f"| round {rnd}, keep {share:g} | {int(kept.sum())} | {right:.3f} | {val:.3f} | {unl:.3f} |")
            log.info("round %d keep %g: validation %.3f", rnd, share, val)
        unl_logits = logits  # the next round's guesses come from the last refit
    return rows


def widths(clips: Clips, fit: Callable[..., torch.nn.Module], *, sizes: list[int]) -> list[str]:
    """The table's rows: the head fitted on the labelled clips at each temporal width."""
    cpu = torch.device("cpu")
    rows = []
    for width in sizes:
        head = fit(clips.x_train, clips.y_train, width=width)
        val = H.top_k(H.predict(head, clips.x_val, device=cpu), clips.y_val, 1)
        unl = H.top_k(H.predict(head, clips.x_unl, device=cpu), clips.y_unl, 1)
        rows.append(f"| {width} | {val:.3f} | {unl:.3f} |")
        log.info("width %d: validation %.3f", width, val)
    return rows


def main() -> None:
    """Run one probe, print its table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("probe", choices=["self-training", "width"])
    p.add_argument("--base", type=Path, required=True, help="a proxy base with unlabelled videos (teacher_cache.zarr, shards)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--keep", type=float, nargs="+", default=[0.5, 1.0], help="shares of unlabelled clips kept per class")
    p.add_argument("--widths", type=int, nargs="+", default=[128, 256])
    p.add_argument("--weight-decay", type=float, default=0.01)
    args = p.parse_args()
    setup_logging()
    cfg = config.load([Path(__file__).resolve().parents[1] / "pipeline.yaml"], []).teacher_head
    clips, classes = _clips(args.base)

    def fit(x: torch.Tensor, y: np.ndarray, width: int = cfg.temporal_width) -> torch.nn.Module:
        data, settings = H.FitData(x, torch.from_numpy(y)), dataclasses.replace(cfg, temporal_width=width)
        return H.fit(
            "temporal",
            data,
            num_classes=classes,
            cfg=settings,
            weight_decay=args.weight_decay,
            seed=0,
            device=torch.device("cpu"),
        )

    if args.probe == "width":
        head_row = "| temporal width | validation top-1 | unlabelled top-1 |\n| --- | --- | --- |"
        rows = widths(clips, fit, sizes=args.widths)
    else:
        head_row = "| temporal head | unlabelled clips kept | their guesses right | validation top-1 | unlabelled top-1 |\n"
        head_row += "| --- | --- | --- | --- | --- |"
        rows = self_train(clips, fit, rounds=args.rounds, keep=args.keep)
    print("\n".join([head_row, *rows]))


if __name__ == "__main__":
    main()
