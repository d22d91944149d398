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
- `width`: the head at each `teacher_head.temporal_width` (pipeline.yaml's is 256; the proxy world
  fitted 128 until the probe showed what it cost).

Each prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import zarr

from pipeline import config
from pipeline.runtime.progress import setup_logging
from pipeline.ssv2 import proxy
from pipeline.teacher import heads as H
from pipeline.teacher.head_run import read_split

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


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


@dataclasses.dataclass
class Clips:
    """The probe's data: labelled training clips, validation, and unlabelled clips with their true classes."""

    x_train: torch.Tensor
    y_train: np.ndarray
    x_val: torch.Tensor
    y_val: np.ndarray
    x_unl: torch.Tensor
    y_unl: np.ndarray


def _clips(base: Path) -> tuple[Clips, int]:
    """The base's cached clips (every view, as the head stage reads them), and the number of classes."""
    cfg = config.load([REPO / "pipeline.yaml"], [f"paths.run_dir={base}"])
    root = zarr.open_group(str(cfg.paths.teacher_cache), mode="r")
    names = list(root.attrs["class_names"])
    train, val, unl = (read_split(cfg, root, s, pairs={}) for s in ("train", "validation", "test"))
    ids = unl.per_view(root["test"]["ids"][:][unl.rows])
    x = lambda split: split.features.float()  # noqa: E731
    return Clips(x(train), train.targets, x(val), val.targets, x(unl), _true_classes(ids, names)), len(names)


Fit = Callable[..., torch.nn.Module]  # (features, labels, width=...) -> a fitted head


def _scores(head: torch.nn.Module, clips: Clips) -> tuple[np.ndarray, float, float]:
    """The head's logits on the unlabelled clips, its validation top-1 and its unlabelled top-1."""
    cpu = torch.device("cpu")
    logits = H.predict(head, clips.x_unl, device=cpu)
    return logits, H.top_k(H.predict(head, clips.x_val, device=cpu), clips.y_val, 1), H.top_k(logits, clips.y_unl, 1)


def self_train(clips: Clips, fit: Fit, *, rounds: int, keep: list[float]) -> list[str]:
    """The table's rows: the head fitted on the labelled clips, then refitted on its confident guesses, per round."""
    unl_logits, val, unl = _scores(fit(clips.x_train, clips.y_train), clips)
    rows = [f"| labelled clips alone ({len(clips.y_train)}) | - | - | {val:.3f} | {unl:.3f} |"]
    for rnd in range(1, rounds + 1):
        for share in keep:
            kept, guess = _confident(unl_logits, share)
            x, y = torch.cat([clips.x_train, clips.x_unl[kept]]), np.concatenate([clips.y_train, guess[kept]])
            logits, val, unl = _scores(fit(x, y), clips)
            right = (guess[kept] == clips.y_unl[kept]).mean()
            rows.append(f"| round {rnd}, keep {share:g} | {int(kept.sum())} | {right:.3f} | {val:.3f} | {unl:.3f} |")
            log.info("round %d keep %g: validation %.3f", rnd, share, val)
        unl_logits = logits  # the next round's guesses come from the last refit
    return rows


def widths(clips: Clips, fit: Fit, *, sizes: list[int]) -> list[str]:
    """The table's rows: the head fitted on the labelled clips at each temporal width."""
    rows = []
    for width in sizes:
        _, val, unl = _scores(fit(clips.x_train, clips.y_train, width=width), clips)
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
    cfg = config.load([REPO / "pipeline.yaml"], []).teacher_head
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
