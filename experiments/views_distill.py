"""Consistent views, measured: the student distilled on the teacher's own views against the centre view.

    python -m experiments.views_distill [--videos 300] [--views 4] [--seeds 0 1 2] [--epochs 4] [--work DIR]

On the synthetic set (time-reversed class pairs), CPU, the stand-in teacher (pipeline/teacher/
stand_in.py) and its temporal head: shards once; then, with flip off and on, three students of the
same budget (epochs, batch, lr, data order per seed): vanilla (CE alone); distilled from the
centre-view cache (teacher.views=1: the student trains on its own random frames, crops and flips,
the teacher's outputs are for the centre view); distilled from a cache of K views per training
video that the student replays (consistent: the teacher's outputs are for exactly its clip). The
loss is the default (0.5 feature MSE + 1.0 KL at T=3 + 0.1 CE). Prints one Markdown table of
validation top-1 (best over epochs and final), mean and spread over seeds, with each teacher head's
own validation top-1.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

from experiments.head_distill import HEADS, REPO, STUDENT
from pipeline import config
from pipeline.runtime.progress import setup_logging
from pipeline.shards import build as shards
from pipeline.ssv2 import synthetic
from pipeline.student import train
from pipeline.teacher import head_run
from pipeline.teacher import run as teacher_run

log = logging.getLogger("experiments.views_distill")
DATA = ("shards.videos_per_shard=16", "teacher.model=stand-in", "teacher.num_frames=8", "teacher.num_workers=1")


def make_cfg(root: Path, run_dir: Path, *extra: str) -> config.Config:
    """pipeline.yaml + configs/smoke.yaml with this experiment's settings."""
    files = [REPO / "pipeline.yaml", REPO / "configs" / "smoke.yaml"]
    paths = [f"paths.ssv2_root={root}", f"paths.run_dir={run_dir}"]
    return config.load(files, [*paths, *DATA, *HEADS, *STUDENT, "loss.teacher_head=temporal", *extra])


def teacher_settings(condition: str, views: int, flip: bool) -> list[str]:
    """The cache settings of a condition (vanilla needs none)."""
    count = views if condition == "views" else 1
    return [f"teacher.views={count}", f"train.flip={str(flip).lower()}"]


def prepare_cache(work: Path, root: Path, *, views: int, flip: bool) -> tuple[Path, float]:
    """Shards (shared), the teacher cache and heads for `views`; returns (run folder, temporal head's val top-1)."""
    base = work / f"cache-views{views}-flip{int(flip)}"
    base.mkdir(parents=True, exist_ok=True)
    if not (base / "shards").exists():
        (base / "shards").symlink_to(work / "shards_run" / "shards")
    cfg = make_cfg(root, base, f"teacher.views={views}", f"train.flip={str(flip).lower()}")
    teacher_run.run(cfg)
    records = head_run.run(cfg).records
    return base, records["temporal"].get("val_top1", float("nan"))


def train_one(
    work: Path, root: Path, *, condition: str, cache: Path | None, flip: bool, views: int, seed: int, epochs: int
) -> dict:
    """One student sharing the shards (and its condition's cache)."""
    run_dir = work / f"{condition}-flip{int(flip)}-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    for shared in ("shards", "teacher_cache.zarr"):
        link, target = run_dir / shared, (cache or work / "shards_run") / shared
        if not link.exists() and target.exists():
            link.symlink_to(target.resolve())
    mode = ["loss.mode=vanilla"] if condition == "vanilla" else []
    cfg = make_cfg(
        root, run_dir, *mode, *teacher_settings(condition, views, flip), f"train.seed={seed}", f"train.epochs={epochs}"
    )
    summary = train.run(cfg)
    history = [h["val"]["top1"] for h in summary.progress.history]
    return {"condition": condition, "flip": flip, "seed": seed, "best_top1": max(history), "final_top1": history[-1]}


def table(results: list[dict], heads: dict, views: int) -> str:
    """Mean (spread: population standard deviation) over seeds per condition and flip."""
    names = {
        "vanilla": "vanilla (CE only)",
        "centre": "distilled, centre-view cache",
        "views": f"distilled, {views} replayed views",
    }
    lines = [
        "| student | flip | teacher head's validation top-1 | best validation top-1 | final validation top-1 | per seed (best) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for flip in (False, True):
        for c in ("vanilla", "centre", "views"):
            runs = [r for r in results if r["condition"] == c and r["flip"] == flip]
            if not runs:
                continue
            best, final = [r["best_top1"] for r in runs], [r["final_top1"] for r in runs]
            head = "-" if c == "vanilla" else f"{heads[(c, flip)]:.3f}"
            lines.append(
                f"| {names[c]} | {'on' if flip else 'off'} | {head} "
                f"| {statistics.mean(best):.3f} ± {statistics.pstdev(best):.3f} | "
                f"{statistics.mean(final):.3f} ± {statistics.pstdev(final):.3f} | {', '.join(f'{b:.3f}' for b in best)} |"
            )
    return "\n".join(lines)


def main() -> None:
    """Shards once, caches per (views, flip), every condition for every seed; print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=300)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--flip", type=int, nargs="+", default=[0, 1], choices=[0, 1])
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    setup_logging()
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="views_distill-"))
    root = work / "ssv2"
    if not (root / "labels" / "labels.json").exists():
        synthetic.generate(root, config.SyntheticConfig(num_videos=args.videos))
    shards.run(make_cfg(root, work / "shards_run"))
    results, heads = [], {}
    for flip in map(bool, args.flip):
        centre, heads[("centre", flip)] = prepare_cache(work, root, views=1, flip=flip)
        viewed, heads[("views", flip)] = prepare_cache(work, root, views=args.views, flip=flip)
        caches = {"vanilla": None, "centre": centre, "views": viewed}
        for seed in args.seeds:
            for condition, cache in caches.items():
                one = train_one(
                    work, root, condition=condition, cache=cache, flip=flip, views=args.views, seed=seed, epochs=args.epochs
                )
                results.append(one)
                log.info("%s", one)
    (work / "results.json").write_text(json.dumps({"results": results, "heads": {str(k): v for k, v in heads.items()}}, indent=1))
    print(
        f"\n{args.videos} synthetic videos (2 time-reversed pairs), stand-in teacher, temporal head, tsm_tiny, "
        f"{args.epochs} epochs, seeds {args.seeds}\n"
    )
    print(table(results, heads, args.views))


if __name__ == "__main__":
    main()
