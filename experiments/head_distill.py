"""The seeds' question, measured: is a student better for being distilled, and from which teacher head?

    python -m experiments.head_distill [--teacher stand-in|clip-tiny] [--videos 300] [--seeds 0 1 2] [--epochs 4] [--work DIR]

On the synthetic set (time-reversed class pairs), CPU: shards once; the teacher cache (default: the
stand-in teacher of pipeline/teacher/stand_in.py; `--teacher clip-tiny`: the real stage with the
small random-weight CLIP, whose features carry little of where the object is); the teacher heads;
then tsm_tiny trained on the same budget (epochs, batch, lr, data order per seed) as vanilla (CE
alone) and distilled from each head (the default loss: 0.5 feature MSE + 1.0 KL at T=3 + 0.1 CE).
Prints one Markdown table: validation top-1 at the trained frame count, best over epochs and at the
end, mean and spread over seeds, beside each teacher head's own validation top-1.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

from pipeline import config
from pipeline.runtime.progress import setup_logging
from pipeline.shards import build as shards
from pipeline.ssv2 import synthetic
from pipeline.student import train
from pipeline.teacher import head_run
from pipeline.teacher import run as teacher_run
from pipeline.teacher.stand_in import MODEL

log = logging.getLogger("experiments.head_distill")
REPO = Path(__file__).resolve().parents[1]

# The stages' settings for a CPU run; everything else is pipeline.yaml's.
DATA = ("shards.videos_per_shard=16", "teacher.num_frames=8", "teacher.num_workers=1", "teacher.views=1")
HEADS = ("teacher_head.weight_decays=[0.0001, 0.01]", "teacher_head.min_steps=300", "teacher_head.temporal_width=64")
STUDENT = (
    "student.arch=tsm_tiny",
    "student.image_size=64",
    "student.num_frames=8",
    "student.dropout=0",
    "train.batch_size=8",
    "train.num_workers=2",
    "train.optimizer=adamw",
    "train.lr=0.001",
    "train.lr_batch=0",  # for this batch of 8, as given
    "train.weight_decay=0.0001",
    "train.eval_frame_counts=[8]",
    "train.log_every_steps=1000",
)


def make_cfg(root: Path, run_dir: Path, teacher: str, *extra: str) -> config.Config:
    """pipeline.yaml + configs/smoke.yaml with this experiment's settings."""
    files = [REPO / "pipeline.yaml", REPO / "configs" / "smoke.yaml"]
    paths = [f"paths.ssv2_root={root}", f"paths.run_dir={run_dir}", f"teacher.model={teacher}"]
    return config.load(files, [*paths, *DATA, *HEADS, *STUDENT, *extra])


def prepare(work: Path, videos: int, teacher: str) -> tuple[Path, dict]:
    """The data set, shards, teacher cache and heads, shared by every run; returns (data root, head records)."""
    root = work / "ssv2"
    if not (root / "labels" / "labels.json").exists():
        synthetic.generate(root, config.SyntheticConfig(num_videos=videos))
    cfg = make_cfg(root, work / "base", teacher)
    shards.run(cfg)
    teacher_run.run(cfg)
    return root, head_run.run(cfg).records


def train_one(work: Path, root: Path, *, teacher: str, condition: str, seed: int, epochs: int) -> dict:
    """One student: vanilla or distilled from `condition`'s head, sharing the base run's shards and cache."""
    run_dir = work / f"{condition}-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    for shared in ("shards", "teacher_cache.zarr"):
        link = run_dir / shared
        if not link.exists():
            link.symlink_to(work / "base" / shared)
    mode = ["loss.mode=vanilla"] if condition == "vanilla" else [f"loss.teacher_head={condition}"]
    cfg = make_cfg(root, run_dir, teacher, *mode, f"train.seed={seed}", f"train.epochs={epochs}")
    summary = train.run(cfg)
    history = [h["val"]["top1"] for h in summary.progress.history]
    return {"condition": condition, "seed": seed, "best_top1": max(history), "final_top1": history[-1]}


def table(results: list[dict], records: dict, conditions: list[str]) -> str:
    """Mean (spread: population standard deviation) over seeds per condition."""
    lines = [
        "| student | teacher head's validation top-1 | best validation top-1 | final validation top-1 | per seed (best) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in conditions:
        runs = [r for r in results if r["condition"] == c]
        best, final = [r["best_top1"] for r in runs], [r["final_top1"] for r in runs]
        head = "-" if c == "vanilla" else f"{records[c].get('val_top1', float('nan')):.3f}"
        lines.append(
            f"| {'vanilla (CE only)' if c == 'vanilla' else 'distilled from ' + c} | {head} | "
            f"{statistics.mean(best):.3f} ± {statistics.pstdev(best):.3f} | "
            f"{statistics.mean(final):.3f} ± {statistics.pstdev(final):.3f} | "
            f"{', '.join(f'{b:.3f}' for b in best)} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Prepare once, train every condition for every seed, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=MODEL, choices=[MODEL, "clip-tiny"])
    parser.add_argument("--videos", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--conditions", nargs="+", default=["vanilla", "zero_shot", "linear", "temporal"])
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    setup_logging()
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="head_distill-"))
    root, records = prepare(work, args.videos, args.teacher)
    results = []
    for seed in args.seeds:
        for condition in args.conditions:
            results.append(train_one(work, root, teacher=args.teacher, condition=condition, seed=seed, epochs=args.epochs))
            log.info("%s", results[-1])
    (work / "results.json").write_text(json.dumps({"results": results, "heads": records}, indent=1))
    setting = f"{args.videos} synthetic videos (2 time-reversed pairs), teacher {args.teacher}, tsm_tiny, {args.epochs} epochs"
    print(f"\n{setting}, seeds {args.seeds}\n")
    print(table(results, records, args.conditions))


if __name__ == "__main__":
    main()
