"""The proxy benchmark's tables: is a student better for being distilled from the cached teacher?

    python -m experiments.proxy_benchmark TABLE [--seeds 0 1 2] [--epochs N] [--work DIR] [--parallel N]
    python -m experiments.proxy_benchmark all --work DIR          # every table, one after another

TABLE is one of: heads (vanilla against distilled from each teacher head), loss (the loss terms and
temperature), labels (10 / 40 / 160 labelled videos per class), views (1 against 8 cached views),
tfd (plain 16 frames against FFN 4/8/16, evaluated at 4 / 8 / 16), mobilevit (the three temporal
heads, vanilla and distilled), controls (the same recipe from the stand-in and from a random
teacher), student_teacher (a trained student as the teacher: issue 29's question).

Everything runs through the real stages on the proxy preset (pipeline/ssv2/proxy.py): the data set
(ffmpeg, VP9), shards, the teacher pretrained here (`make pretrain-teacher`, ClipLoss), the teacher
cache, the fitted heads, then students. What every table shares is made once in --work (`--prepare-only`
makes it and stops). A (condition, seed) run writes results-<table>-<condition>-seed<S>.json in
--work; a rerun skips runs whose result is there; `--tabulate` prints the tables of what is there.
`--parallel N` runs N (condition, seed) processes side by side (one thread each). Settings are the
constants below; every student of a table has the same budget (epochs, batch, lr, data order per seed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline import config
from pipeline.runtime.progress import setup_logging
from pipeline.shards import build as shards
from pipeline.ssv2 import synthetic
from pipeline.student import train
from pipeline.teacher import head_run, pretrain
from pipeline.teacher import run as teacher_run

log = logging.getLogger("experiments.proxy_benchmark")
REPO = Path(__file__).resolve().parents[1]

# The stages' settings on a CPU; everything else is pipeline.yaml's (the recipe under test).
DATA = (
    "synthetic.preset=proxy",
    "shards.videos_per_shard=32",
    "shards.short_side=96",
    "teacher.num_frames=8",
    "teacher.num_workers=1",
    "teacher.views=1",
    "teacher_head.weight_decays=[0.0001, 0.01]",
    "teacher_head.min_steps=300",
    "teacher_head.temporal_width=128",
)
STUDENT = (
    "student.arch=tsm_tiny",
    "student.image_size=64",
    "student.num_frames=8",
    "student.dropout=0",
    "train.batch_size=8",
    "train.num_workers=1",
    "train.optimizer=adamw",
    "train.lr=0.001",
    "train.lr_batch=0",  # for this batch of 8, as given
    "train.weight_decay=0.0001",
    "train.eval_frame_counts=[8]",
    "train.log_every_steps=100000",
    "train.checkpoint_every_steps=100000",
)
VANILLA = ("loss.mode=vanilla",)
SEEDS_RECIPE = ("loss.alpha=0.5", "loss.beta=1.0", "loss.gamma=0.1", "loss.temperature=3.0")

# Each table: conditions (name -> overrides), the frame counts evaluated, which prepared base it trains from.
TABLES: dict[str, dict] = {
    "heads": {
        "conditions": {
            "vanilla (CE only)": VANILLA,
            "distilled from zero_shot": ("loss.teacher_head=zero_shot",),
            "distilled from linear": ("loss.teacher_head=linear",),
            "distilled from temporal": ("loss.teacher_head=temporal",),
        },
    },
    "loss": {
        "conditions": {
            "seeds' weights (0.5 feature, 1.0 response, 0.1 task, T 3)": SEEDS_RECIPE,
            "task 1.0 (0.5, 1.0, 1.0, T 3)": (*SEEDS_RECIPE, "loss.gamma=1.0"),
            "feature off (0, 1.0, 0.1, T 3)": (*SEEDS_RECIPE, "loss.alpha=0"),
            "response off (0.5, 0, 0.1, T 3)": (*SEEDS_RECIPE, "loss.beta=0"),
            "feature only + task (0.5, 0, 1.0)": (*SEEDS_RECIPE, "loss.beta=0", "loss.gamma=1.0"),
            "T 1 (0.5, 1.0, 0.1)": (*SEEDS_RECIPE, "loss.temperature=1.0"),
            "T 6 (0.5, 1.0, 0.1)": (*SEEDS_RECIPE, "loss.temperature=6.0"),
            "labels replace wrong teacher targets (gate correct)": (*SEEDS_RECIPE, "loss.teacher_gate=correct"),
        },
    },
    "labels": {
        "conditions": {
            f"{n} per class, {kind}": (f"@labels={n}", *overrides)
            for n in (10, 40, 160)
            for kind, overrides in (
                ("vanilla", VANILLA),
                ("distilled", ()),
                ("distilled, gate correct", ("loss.teacher_gate=correct",)),
            )
        },
    },
    "views": {
        "conditions": {
            "vanilla (CE only)": VANILLA,
            "distilled, 1 view (centre)": (),
            "distilled, 8 views replayed": ("@views=8",),
        },
    },
    "tfd": {
        "counts": [4, 8, 16],
        "conditions": {
            "plain 16, vanilla": ("student.num_frames=16", *VANILLA),
            "FFN 4/8/16, vanilla": ("student.num_frames=16", "train.frame_counts=[4, 8, 16]", *VANILLA),
            "plain 16, distilled": ("student.num_frames=16",),
            "FFN 4/8/16, distilled": ("student.num_frames=16", "train.frame_counts=[4, 8, 16]"),
        },
    },
    "mobilevit": {
        "conditions": {
            f"{head}, {kind}": ("student.arch=mobilevit_xxs", f"student.temporal={head}", *overrides)
            for head in ("attention", "attention_pos", "shift")
            for kind, overrides in (("vanilla", VANILLA), ("distilled", ()))
        },
    },
    "controls": {
        "conditions": {
            "vanilla (CE only)": VANILLA,
            "distilled from the pretrained teacher": (),
            "distilled from the same teacher with random weights": ("@teacher=random",),
            "distilled from the stand-in teacher": ("@teacher=stand-in",),
        },
    },
    "student_teacher": {
        "conditions": {
            "vanilla (CE only)": VANILLA,
            "distilled from the pretrained CLIP-style teacher": (),
            "distilled from a trained tsm_tiny (vanilla, 40 per class, seed 1000)": ("@teacher=student",),
        },
    },
}


def make_cfg(work: Path, run_dir: Path, *extra: str, labels: int = 40) -> config.Config:
    """pipeline.yaml + configs/smoke.yaml (local executor, small settings) + this benchmark's settings."""
    files = [REPO / "pipeline.yaml", REPO / "configs" / "smoke.yaml"]
    teacher = ("teacher.model=proxy-clip", f"teacher.pretrained={work / 'teacher_pretrain' / 'proxy-clip.pt'}")
    paths = (
        f"paths.ssv2_root={data_root(work, labels)}",
        f"paths.run_dir={run_dir}",
        f"teacher_pretrain.out={work / 'teacher_pretrain' / 'proxy-clip.pt'}",
    )
    return config.load(files, [*paths, *DATA, *teacher, *STUDENT, *extra, *EXTRA])


def data_root(work: Path, labels: int) -> Path:
    """The proxy set with `labels` training videos per class (nested: 10 are the first 10 of 40)."""
    return work / ("ssv2" if labels == 40 else f"ssv2-{labels}")


# A base is one prepared run folder (shards, a cache, its heads) that students link to.
def base_name(labels: int = 40, views: int = 1, teacher: str = "pretrained") -> str:
    """The folder of the base a condition trains from."""
    return f"base-l{labels}-v{views}-{teacher}"


def base_overrides(teacher: str, views: int, work: Path) -> tuple[str, ...]:
    """The teacher settings of a base."""
    out = [f"teacher.views={views}"]
    if teacher == "student":
        out.append(f"teacher.model=student:{teacher_student(work)}")
    elif teacher == "random":
        out.append("teacher.pretrained=random")
    elif teacher == "stand-in":
        out.append("teacher.model=stand-in")
    return tuple(out)


def split_condition(overrides: tuple[str, ...]) -> tuple[dict, tuple[str, ...]]:
    """The '@key=value' base selectors of a condition apart from its config overrides."""
    base = {"labels": 40, "views": 1, "teacher": "pretrained"}
    rest = []
    for o in overrides:
        if o.startswith("@"):
            key, value = o[1:].split("=", 1)
            base[key] = value if key == "teacher" else int(value)
        else:
            rest.append(o)
    return base, tuple(rest)


def prepare_data(work: Path, labels: int, *, ffmpeg: bool = True) -> Path:
    """The proxy set with `labels` training videos per class and its shards in work/data-l<labels>/shards.

    With ffmpeg: the real path (VP9 .webm, then the shards stage); the sets are nested, so another
    set's videos of the same id are linked, not rendered again. Without (`--no-ffmpeg`, GPU machines):
    the same renderer's frames go straight into shards as Pillow JPEGs (bench/jpeg_shards.py).
    """
    root, data = data_root(work, labels), work / f"data-l{labels}"
    cfg = make_cfg(work, data, f"synthetic.train_per_class={labels}", labels=labels)
    if (data / "shards" / "validation.index.json").exists():
        return data
    if ffmpeg:
        if not (root / "labels" / "test.json").exists():
            others = [p for p in sorted(work.glob("ssv2*")) if p != root and (p / "labels" / "test.json").exists()]
            synthetic.generate(root, cfg.synthetic, reuse=others[0] if others else None)
        shards.run(cfg)
    else:
        from bench.jpeg_shards import build_from

        build_from(cfg, cfg.synthetic)
    return data


def prepare_teacher(work: Path, *extra: str) -> None:
    """`make pretrain-teacher` into work/teacher_pretrain (once)."""
    cfg = make_cfg(work, work, *extra)
    if not pretrain.checkpoint_path(cfg).exists():
        pretrain.run(cfg)


def prepare_base(work: Path, *, labels: int, views: int, teacher: str, ffmpeg: bool = True) -> Path:
    """The teacher cache and its heads in work/<base>, over the shards of its data set."""
    data = prepare_data(work, labels, ffmpeg=ffmpeg)
    run_dir = work / base_name(labels, views, teacher)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "shards").exists():
        (run_dir / "shards").symlink_to(data / "shards")
    cfg = make_cfg(work, run_dir, *base_overrides(teacher, views, work), labels=labels)
    teacher_run.run(cfg)
    head_run.run(cfg)
    return run_dir


def needed_bases(table: str) -> list[dict]:
    """The bases a table's conditions train from."""
    seen = []
    for overrides in TABLES[table]["conditions"].values():
        base, _ = split_condition(overrides)
        if base not in seen:
            seen.append(base)
    return seen


def run_key(table: str, name: str, seed: int, epochs: int) -> str:
    """A run's identity: its base, settings, seed and epochs (tables that share a run share its result)."""
    base, overrides = split_condition(TABLES[table]["conditions"][name])
    counts = TABLES[table].get("counts", [8])
    text = json.dumps([base, sorted(overrides), counts, seed, _epochs(base, epochs)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _epochs(base: dict, epochs: int) -> int:
    # Fewer labels, more epochs: every set gets at least the steps of 40 per class.
    return epochs * max(1, 40 // base["labels"])


def train_one(work: Path, table: str, name: str, *, seed: int, epochs: int) -> dict:
    """One student in its own folder, linked to its base's shards and cache; top-1 per evaluated count."""
    spec = TABLES[table]
    base, overrides = split_condition(spec["conditions"][name])
    counts = spec.get("counts", [8])
    key = run_key(table, name, seed, epochs)
    run_dir = work / "runs" / key
    run_dir.mkdir(parents=True, exist_ok=True)
    source = work / base_name(base["labels"], base["views"], base["teacher"])
    for shared in ("shards", "teacher_cache.zarr", "teacher_heads"):
        link, target = run_dir / shared, source / shared
        if not link.exists() and target.exists():
            link.symlink_to(target.resolve())
    extra = (
        *base_overrides(base["teacher"], base["views"], work),
        *overrides,
        f"train.seed={seed}",
        f"train.epochs={_epochs(base, epochs)}",
    )
    cfg = make_cfg(work, run_dir, *extra, f"train.eval_frame_counts={counts}", labels=base["labels"])
    summary = train.run(cfg)
    history = [h["val"]["top1"] for h in summary.progress.history]
    result = {
        "key": key,
        "table": table,
        "name": name,
        "seed": seed,
        "epochs": _epochs(base, epochs),
        "best": max(history),
        "counts": {c: r.top1 for c, r in summary.frame_counts.items()},
        "seconds": summary.seconds,
        "teacher_head": _teacher_head(cfg),
    }
    (work / "results").mkdir(exist_ok=True)
    atomic_write(work / "results" / f"{key}.json", json.dumps(result, indent=1))
    return result


def atomic_write(path: Path, text: str) -> None:
    """Write then rename: a killed run leaves no half result."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _teacher_head(cfg: config.Config) -> dict | None:
    f = cfg.paths.student_dir / "teacher_head.json"
    return json.loads(f.read_text()) if f.exists() else None


def _slug(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in name)
    return "_".join(filter(None, keep.split("_")))[:80]


def result(work: Path, table: str, name: str, seed: int, epochs: int) -> dict | None:
    """The result of one (condition, seed) if it was run."""
    f = work / "results" / f"{run_key(table, name, seed, epochs)}.json"
    return json.loads(f.read_text()) if f.exists() else None


def table_text(work: Path, table: str, seeds: list[int], epochs: int) -> str:
    """Mean ± population standard deviation over seeds of top-1 at each evaluated count, and per seed."""
    spec = TABLES[table]
    counts = spec.get("counts", [8])
    head = " | ".join(f"top-1 at {c} frames" for c in counts)
    lines = [
        f"| student | {head} | best during training | per seed (at {max(counts)}) | seeds |",
        "|" + " --- |" * (len(counts) + 4),
    ]
    for name in spec["conditions"]:
        runs = [r for r in (result(work, table, name, s, epochs) for s in seeds) if r]
        if not runs:
            continue
        cells = [_mean_spread([r["counts"][str(c)] for r in runs]) for c in counts]
        per_seed = ", ".join(f"{r['counts'][str(max(counts))]:.3f}" for r in runs)
        lines.append(f"| {name} | {' | '.join(cells)} | {_mean_spread([r['best'] for r in runs])} | {per_seed} | {len(runs)} |")
    return "\n".join(lines)


def _mean_spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"


def teacher_text(work: Path) -> str:
    """The pretrained teacher's heads on the proxy validation split, and how an order-blind head confuses twins."""
    base = work / base_name()
    cfg = make_cfg(work, base)
    import zarr

    from pipeline.ssv2 import proxy
    from pipeline.ssv2.annotations import class_names, labels_path, load_labels
    from pipeline.teacher.store import head_records

    root = zarr.open_group(str(cfg.paths.teacher_cache), mode="r")
    records = head_records(root)
    names = class_names(load_labels(labels_path(cfg)))
    index = {n: i for i, n in enumerate(names)}
    twin = {index[a]: index[b] for a, b in proxy.TWINS.items()} | {index[b]: index[a] for a, b in proxy.TWINS.items()}
    labels = _val_labels(cfg)
    valid = root["validation/valid"][:]
    lines = [
        "| head | validation top-1 | out-of-fold train top-1 | fitted T | twins in their pair: share on the wrong one |",
        "| --- | --- | --- | --- | --- |",
    ]
    for head in ("zero_shot", "linear", "temporal"):
        if head == "zero_shot":
            logits = root["validation/logits"][:][:, 0]
        elif head in records:
            logits = root[f"validation/heads/{head}/logits"][:][:, 0]
        else:
            continue
        pred = logits[valid].argmax(1)
        y = labels[valid]
        top1 = float((pred == y).mean())
        in_pair = [i for i in np.nonzero(np.isin(y, list(twin)))[0] if pred[i] in (y[i], twin[int(y[i])])]
        # Of the twin-class videos a head puts in the right pair, the share on the wrong member:
        # 0.5 is blind to order, 0 tells every pair apart.
        as_twin = float(np.mean([pred[i] == twin[int(y[i])] for i in in_pair])) if in_pair else float("nan")
        r = records.get(head, {})
        oof = r.get("oof_top1", r.get("train_oof_top1"))
        lines.append(
            f"| {head} | {top1:.3f} | {'-' if oof is None else f'{oof:.3f}'} | {r.get('temperature', 1.0):.2f} | {as_twin:.3f} |"
        )
    return "\n".join(lines)


def _val_labels(cfg: config.Config) -> np.ndarray:
    from pipeline.shards.plan import row_labels

    return np.asarray(row_labels(cfg.paths.shards_dir, "validation"))


def pending_runs(work: Path, tables: list[str], seeds: list[int], epochs: int) -> list[tuple[str, str, int]]:
    """(table, condition, seed) of every run not done, seed-major, a run shared by tables once."""
    out, keys = [], set()
    for seed in seeds:
        for table in tables:
            for name in TABLES[table]["conditions"]:
                key = run_key(table, name, seed, epochs)
                if key not in keys and not _done(work, table, name, seed, epochs):
                    keys.add(key)
                    out.append((table, name, seed))
    return out


def side_by_side(args: argparse.Namespace, work: Path, tables: list[str]) -> None:
    """Each run not yet done in a process of its own (one thread each), `args.parallel` at once."""
    pending = pending_runs(work, tables, args.seeds, args.epochs)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running: list[subprocess.Popen] = []
    total, start = len(pending), time.monotonic()
    log.info("%d runs to train, %d at once", total, args.parallel)
    while pending or running:
        while pending and len(running) < args.parallel:
            table, name, seed = pending.pop(0)
            command = [sys.executable, "-m", "experiments.proxy_benchmark", table, "--work", str(work), "--seeds", str(seed)]
            command += ["--epochs", str(args.epochs), "--only", name, "--no-prepare", *(f"--set={o}" for o in EXTRA)]
            running.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
        time.sleep(1)
        for p in [p for p in running if p.poll() is not None]:
            running.remove(p)
            if p.returncode:
                log.error("%s exited with %d", " ".join(p.args[3:]), p.returncode)
            done = total - len(pending) - len(running)
            elapsed = time.monotonic() - start
            log.info("runs: %d/%d ended (%.0f s, ETA %.0f s)", done, total, elapsed, elapsed / done * (total - done))


def _done(work: Path, table: str, name: str, seed: int, epochs: int) -> bool:
    return result(work, table, name, seed, epochs) is not None


def teacher_student(work: Path) -> Path:
    """The trained student that serves as a teacher (`student_teacher` table)."""
    return work / "teacher_student" / "student" / "best.pt"


def prepare_teacher_student(work: Path, epochs: int) -> None:
    """A vanilla tsm_tiny on the 40-per-class set (its own seed), trained once: issue 29's video teacher."""
    if teacher_student(work).exists():
        return
    run_dir = work / "teacher_student"
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "shards").exists():
        (run_dir / "shards").symlink_to((work / "data-l40" / "shards").resolve())
    train.run(make_cfg(work, run_dir, *VANILLA, "train.seed=1000", f"train.epochs={epochs}"))


def prepare(args: argparse.Namespace, work: Path, tables: list[str]) -> None:
    """The teacher, every base the tables train from (data, shards, cache, heads)."""
    prepare_teacher(work)
    bases = [b for t in tables for b in needed_bases(t)] or [{"labels": 40, "views": 1, "teacher": "pretrained"}]
    if any(b["teacher"] == "student" for b in bases):
        prepare_data(work, 40, ffmpeg=not args.no_ffmpeg)
        prepare_teacher_student(work, args.epochs)
    for base in [b for i, b in enumerate(bases) if b not in bases[:i]]:
        prepare_base(work, labels=base["labels"], views=base["views"], teacher=base["teacher"], ffmpeg=not args.no_ffmpeg)


def train_here(args: argparse.Namespace, work: Path, tables: list[str]) -> None:
    """Every run not done, one after another in this process."""
    for table, name, seed in pending_runs(work, tables, args.seeds, args.epochs):
        if args.only is None or name == args.only:
            r = train_one(work, table, name, seed=seed, epochs=args.epochs)
            log.info("%s / %s seed %d: %s (%.0f s)", table, name, seed, r["counts"], r["seconds"])


# Overrides every run of this invocation adds (`--set`), e.g. more loader workers on a GPU machine.
EXTRA: list[str] = []


def main() -> None:
    """Prepare, run the named table(s) for every seed and print them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=[*TABLES, "all", "teacher"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--prepare-only", action="store_true", help="make the data, teacher, shards, caches and heads, then stop")
    parser.add_argument("--tabulate", action="store_true", help="only print the tables of the results in --work")
    parser.add_argument("--parallel", type=int, default=0, metavar="N", help="N runs at once, each a process of its own")
    parser.add_argument("--no-prepare", action="store_true", help="use what is already prepared in --work")
    parser.add_argument("--no-ffmpeg", action="store_true", help="render the data straight into shards (GPU machines)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override for every stage")
    parser.add_argument("--only", default=None, help="train this one condition (its name in the table)")
    args = parser.parse_args()
    EXTRA.extend(args.set)
    setup_logging()
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    work = (args.work or Path(tempfile.mkdtemp(prefix="proxy_benchmark-"))).resolve()
    tables = list(TABLES) if args.table == "all" else ([] if args.table == "teacher" else [args.table])
    if args.only is not None and (len(tables) != 1 or args.only not in TABLES[tables[0]]["conditions"]):
        parser.error(f"--only {args.only!r}: not a condition of {args.table}")
    start = time.monotonic()
    if not args.tabulate:
        if not args.no_prepare:
            prepare(args, work, tables)
        if not args.prepare_only:
            (side_by_side if args.parallel else train_here)(args, work, tables)
    if args.only:
        return
    print(
        f"\nproxy benchmark in {work}: {args.epochs} epochs (at 40 per class), seeds {args.seeds}, "
        f"{time.monotonic() - start:.0f} s\n"
    )
    if (work / base_name() / "teacher_cache.zarr").exists():
        print("teacher\n\n" + teacher_text(work) + "\n")
    for table in tables:
        print(f"{table}\n\n{table_text(work, table, args.seeds, args.epochs)}\n")


if __name__ == "__main__":
    main()
