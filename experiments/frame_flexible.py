"""Frame flexibility and order, measured on the synthetic set (CPU).

    python -m experiments.frame_flexible tfd [--counts 4 8 16] [--videos 300] [--seeds 0 1 2] [--epochs 4] [--work DIR]
    python -m experiments.frame_flexible order [--videos 300] [--seeds 0 1 2] [--epochs 6] [--work DIR]

In pieces (data made where ffmpeg is, seeds trained side by side elsewhere, one table at the end):
`--prepare-only --work DIR`, then `--work DIR --seeds S [--only CONDITION]` for each seed (each
writes results-<which>[-counts]-seedS[-condition].json in DIR), then `--tabulate --work DIR`.

`tfd`: temporal frequency deviation. tsm_tiny (64 px) trained at 16 frames against FFN-trained at
4, 8 and 16 (`train.frame_counts=[4, 8, 16]`, lambda 1), each vanilla (CE alone) and distilled from
the stand-in teacher's temporal head (centre-view cache, 8 teacher frames); every student is
evaluated at 4, 8 and 16 frames. `order`: MobileViT-XXS (64 px, 8 frames, vanilla) with the seeds'
attention head, the attention head with temporal positions, and the temporal shift. Same budget
(epochs, batch, AdamW lr 1e-3, data order per seed) within each table. Prints Markdown tables of
validation top-1, mean and spread (population standard deviation) over seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline import config
from pipeline.runtime.progress import setup_logging
from pipeline.shards import build as shards
from pipeline.ssv2 import synthetic
from pipeline.student import train
from pipeline.teacher import head_run
from pipeline.teacher import run as teacher_run

log = logging.getLogger("experiments.frame_flexible")
REPO = Path(__file__).resolve().parents[1]
DATA = (
    "shards.videos_per_shard=16",
    "shards.short_side=96",  # students see 64 px; smaller shards travel to a GPU machine
    "teacher.model=stand-in",
    "teacher.num_frames=8",
    "teacher.num_workers=1",
    "teacher.views=1",
    "teacher_head.weight_decays=[0.0001, 0.01]",
    "teacher_head.min_steps=300",
    "teacher_head.temporal_width=64",
)
TRAIN = (
    "student.image_size=64",
    "student.dropout=0",
    "train.batch_size=8",
    "train.num_workers=2",
    "train.optimizer=adamw",
    "train.lr=0.001",
    "train.lr_batch=0",  # for this batch of 8, as given
    "train.weight_decay=0.0001",
    "train.log_every_steps=1000",
    "loss.teacher_head=temporal",
)


def tfd_conditions(counts: list[int]) -> dict[str, tuple[str, ...]]:
    """Plain training at the highest count against FFN at all of them, each vanilla and distilled."""
    top, shown = max(counts), "/".join(str(c) for c in counts)
    plain, ffn = (f"student.num_frames={top}",), (f"student.num_frames={top}", f"train.frame_counts={counts}")
    return {
        f"plain {top}, vanilla": (*plain, "loss.mode=vanilla"),
        f"FFN {shown}, vanilla": (*ffn, "loss.mode=vanilla"),
        f"plain {top}, distilled": plain,
        f"FFN {shown}, distilled": ffn,
    }


ORDER = {
    f"mobilevit_xxs, {t}": ("student.arch=mobilevit_xxs", f"student.temporal={t}", "student.num_frames=8", "loss.mode=vanilla")
    for t in ("attention", "attention_pos", "shift")
}


def make_cfg(root: Path, run_dir: Path, *extra: str) -> config.Config:
    """pipeline.yaml + configs/smoke.yaml with this experiment's settings."""
    files = [REPO / "pipeline.yaml", REPO / "configs" / "smoke.yaml"]
    return config.load(files, [f"paths.ssv2_root={root}", f"paths.run_dir={run_dir}", *DATA, *TRAIN, *extra])


def prepare(work: Path, videos: int, *, teacher: bool) -> Path:
    """The data set, its shards and (for distillation) the stand-in cache and heads, in work/base."""
    root = work / "ssv2"
    if not (root / "labels" / "labels.json").exists():
        synthetic.generate(root, config.SyntheticConfig(num_videos=videos))
    cfg = make_cfg(root, work / "base", "student.num_frames=16")
    shards.run(cfg)
    if teacher:
        teacher_run.run(cfg)
        head_run.run(cfg)
    return root


def train_one(work: Path, root: Path, name: str, settings: tuple, *, seed: int, epochs: int, counts: list[int]) -> dict:
    """One student in its own folder, sharing the base shards and cache; top-1 per evaluated count."""
    run_dir = work / f"{_slug(name)}-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    for shared in ("shards", "teacher_cache.zarr"):
        link, target = run_dir / shared, work / "base" / shared
        if not link.exists() and target.exists():
            link.symlink_to(target)
    cfg = make_cfg(root, run_dir, *settings, f"train.seed={seed}", f"train.epochs={epochs}", f"train.eval_frame_counts={counts}")
    summary = train.run(cfg)
    history = [h["val"]["top1"] for h in summary.progress.history]
    return {"name": name, "seed": seed, "best": max(history), "counts": {c: r.top1 for c, r in summary.frame_counts.items()}}


def table(results: list[dict], names: list[str], counts: list[int]) -> str:
    """Mean ± spread over seeds of top-1 at each evaluated count (final model) and the best at the trained count."""
    head = " | ".join(f"top-1 at {c} frames" for c in counts)
    lines = [f"| student | {head} | best during training | seeds |", "|" + " --- |" * (len(counts) + 3)]
    for name in names:
        runs = [r for r in results if r["name"] == name]
        cells = []
        for c in counts:
            values = [r["counts"][c] for r in runs]
            cells.append(f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}")
        best = [r["best"] for r in runs]
        lines.append(
            f"| {name} | {' | '.join(cells)} | {statistics.mean(best):.3f} ± {statistics.pstdev(best):.3f} | {len(runs)} |"
        )
    return "\n".join(lines)


def run_here(work: Path, root: Path, chosen: dict, *, tag: str, seeds: list[int], epochs: int, counts: list[int]) -> None:
    """Train the `chosen` conditions for every seed in this process; one results file per seed (and condition, when one)."""
    suffix = f"-{_slug(next(iter(chosen)))}" if len(chosen) == 1 else ""
    for seed in seeds:
        done = []
        for name, settings in chosen.items():
            done.append(train_one(work, root, name, settings, seed=seed, epochs=epochs, counts=counts))
            log.info("%s", done[-1])
        (work / f"results-{tag}-seed{seed}{suffix}.json").write_text(json.dumps(done, indent=1))


def collected(work: Path, tag: str, conditions: dict) -> list[dict]:
    """Every result of these conditions written in `work`, the newest per (condition, seed)."""
    newest: dict[tuple[str, int], dict] = {}
    for f in sorted(work.glob(f"results-{tag}-seed*.json"), key=lambda f: f.stat().st_mtime):
        for r in json.loads(f.read_text()):
            if r["name"] in conditions:
                r["counts"] = {int(c): top1 for c, top1 in r["counts"].items()}  # JSON keys are strings
                newest[(r["name"], r["seed"])] = r
    return list(newest.values())


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("/", "-").replace(",", "")


def side_by_side(args: argparse.Namespace, work: Path, conditions: dict, tag: str, epochs: int) -> None:
    """Each (condition, seed) in a process of its own (`--only`), `args.parallel` at once; then the table."""
    pending = [(name, seed) for seed in args.seeds for name in conditions]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < args.parallel:
            name, seed = pending.pop(0)
            command = [
                sys.executable,
                "-m",
                "experiments.frame_flexible",
                args.which,
                "--work",
                str(work),
                "--seeds",
                str(seed),
                "--epochs",
                str(epochs),
                "--only",
                name,
                "--no-prepare",
                "--videos",
                str(args.videos),
                "--counts",
                *map(str, args.counts),
            ]
            running.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
        time.sleep(1)
        for p in [p for p in running if p.poll() is not None]:
            running.remove(p)
            if p.returncode:
                log.error("%s exited with %d", " ".join(p.args[3:]), p.returncode)
    log.info("all %d runs of %s ended", len(args.seeds) * len(conditions), tag)


def main() -> None:
    """Run one of the two comparisons for every seed and print its table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["tfd", "order"])
    parser.add_argument("--videos", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: 4 (tfd), 6 (order)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--counts", type=int, nargs="+", default=[4, 8, 16], help="tfd: the frame counts (FFN trains all)")
    parser.add_argument("--prepare-only", action="store_true", help="make the data, shards and cache, then stop")
    parser.add_argument("--tabulate", action="store_true", help="only print the table of the results in --work")
    parser.add_argument(
        "--parallel", type=int, default=0, metavar="N", help="run each (condition, seed) in its own process, N at once"
    )
    parser.add_argument("--no-prepare", action="store_true", help="use the data, shards and cache already in --work")
    parser.add_argument("--only", default=None, help="train this one condition (its name in the table)")
    args = parser.parse_args()
    setup_logging()
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    work = (args.work or Path(tempfile.mkdtemp(prefix=f"frame_flexible-{args.which}-"))).resolve()
    counts = sorted(args.counts)
    conditions, counts = (tfd_conditions(counts), counts) if args.which == "tfd" else (ORDER, [8])
    tag = f"tfd-{'-'.join(map(str, counts))}" if args.which == "tfd" else args.which
    epochs = args.epochs or (4 if args.which == "tfd" else 6)
    if not args.tabulate:
        # processes of a --parallel run use what their parent prepared: preparing again would
        # rewrite the cache's records while their siblings train from it
        root = work / "ssv2" if args.no_prepare else prepare(work, args.videos, teacher=args.which == "tfd")
        if args.prepare_only:
            return
        if args.only is not None and args.only not in conditions:
            parser.error(f"--only {args.only!r}: not one of {list(conditions)}")
        if args.parallel:
            side_by_side(args, work, conditions, tag, epochs)
        else:
            chosen = {args.only: conditions[args.only]} if args.only else conditions
            run_here(work, root, chosen, tag=tag, seeds=args.seeds, epochs=epochs, counts=counts)
    results = collected(work, tag, conditions)
    seeds = sorted({r["seed"] for r in results})
    print(f"\n{args.videos} synthetic videos (2 time-reversed pairs), {epochs} epochs, seeds {seeds}\n")
    print(table(results, [n for n in conditions if any(r["name"] == n for r in results)], counts))


if __name__ == "__main__":
    main()
