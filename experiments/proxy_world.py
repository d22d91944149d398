"""The proxy world every proxy study trains in: its data sets, the teacher pretrained here, and the
prepared bases (shards, a teacher cache and its heads) that runs link to.

A base is chosen per condition with `@key=value` selectors:

- `labels`: labelled training videos per class (10, 40, 160; nested: 10 are the first 10 of 40);
- `unlabelled`: extra unlabelled videos per class in the `test` split (SSv2's split without labels),
  which the cache covers and `train.unlabelled_splits=[test]` trains on;
- `views`: teacher views cached per training video;
- `teacher`: pretrained (ClipLoss here), random (the same model, random weights), stand-in, or
  student (a vanilla tsm_tiny trained once);
- `size`: the shards' short side (96 for 64 px students; 128 for the GPU-sized 112 px ones).

Everything runs through the real stages: the data set (ffmpeg, VP9; or, with `--no-ffmpeg` on
machines without ffmpeg, the same frames rendered straight into shards), shards, the teacher, the
cache, the heads, then students.
"""

from __future__ import annotations

from pathlib import Path

from experiments.runner import Study, Table
from pipeline import config
from pipeline.shards import build as shards
from pipeline.ssv2 import synthetic
from pipeline.student import train
from pipeline.student.data import unlabelled_ratio
from pipeline.teacher import head_run, pretrain
from pipeline.teacher import run as teacher_run

REPO = Path(__file__).resolve().parents[1]

# The stages' settings at CPU scale; everything else is pipeline.yaml's (the recipe under test).
DATA = (
    "synthetic.preset=proxy",
    "shards.videos_per_shard=32",
    "teacher.num_frames=8",
    "teacher.num_workers=1",
    "teacher_head.weight_decays=[0.0001, 0.01]",
    # pipeline.yaml's head, which configs/smoke.yaml shrinks: the narrower head this world fitted
    # before was 9 points weaker, and its students weaker with it (docs/proxy_benchmark.md, the width probes)
    "teacher_head.min_steps=500",
    "teacher_head.temporal_width=256",
)
# The student every table trains unless it says otherwise: tsm_tiny at 64 px, 8 frames, AdamW at
# lr 3e-4 with 3 warm-up epochs (at 1e-3 without warm-up runs fell onto a plateau: docs/frame_flexible.md).
STUDENT = (
    "student.arch=tsm_tiny",
    "student.image_size=64",
    "student.num_frames=8",
    "student.dropout=0",
    "train.batch_size=8",
    "train.num_workers=1",
    "train.optimizer=adamw",
    "train.lr=0.0003",
    "train.lr_batch=0",  # for this batch of 8, as given
    "train.warmup_epochs=3",
    "train.weight_decay=0.0001",
    "train.log_every_steps=100000",
    "train.checkpoint_every_steps=100000",
)
VANILLA = ("loss.mode=vanilla",)
BASE = {"labels": 40, "unlabelled": 0, "views": 1, "teacher": "pretrained", "size": 96}


def _teacher_file(work: Path) -> Path:
    return work / "teacher_pretrain" / "proxy-clip.pt"


def make_config(work: Path, run_dir: Path, base: dict, overrides: tuple[str, ...] = ()) -> config.Config:
    """pipeline.yaml + configs/smoke.yaml (local executor, small settings) + the world's settings + `overrides`."""
    files = [REPO / "pipeline.yaml", REPO / "configs" / "smoke.yaml"]
    world = (
        f"paths.ssv2_root={data_root(work, base)}",
        f"paths.run_dir={run_dir}",
        f"teacher_pretrain.out={_teacher_file(work)}",
        f"synthetic.train_per_class={base['labels']}",
        f"synthetic.unlabelled_per_class={base['unlabelled']}",
        f"shards.short_side={base['size']}",
        "teacher.model=proxy-clip",
        f"teacher.pretrained={_teacher_file(work)}",
    )
    unlabelled = ("data.splits=[train, validation, test]", "synthetic.test_per_class=0") if base["unlabelled"] else ()
    # the base's teacher last: a --set teacher.pretrained must not turn a random-weight base pretrained
    return config.load(files, [*world, *DATA, *unlabelled, *STUDENT, *overrides, *_base_teacher(work, base)])


def _base_teacher(work: Path, base: dict) -> tuple[str, ...]:
    out = [f"teacher.views={base['views']}"]
    if base["teacher"] == "student":
        out.append(f"teacher.model=student:{teacher_student(work)}")
    elif base["teacher"] == "random":
        out.append("teacher.pretrained=random")
    elif base["teacher"] == "stand-in":
        out.append("teacher.model=stand-in")
    elif base["teacher"] != "pretrained":
        raise ValueError(f"@teacher={base['teacher']}: pretrained, random, stand-in or student")
    return tuple(out)


def data_root(work: Path, base: dict) -> Path:
    """The proxy videos of a base: `labels` training and `unlabelled` test videos per class."""
    return work / f"ssv2-l{base['labels']}-u{base['unlabelled']}"


def data_dir(work: Path, base: dict) -> Path:
    """The shards of a base's videos at its short side."""
    return work / f"data-l{base['labels']}-u{base['unlabelled']}-s{base['size']}"


def base_dir(work: Path, base: dict) -> Path:
    """The folder a base's runs link to: its shards, and its teacher cache and heads when prepared."""
    b = base
    return work / f"base-l{b['labels']}-u{b['unlabelled']}-s{b['size']}-v{b['views']}-{b['teacher']}"


def prepare_data(work: Path, base: dict, *, ffmpeg: bool, extra: tuple[str, ...] = ()) -> Path:
    """A base's videos and shards (once). With ffmpeg: VP9 .webm, then the shards stage (the nested
    sets link the videos they share); without: the renderer's frames straight into shards as JPEGs."""
    root, data = data_root(work, base), data_dir(work, base)
    cfg = make_config(work, data, base, extra)
    last = cfg.data.splits[-1]
    if (data / "shards" / f"{last}.index.json").exists():
        return data
    if ffmpeg:
        if not (root / "labels" / "test.json").exists():
            others = [p for p in sorted(work.glob("ssv2-*")) if p != root and (p / "labels" / "test.json").exists()]
            synthetic.generate(root, cfg.synthetic, reuse=others[0] if others else None)
        shards.run(cfg)
    else:
        from bench.jpeg_shards import build_from

        build_from(cfg, cfg.synthetic)
    return data


def prepare_teacher(work: Path, extra: tuple[str, ...] = ()) -> None:
    """`make pretrain-teacher` into work/teacher_pretrain (once)."""
    cfg = make_config(work, work, BASE, extra)
    if not pretrain.checkpoint_path(cfg).exists():
        pretrain.run(cfg)


def teacher_student(work: Path) -> Path:
    """The trained student that serves as a teacher (`@teacher=student`)."""
    return work / "teacher_student" / "student" / "best.pt"


def prepare_teacher_student(work: Path, *, ffmpeg: bool, extra: tuple[str, ...] = (), epochs: int = 15) -> None:
    """A vanilla tsm_tiny on the 40-per-class set (its own seed), trained once: issue 29's video teacher."""
    if teacher_student(work).exists():
        return
    data = prepare_data(work, BASE, ffmpeg=ffmpeg, extra=extra)
    run_dir = work / "teacher_student"
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "shards").exists():
        (run_dir / "shards").symlink_to((data / "shards").resolve())
    train.run(make_config(work, run_dir, BASE, (*extra, *VANILLA, "train.seed=1000", f"train.epochs={epochs}")))


def prepare_base(work: Path, base: dict, *, cache: bool, ffmpeg: bool, extra: tuple[str, ...] = ()) -> None:
    """A base's shards, and with `cache` its teacher cache and heads (the teacher pretrained first);
    `extra`: the invocation's overrides (--set), which the stages see too."""
    data = prepare_data(work, base, ffmpeg=ffmpeg, extra=extra)
    run_dir = base_dir(work, base)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "shards").exists():
        (run_dir / "shards").symlink_to(data / "shards")
    if not cache:
        return
    prepare_teacher(work, extra)
    if base["teacher"] == "student":
        prepare_teacher_student(work, ffmpeg=ffmpeg, extra=extra)
    cfg = make_config(work, run_dir, base, extra)
    teacher_run.run(cfg)
    head_run.run(cfg)


def epochs_for(base: dict, epochs: int) -> int:
    """Fewer labels, more epochs: every set gets at least the steps of 40 labelled videos per class."""
    return epochs * max(1, 40 // base["labels"])


def run_cost(base: dict, cfg: config.Config) -> float:
    """A run's relative cost: the frames it decodes (clips an epoch x frames a clip x epochs)."""
    ratio = unlabelled_ratio(cfg.train.unlabelled_ratio, labelled=base["labels"], unlabelled=base["unlabelled"])
    clips = base["labels"] * (1 + (ratio if cfg.train.unlabelled_splits else 0))
    frames = sum(cfg.train.frame_counts) if cfg.train.frame_counts else cfg.student.num_frames
    return clips * frames * cfg.train.epochs


def study(module: str, tables: dict[str, Table], preface=None) -> Study:
    """A study whose runs train in this world."""
    return Study(
        module=module,
        tables=tables,
        base_defaults=dict(BASE),
        make_config=make_config,
        base_dir=base_dir,
        prepare_base=prepare_base,
        epochs_for=epochs_for,
        cost=run_cost,
        preface=preface,
    )
