"""The proxy benchmark's tables: is a student better for being distilled from the cached teacher?

    python -m experiments.proxy_benchmark TABLE [--seeds 0 1 2] [--epochs 15] [--work DIR] [--parallel N]
    python -m experiments.proxy_benchmark all --work DIR          # every table
    python -m experiments.proxy_benchmark all --work DIR --tabulate

Tables: screen (recipe candidates, one or two seeds), safety (vanilla, the seeds' recipe and the
default, from a strong, a weak and a useless teacher, at 10 / 40 / 160 labels per class),
unlabelled (10 labelled per class with and without 30 unlabelled), frames (the teacher's video
feature at full weight and the per-frame term, beside the default), mobilevit_gpu and tsm_r50_gpu
(the seeds' student and TSM-R50 at 112 px on a GPU), optimiser (lr and warm-up, 8 and 16 frames:
which settings learn), heads (vanilla against distilled from each teacher head), loss (the loss
terms and temperature), labels (10 / 40 / 160 labelled videos per class), views (1 against 8 cached
views), tfd (plain 16 frames against FFN 4/8/16, evaluated at 4 / 8 / 16), mobilevit (the three
temporal heads, vanilla and distilled), controls (the same recipe from a random and the stand-in
teacher), student_teacher (a trained student as the teacher).

Every run goes through the real stages in the proxy world (experiments/proxy_world.py); the runner
(experiments/runner.py) keeps one result per run, trains only what is missing and prints mean ±
spread per condition. Students: tsm_tiny at 64 px, 8 frames, batch 8, AdamW lr 3e-4 with 3 warm-up
epochs, the loss of pipeline.yaml unless the table varies it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import proxy_world as world
from experiments.runner import Table, main

VANILLA = world.VANILLA
# The seeds' walkthrough exactly (recipes/seeds_walkthrough.yaml), whatever pipeline.yaml's defaults are.
SEEDS_RECIPE = (
    "loss.alpha=0.5",
    "loss.beta=1.0",
    "loss.gamma=0.1",
    "loss.gamma_with_unlabelled=0.1",
    "loss.temperature=3.0",
    "loss.feature_reduction=mean",
    "loss.teacher_gate=all",
    "loss.frame_alpha=0",
    "loss.unlabelled_weight=uniform",
    "loss.fade=none",
)
# Candidates for a default that never loses to labels alone: the label at full weight, the teacher's
# target only where it is right (or weighted by its belief in the label), unlabelled clips weighted
# by the teacher's confidence, with and without the per-frame feature term.
GATED = (
    *SEEDS_RECIPE,
    "loss.gamma=1.0",
    "loss.gamma_with_unlabelled=1.0",
    "loss.teacher_gate=correct",
    "loss.unlabelled_weight=confidence",
)
GATED_FRAMES = (*GATED, "loss.frame_alpha=1.0")
BELIEF_FRAMES = (*GATED_FRAMES, "loss.teacher_gate=label_prob")
UNLABELLED = ("@unlabelled=30", "train.unlabelled_splits=[test]")
# the default (`train.unlabelled_ratio: auto`) gives 3 here: 30 unlabelled per 10 labelled, each seen once an epoch
EVERY_UNLABELLED = ("train.unlabelled_ratio=3",)
ONE_PER_LABELLED = ("train.unlabelled_ratio=1",)  # the default until 2026-12-07: a third of them an epoch
DEFAULT = ()  # pipeline.yaml's loss: the recipe a user gets
TEACHERS = {
    "temporal head": ("loss.teacher_head=temporal",),
    "linear head": ("loss.teacher_head=linear",),
    "random-weight teacher": ("@teacher=random",),
}
# The default until the safety table's label-first rows (a weak head held it below vanilla): the seeds'
# weights (task 0.1) with the crossover fade. The label at full weight (the label-first candidate) is
# the default now.
PREVIOUS_DEFAULT = ("loss.gamma=0.1", "loss.gamma_with_unlabelled=0.1")
LABEL_FIRST = ("loss.gamma=1.0",)
# with unlabelled splits, the label at full weight too (the default keeps 0.1 there)
TASK_FULL_WITH_UNLABELLED = ("loss.gamma_with_unlabelled=1.0",)
# The candidate after the seeds' recipe passed the default with unlabelled clips (0.343 against 0.302):
# the fade read the student's best single validation, which a noisy curve carries a few points above
# where it is, and faded the teacher out early; here it reads the best mean of 5 in a row.
SMOOTHED_FADE = ("loss.fade_window=5",)
RECIPES = {
    "default": DEFAULT,
    "previous default (task 0.1)": PREVIOUS_DEFAULT,
    "seeds' recipe": SEEDS_RECIPE,
    "default, fade over 5 validations": SMOOTHED_FADE,
}
BARRED = ("default", "default, fade over 5 validations")  # the recipes that must never lose to labels alone
# The teacher's features as targets beside its logits: the seeds' video-feature MSE averages over 512
# dimensions (a gradient 1/512 of the sum's); the sum gives it the weight of the other terms, and the
# per-frame term matches each student frame to the cached teacher frame it shows.
FEATURE_TARGETS = {
    "": (),
    " + video feature at full weight (MSE summed)": ("loss.feature_reduction=sum",),
    " + per-frame term 0.5": ("loss.frame_alpha=0.5",),
}
# GPU-sized students: 112 px from shards at short side 128, batch 32, three loader workers, 30 epochs
GPU = ("@size=128", "student.image_size=112", "train.batch_size=32", "train.num_workers=3")
SEEDS_STUDENT = ("student.arch=mobilevit_xxs", "student.temporal=attention_pos")


def safety_verdict(runs_of) -> str:
    """Per (labels, teacher): each recipe against vanilla, and whether each barred recipe (the default
    and its candidates) holds the issue's bar (its mean at least vanilla's minus the larger of the two spreads)."""
    head = " | ".join(f"{name} - vanilla | holds" if name in BARRED else f"{name} - vanilla" for name in RECIPES)
    lines = [f"| labels per class | teacher | {head} |", "| --- | --- |" + " --- |" * (len(RECIPES) + len(BARRED))]
    for n in (10, 40, 160):
        vanilla = [r["counts"]["8"] for r in runs_of(f"{n} per class, vanilla")]
        for teacher in TEACHERS:
            top1 = {name: [r["counts"]["8"] for r in runs_of(f"{n} per class, {teacher}, {name}")] for name in RECIPES}
            if vanilla and any(top1.values()):
                lines.append(f"| {n} | {teacher} | {' | '.join(_versus(vanilla, runs, name) for name, runs in top1.items())} |")
    return (
        "Each recipe against labels alone (top-1 at 8 frames; seeds: the recipe's, vanilla's; spread: the larger)\n\n"
        + "\n".join(lines)
    )


def _versus(vanilla: list[float], runs: list[float], name: str) -> str:
    """One recipe's cell(s): its mean minus vanilla's, with seeds and spread; for a barred recipe, whether it holds."""
    if not runs:
        return "- | -" if name in BARRED else "-"
    gap, spread = np.mean(runs) - np.mean(vanilla), max(np.std(runs), np.std(vanilla))
    text = f"{gap:+.3f} ({len(runs)}, {len(vanilla)} seeds; spread {spread:.3f})"
    if name not in BARRED:
        return text
    return text + (" | yes" if gap >= -spread else " | **no**")


TABLES: dict[str, Table] = {
    "screen": Table(
        # the screen's names keep the words of their time: its "default" is PREVIOUS_DEFAULT
        {
            "40, vanilla": VANILLA,
            "40, seeds' recipe": SEEDS_RECIPE,
            "40, default (seeds' weights, crossover fade)": PREVIOUS_DEFAULT,
            "40, random teacher, default": ("@teacher=random", *PREVIOUS_DEFAULT),
            "10 + 30 unlabelled, default": ("@labels=10", *UNLABELLED, *PREVIOUS_DEFAULT),
            "160, default": ("@labels=160", *PREVIOUS_DEFAULT),
            "40, gated (CE 1, KL where right)": GATED,
            "40, gated + frames": GATED_FRAMES,
            "40, belief + frames": BELIEF_FRAMES,
            "40, belief (no frames)": (*GATED, "loss.teacher_gate=label_prob"),
            "40, random teacher, seeds' recipe": ("@teacher=random", *SEEDS_RECIPE),
            "40, random teacher, gated": ("@teacher=random", *GATED),
            "40, random teacher, gated + frames": ("@teacher=random", *GATED_FRAMES),
            "40, random teacher, belief + frames": ("@teacher=random", *BELIEF_FRAMES),
            "40, random teacher, belief (no frames)": ("@teacher=random", *GATED, "loss.teacher_gate=label_prob"),
            "10, vanilla": ("@labels=10", *VANILLA),
            "10 + 30 unlabelled, seeds' recipe": ("@labels=10", *UNLABELLED, *SEEDS_RECIPE),
            "10 + 30 unlabelled, gated + frames": ("@labels=10", *UNLABELLED, *GATED_FRAMES),
            "10 + 30 unlabelled, gated + frames, uniform": (
                "@labels=10",
                *UNLABELLED,
                *GATED_FRAMES,
                "loss.unlabelled_weight=uniform",
            ),
            "10 + 30 unlabelled, belief + frames": ("@labels=10", *UNLABELLED, *BELIEF_FRAMES),
            "160, vanilla": ("@labels=160", *VANILLA),
            "160, gated + frames": ("@labels=160", *GATED_FRAMES),
            # after the safety table's first seeds: the default held below vanilla by a weak head
            "40, linear head, default": ("loss.teacher_head=linear", *PREVIOUS_DEFAULT),
            "40, linear head, default with the task at full weight": ("loss.teacher_head=linear", *LABEL_FIRST),
            "40, default with the task at full weight": LABEL_FIRST,
            "40, linear head, default gated (CE where the head is wrong)": (
                "loss.teacher_head=linear",
                *PREVIOUS_DEFAULT,
                "loss.teacher_gate=correct",
            ),
            "40, default gated (CE where the head is wrong)": (*PREVIOUS_DEFAULT, "loss.teacher_gate=correct"),
        }
    ),
    "safety": Table(
        {
            **{f"{n} per class, vanilla": (f"@labels={n}", *VANILLA) for n in (10, 40, 160)},
            **{
                f"{n} per class, {teacher}, {recipe}": (f"@labels={n}", *t, *r)
                for n in (10, 40, 160)
                for teacher, t in TEACHERS.items()
                for recipe, r in RECIPES.items()
            },
        },
        summary=safety_verdict,
    ),
    "unlabelled": Table(
        {
            "10 labelled, vanilla": ("@labels=10", *VANILLA),
            "10 labelled, seeds' recipe": ("@labels=10", *SEEDS_RECIPE),
            "10 labelled, default": ("@labels=10", *DEFAULT),
            "10 labelled, previous default (task 0.1)": ("@labels=10", *PREVIOUS_DEFAULT),
            "10 labelled + 30 unlabelled, seeds' recipe": ("@labels=10", *UNLABELLED, *SEEDS_RECIPE),
            "10 labelled + 30 unlabelled, default": ("@labels=10", *UNLABELLED, *DEFAULT),
            "10 labelled + 30 unlabelled, linear head, default": ("@labels=10", *UNLABELLED, *TEACHERS["linear head"]),
            "10 labelled + 30 unlabelled, default, fade over 5 validations": ("@labels=10", *UNLABELLED, *SMOOTHED_FADE),
            "10 labelled + 30 unlabelled, linear head, default, fade over 5 validations": (
                "@labels=10",
                *UNLABELLED,
                *TEACHERS["linear head"],
                *SMOOTHED_FADE,
            ),
            # a teacher that knows nothing, on three unlabelled clips per labelled one: the worst case of `auto`
            "10 labelled + 30 unlabelled, random-weight teacher, default": (
                "@labels=10",
                *UNLABELLED,
                *TEACHERS["random-weight teacher"],
            ),
            "10 labelled + 30 unlabelled, the task at full weight": ("@labels=10", *UNLABELLED, *TASK_FULL_WITH_UNLABELLED),
            # the same 3 per labelled clip that the default's auto gives here, set by hand
            "10 labelled + 30 unlabelled at 3 per labelled clip, default": ("@labels=10", *UNLABELLED, *EVERY_UNLABELLED),
            "10 labelled + 30 unlabelled at 3 per labelled clip, linear head, default": (
                "@labels=10",
                *UNLABELLED,
                *EVERY_UNLABELLED,
                *TEACHERS["linear head"],
            ),
            # one unlabelled clip per labelled clip: a third of them an epoch (the default until 2026-12-07)
            "10 labelled + 30 unlabelled at 1 per labelled clip, default": ("@labels=10", *UNLABELLED, *ONE_PER_LABELLED),
            "10 labelled + 30 unlabelled at 1 per labelled clip, linear head, default": (
                "@labels=10",
                *UNLABELLED,
                *ONE_PER_LABELLED,
                *TEACHERS["linear head"],
            ),
            # the head's calibrated probabilities as they are (T 1), not flattened by T 3
            "10 labelled + 30 unlabelled at 1 per labelled clip, T 1": (
                "@labels=10",
                *UNLABELLED,
                *ONE_PER_LABELLED,
                "loss.temperature=1.0",
            ),
            "10 labelled + 30 unlabelled at 3 per labelled clip, T 1": (
                "@labels=10",
                *UNLABELLED,
                *EVERY_UNLABELLED,
                "loss.temperature=1.0",
            ),
            "40 labelled, vanilla (the ceiling)": VANILLA,
        }
    ),
    "frames": Table(
        {
            f"{setting}{variant}": (*selectors, *overrides)
            for setting, selectors in (
                ("40 per class, previous default (task 0.1)", PREVIOUS_DEFAULT),
                ("40 per class, random-weight teacher, previous default (task 0.1)", ("@teacher=random", *PREVIOUS_DEFAULT)),
                ("10 + 30 unlabelled, default", ("@labels=10", *UNLABELLED)),
            )
            for variant, overrides in FEATURE_TARGETS.items()
        }
    ),
    "mobilevit_gpu": Table(
        {
            "40 labelled, vanilla": VANILLA,
            "40 labelled, seeds' recipe": SEEDS_RECIPE,
            "40 labelled, default": DEFAULT,
            "10 labelled, vanilla": ("@labels=10", *VANILLA),
            "10 labelled + 30 unlabelled, seeds' recipe": ("@labels=10", *UNLABELLED, *SEEDS_RECIPE),
            "10 labelled + 30 unlabelled, default": ("@labels=10", *UNLABELLED, *DEFAULT),
        },
        settings=(*GPU, *SEEDS_STUDENT),
        epochs=30,
    ),
    "tsm_r50_gpu": Table(
        {
            "plain 16, vanilla": ("student.num_frames=16", *VANILLA),
            "plain 16, seeds' recipe": ("student.num_frames=16", *SEEDS_RECIPE),
            "plain 16, default": ("student.num_frames=16", *DEFAULT),
            "plain 16, default, fade over 5 validations": ("student.num_frames=16", *SMOOTHED_FADE),
            "FFN 4/8/16, seeds' recipe": ("student.num_frames=16", "train.frame_counts=[4, 8, 16]", *SEEDS_RECIPE),
            "FFN 4/8/16, default": ("student.num_frames=16", "train.frame_counts=[4, 8, 16]", *DEFAULT),
        },
        counts=(4, 8, 16),
        settings=(*GPU, "student.arch=tsm_r50"),
        epochs=30,
    ),
    "optimiser": Table(
        {
            f"{frames} frames, {name}": (f"student.num_frames={frames}", *VANILLA, *settings)
            for frames in (8, 16)
            for name, settings in (
                ("AdamW lr 1e-3, no warm-up (the old benchmark's)", ("train.lr=0.001", "train.warmup_epochs=0")),
                ("AdamW lr 1e-3, 3 warm-up epochs", ("train.lr=0.001",)),
                ("AdamW lr 3e-4, no warm-up", ("train.warmup_epochs=0",)),
                ("AdamW lr 3e-4, 3 warm-up epochs (the benchmark's now)", ()),
                (
                    "pipeline.yaml's SGD (lr 0.01 per 64 clips, 3 warm-up epochs)",
                    (
                        "train.optimizer=sgd",
                        "train.lr=0.01",
                        "train.lr_batch=64",
                        "train.weight_decay=0.0005",
                        "train.warmup_epochs=3",
                    ),
                ),
            )
        },
        counts=(4, 8, 16),
    ),
    "heads": Table(
        {
            "vanilla (CE only)": VANILLA,
            "distilled from zero_shot": ("loss.teacher_head=zero_shot",),
            "distilled from linear": ("loss.teacher_head=linear",),
            "distilled from temporal": ("loss.teacher_head=temporal",),
        }
    ),
    "loss": Table(
        {
            "seeds' weights (0.5 feature, 1.0 response, 0.1 task, T 3)": SEEDS_RECIPE,
            "task 1.0 (0.5, 1.0, 1.0, T 3)": (*SEEDS_RECIPE, "loss.gamma=1.0"),
            "feature off (0, 1.0, 0.1, T 3)": (*SEEDS_RECIPE, "loss.alpha=0"),
            "response off (0.5, 0, 0.1, T 3)": (*SEEDS_RECIPE, "loss.beta=0"),
            "feature only + task (0.5, 0, 1.0)": (*SEEDS_RECIPE, "loss.beta=0", "loss.gamma=1.0"),
            "T 1 (0.5, 1.0, 0.1)": (*SEEDS_RECIPE, "loss.temperature=1.0"),
            "T 6 (0.5, 1.0, 0.1)": (*SEEDS_RECIPE, "loss.temperature=6.0"),
            "labels replace wrong teacher targets (gate correct)": (*SEEDS_RECIPE, "loss.teacher_gate=correct"),
        }
    ),
    "labels": Table(
        {
            f"{n} per class, {kind}": (f"@labels={n}", *overrides)
            for n in (10, 40, 160)
            for kind, overrides in (
                ("vanilla", VANILLA),
                ("seeds' recipe", SEEDS_RECIPE),
                ("seeds' recipe, gate correct", (*SEEDS_RECIPE, "loss.teacher_gate=correct")),
            )
        }
    ),
    "views": Table(
        {
            "vanilla (CE only)": VANILLA,
            "seeds' recipe, 1 view (centre)": SEEDS_RECIPE,
            "seeds' recipe, 8 views replayed": ("@views=8", *SEEDS_RECIPE),
        }
    ),
    "tfd": Table(
        {
            "plain 16, vanilla": ("student.num_frames=16", *VANILLA),
            "FFN 4/8/16, vanilla": ("student.num_frames=16", "train.frame_counts=[4, 8, 16]", *VANILLA),
            "plain 16, seeds' recipe": ("student.num_frames=16", *SEEDS_RECIPE),
            "FFN 4/8/16, seeds' recipe": ("student.num_frames=16", "train.frame_counts=[4, 8, 16]", *SEEDS_RECIPE),
        },
        counts=(4, 8, 16),
    ),
    "mobilevit": Table(
        {
            f"{head}, {kind}": ("student.arch=mobilevit_xxs", f"student.temporal={head}", *overrides)
            for head in ("attention", "attention_pos", "shift")
            for kind, overrides in (("vanilla", VANILLA), ("seeds' recipe", SEEDS_RECIPE))
        }
    ),
    "controls": Table(
        {
            "vanilla (CE only)": VANILLA,
            "seeds' recipe from the pretrained teacher": SEEDS_RECIPE,
            "seeds' recipe from the same teacher with random weights": ("@teacher=random", *SEEDS_RECIPE),
            "seeds' recipe from the stand-in teacher": ("@teacher=stand-in", *SEEDS_RECIPE),
        }
    ),
    "student_teacher": Table(
        {
            "vanilla (CE only)": VANILLA,
            "seeds' recipe from the pretrained CLIP-style teacher": SEEDS_RECIPE,
            "seeds' recipe from a trained tsm_tiny (vanilla, 40 per class, seed 1000)": ("@teacher=student", *SEEDS_RECIPE),
        }
    ),
}


def teacher_text(work: Path) -> str:
    """The pretrained teacher's heads on the proxy validation split, and how an order-blind head confuses twins."""
    base = world.base_dir(work, world.BASE)
    if not (base / "teacher_cache.zarr").exists():
        return "(no teacher cache at the 40-per-class base yet)"
    cfg = world.make_config(work, base, world.BASE)
    import zarr

    from pipeline.cache.store import head_records
    from pipeline.shards.plan import row_labels
    from pipeline.ssv2 import proxy
    from pipeline.ssv2.annotations import class_names, labels_path, load_labels

    root = zarr.open_group(str(cfg.paths.teacher_cache), mode="r")
    records = head_records(root)
    names = class_names(load_labels(labels_path(cfg)))
    index = {n: i for i, n in enumerate(names)}
    twin = {index[a]: index[b] for a, b in proxy.TWINS.items()} | {index[b]: index[a] for a, b in proxy.TWINS.items()}
    labels = np.asarray(row_labels(cfg.paths.shards_dir, "validation"))
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
        pred, y = logits[valid].argmax(1), labels[valid]
        top1 = float((pred == y).mean())
        in_pair = [i for i in np.nonzero(np.isin(y, list(twin)))[0] if pred[i] in (y[i], twin[int(y[i])])]
        # of the twin-class videos a head puts in the right pair, the share on the wrong member:
        # 0.5 is blind to order, 0 tells every pair apart
        as_twin = float(np.mean([pred[i] == twin[int(y[i])] for i in in_pair])) if in_pair else float("nan")
        r = records.get(head, {})
        oof = r.get("oof_top1")
        lines.append(
            f"| {head} | {top1:.3f} | {'-' if oof is None else f'{oof:.3f}'} | {r.get('temperature', 1.0):.2f} | {as_twin:.3f} |"
        )
    return "teacher (40 labelled per class)\n\n" + "\n".join(lines)


STUDY = world.study("experiments.proxy_benchmark", TABLES, preface=teacher_text)

if __name__ == "__main__":
    main(STUDY, __doc__)
