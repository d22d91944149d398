"""`make report`: one folder a person can open, `report.md` plus PNG plots, from the run's own files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pipeline.cache.heads import expectation, loss_facts
from pipeline.config import Config
from pipeline.report import plots
from pipeline.report.facts import (
    DataFacts,
    TeacherFacts,
    TrainFacts,
    agreement,
    data_facts,
    names,
    per_class_against,
    per_class_and_confusions,
    per_class_with_teacher,
    teacher_facts,
    train_facts,
)
from pipeline.runtime.atomic import write_text
from pipeline.student.health import plateau

log = logging.getLogger(__name__)


def write_report(cfg: Config, vanilla: Path | None = None) -> Path:
    """Write `<run_dir>/report/report.md` and its plots; returns the Markdown file's path. With `vanilla`
    (a student folder trained on labels alone on the same validation set), the student is set against
    it class by class."""
    folder = Path(cfg.paths.run_dir) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    class_names = names(cfg)
    data = data_facts(cfg)
    teacher = teacher_facts(cfg, data)
    training = train_facts(cfg)
    sections = [
        f"# Run report: {cfg.paths.run_dir}\n",
        _data_section(data, class_names, folder),
        _teacher_section(teacher, data.videos, num_classes=_classes_with_videos(data, class_names), loss=loss_facts(cfg)),
        _training_section(training, cfg, folder),
        _test_section(cfg),
        _export_section(cfg),
        _classes_section(training, teacher, data, class_names, folder),
    ]
    if vanilla is not None:
        sections.append(_against_vanilla_section(training, Path(vanilla), class_names))
    path = folder / "report.md"
    write_text(path, "\n".join(sections))
    log.info("report written to %s", path)
    return path


def _data_section(data: DataFacts, class_names: list[str], folder: Path) -> str:
    lines = ["## Data (shards)\n"]
    if data.missing:
        lines.append(f"Missing: no complete shard index for {', '.join(data.missing)} (run `make shards`).\n")
    if not data.videos:
        return "\n".join(lines)
    lines += [
        "| split | videos | classes | frames per video (mean, min-max) | rejected | MB on disk | KiB per video |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for split, n in data.videos.items():
        f = data.frames[split]
        mean = sum(f) / len(f) if f else 0
        lines.append(
            f"| {split} | {n} | {len(data.videos_per_class[split])} | {mean:.1f}, {min(f, default=0)}-{max(f, default=0)} "
            f"| {sum(data.rejected[split].values())} | {data.bytes[split] / 1e6:.1f} "
            f"| {data.bytes[split] / max(1, n) / 1024:.0f} |"
        )
    total = sum(data.bytes.values())
    lines.append(f"\nTotal on disk: {total / 1e6:.1f} MB for {sum(data.videos.values())} videos.\n")
    reasons = {}
    for per in data.rejected.values():
        for reason, n in per.items():
            reasons[reason] = reasons.get(reason, 0) + n
    lines.append("Rejected videos by reason: " + (", ".join(f"{r}: {n}" for r, n in sorted(reasons.items())) or "none") + "\n")
    lines.append(
        f"![videos per class]({plots.class_counts(data.videos_per_class, class_names, folder / 'videos_per_class.png')})\n"
    )
    lines.append(f"![frames per video]({plots.frame_histogram(data.frames, folder / 'frames_per_video.png')})\n")
    return "\n".join(lines)


def _teacher_section(teacher: TeacherFacts | None, expected_videos: dict[str, int], *, num_classes: int, loss: dict) -> str:
    lines = ["## Teacher cache\n"]
    if teacher is None:
        return "\n".join(lines + ["Missing: no teacher cache yet (run `make teacher-cache`).\n"])
    for split, (done, expected) in teacher.rows_done.items():
        videos = f" of {expected_videos[split]} videos in the shards" if split in expected_videos else ""
        lines.append(f"- {split}: {done}/{expected} shards done, {teacher.valid_rows[split]} valid rows{videos}")
    b = teacher.built_with
    lines.append(
        f"\nBuilt with {b['model']} (weights {b['weights']}, sha256 {b['weights_sha256']}...), "
        f"{b['frames']} frames per video, prompts {b['prompts']}.\n"
    )
    lines.append(_views_line(b.get("views") or {}))
    if teacher.top1 is None:
        lines.append("Zero-shot accuracy: no validation rows cached yet.\n")
    else:
        lines.append(
            f"Teacher zero-shot accuracy on validation ({teacher.evaluated} videos): top-1 {teacher.top1:.4f}, "
            f"top-5 {teacher.top5:.4f}.\n"
        )
    lines.append(_heads_table(teacher))
    head = teacher.student_head
    if head is not None:
        videos = teacher.evaluated or None  # the validation videos behind the head's top-1
        lines.append(expectation(head["name"], head.get("val_top1"), num_classes=num_classes, val_videos=videos, **loss) + "\n")
    return "\n".join(lines)


def _views_line(views: dict) -> str:
    count = views.get("count", 1)
    if count == 1:
        return "Views per training video: 1, the centre view (the student trains on other frames and crops).\n"
    return (
        f"Views per training video: {count} (seed {views['seed']}, {views['clip_frames']} frames each, "
        f"flip {'on' if views['flip'] else 'off'}), replayed by the student: its clips are the teacher's.\n"
    )


def _heads_table(teacher: TeacherFacts) -> str:
    if len(teacher.heads) <= 1:
        return "Teacher heads: none fitted yet (run `make teacher-head`); the zero-shot head is the only teacher.\n"
    lines = [
        "Teacher heads (`make teacher-head`): how good each head's distillation targets are on validation.\n",
        "| head | validation top-1 | top-5 | temperature | weight decay | fit time (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in teacher.heads.items():
        acc = (f"{r['val_top1']:.4f} | {r['val_top5']:.4f}") if "val_top1" in r else "n/a | n/a"
        wd = f"{r['weight_decay']:g}" if "weight_decay" in r else "-"
        lines.append(f"| {name} | {acc} | {r['temperature']:.3f} | {wd} | {r['fit_seconds']:.1f} |")
    s = teacher.student_head
    learned = f"{s['name']} (loss.teacher_head={s['asked']})" if s else "not known yet (no training run)"
    return "\n".join(lines) + f"\n\nThe student learned from: {learned}.\n"


def _optimiser_line(o: dict) -> str:
    given = f"train.lr {o['lr_given']:g} per {o['lr_batch']} clips" if o["lr_batch"] else f"train.lr {o['lr_given']:g} as given"
    schedule = o["schedule"] + (f" at epochs {o['lr_milestones']}" if o["schedule"] == "step" else "")
    groups = ", ".join(
        f"{g['parameters']:,} parameters at {g['lr_mult']:g}x lr, weight decay {g['weight_decay']:g}" for g in o["groups"]
    )
    return (
        f"Optimiser: {o['optimizer']}, effective lr {o['effective_lr']:.5g} ({given}, global batch {o['global_batch']}), "
        f"warm-up {o['warmup_epochs']:g} epochs, {schedule}, gradient clipped at {o['grad_clip']:g}; groups: {groups}.\n"
    )


def _training_section(training: TrainFacts | None, cfg: Config, folder: Path) -> str:
    lines = ["## Training\n"]
    if training is None or not training.train:
        return "\n".join(lines + ["Missing: no training metrics yet (run `make train-student`).\n"])
    last = training.train[-1]
    lines.append(
        f"{cfg.student.arch}, {cfg.loss.mode}; last logged step {last['step']} (epoch {last['epoch']}), "
        f"last loss {last['loss']:.4f}, {last['clips_per_s']:.1f} clips/s.\n"
    )
    if training.optimiser:
        lines.append(_optimiser_line(training.optimiser))
    if "teacher_agree" in last:
        lines.append(
            f"Student-teacher top-1 agreement on the training clips it last saw (the replayed views when the cache has "
            f"views): {last['teacher_agree']:.4f}.\n"
        )
    if training.best:
        lines.append(
            f"Best checkpoint: `best.pt`, epoch {training.best['epoch']}, step {training.best['step']}, "
            f"validation top-1 {training.best['top1']:.4f}.\n"
        )
    verdict = plateau([r["top1"] for r in training.val], last.get("top1"))  # the last training top-1 tells overfitting
    if verdict is not None:
        lines.append(("**" + verdict.sentence() + ".**" if verdict.flagged else verdict.sentence().capitalize() + ".") + "\n")
    if training.val:
        lines += ["| epoch | validation loss | top-1 | top-5 |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['epoch']} | {r['loss']:.4f} | {r['top1']:.4f} | {r['top5']:.4f} |" for r in training.val]
        lines.append("")
    lines.append(f"![loss components]({plots.losses(training.train, folder / 'loss.png')})\n")
    lines.append(f"![accuracy]({plots.accuracy(training.train, training.val, folder / 'accuracy.png')})\n")
    lines.append(f"![throughput]({plots.throughput(training.train, folder / 'throughput.png')})\n")
    lines.append("### Frame counts\n")
    if training.frame_counts is None:
        lines.append("Missing: no frame-count evaluation yet (written when training finishes).\n")
    else:
        counts = training.frame_counts
        trained = counts.get("trained_counts", [counts["trained_num_frames"]])
        if len(trained) > 1:
            lines.append(
                f"Trained frame-flexibly (FFN) at {', '.join(map(str, trained))} frames: each count has its own "
                "norms and alterations; other counts use the nearest trained one's.\n"
            )
        else:
            lines.append(f"Trained at {trained[0]} frames only.\n")
        lines += ["| frames | top-1 | top-5 |", "| --- | --- | --- |"]
        for k, r in sorted(counts["results"].items(), key=lambda kv: int(kv[0])):
            mark = " (trained)" if int(k) in trained else ""
            lines.append(f"| {k}{mark} | {r['top1']:.4f} | {r['top5']:.4f} |")
        lines.append(f"\n![frame counts]({plots.frame_counts(counts['results'], trained, folder / 'frame_counts.png')})\n")
    return "\n".join(lines)


def _test_section(cfg: Config) -> str:
    lines = ["## Test protocol\n"]
    path = cfg.paths.student_dir / "test" / "test.json"
    if not path.exists():
        return "\n".join(lines + ["Missing: no test-protocol evaluation yet (run `make evaluate`).\n"])
    facts = json.loads(path.read_text())
    protocols = list(dict.fromkeys(r["protocol"] for r in facts["rows"]))
    by = {(r["frames"], r["protocol"]): r for r in facts["rows"]}
    lines.append(
        f"`{Path(facts['checkpoint']).name}` (saved after epoch {facts['epoch']}), each video's softmax averaged over its views; "
        "single view: the centre clip and crop of validation during training.\n"
    )
    lines.append("| frames | " + " | ".join(f"{p} top-1 | {p} top-5" for p in protocols) + " |")
    lines.append("| --- |" + " --- | --- |" * len(protocols))
    for frames in sorted({r["frames"] for r in facts["rows"]}):
        cells = [f"{100 * by[(frames, p)]['top1']:.2f} | {100 * by[(frames, p)]['top5']:.2f}" for p in protocols]
        mark = " (trained)" if frames in facts["trained_counts"] else ""
        lines.append(f"| {frames}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _export_section(cfg: Config) -> str:
    path = cfg.paths.student_dir / "export" / "export.md"
    if not path.exists():
        return "## Export\n\nNot exported yet: `make export` writes the ONNX and torch.export files, checked and timed.\n"
    return "## Export\n\n" + path.read_text() + f"\nFiles in `{path.parent}`.\n"


def _teacher_student_table(classes: dict[int, dict], class_names: list[str]) -> str:
    """Teacher and student top-1 side by side per class, and the classes where the teacher leads or misleads."""
    lines = [
        "Per class, the teacher head and the student on the same validation videos (the student's mistakes that "
        "repeat the teacher's wrong answer are where the teacher pulls it down):\n",
        "| class | videos | teacher top-1 | student top-1 | student minus teacher | student's mistakes copying the teacher |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    rows = sorted(classes.items(), key=lambda kv: (kv[1]["student"] - kv[1]["teacher"]) / kv[1]["videos"])
    for c, r in rows:
        n = r["videos"]
        copied = f"{r['copied']}/{r['student_wrong']}" if r["student_wrong"] else "-"
        lines.append(
            f"| {class_names[c]} | {n} | {r['teacher'] / n:.3f} | {r['student'] / n:.3f} | "
            f"{(r['student'] - r['teacher']) / n:+.3f} | {copied} |"
        )
    ahead = [class_names[c] for c, r in rows if r["teacher"] > r["student"]][:5]
    misled = sorted(classes.items(), key=lambda kv: -kv[1]["copied"])
    misled = [f"{class_names[c]} ({r['copied']})" for c, r in misled if r["copied"]][:5]
    lines.append("")
    lines.append(f"Teacher ahead of the student (room for the teacher to help): {', '.join(ahead) or 'none'}.\n")
    lines.append(f"Most student mistakes copied from the teacher (where it hurt): {', '.join(misled) or 'none'}.\n")
    return "\n".join(lines)


def _classes_section(
    training: TrainFacts | None, teacher: TeacherFacts | None, data: DataFacts, class_names: list[str], folder: Path
) -> str:
    lines = ["## Classes and agreement with the teacher\n"]
    if training is None or training.predictions is None:
        return "\n".join(lines + ["Missing: no validation predictions yet (written when training finishes).\n"])
    pred = training.predictions
    per_class, confused = per_class_and_confusions(pred, len(class_names))
    lines.append(f"Validation predictions of the final model at {int(pred['num_frames'])} frames ({len(pred['ids'])} videos).\n")
    lines.append(f"![per-class accuracy]({plots.per_class(per_class, class_names, folder / 'per_class.png')})\n")
    lines += ["Most confused pairs (true -> predicted):\n", "| true class | predicted class | videos |", "| --- | --- | --- |"]
    lines += [f"| {class_names[t]} | {class_names[p]} | {n} |" for t, p, n in confused] or ["| none | | |"]
    lines.append("")
    if teacher is not None and teacher.logits:
        agree = agreement(pred, teacher.logits, data.rows_by_id.get("validation", {}))
        if agree:
            lines.append(
                f"Student versus its teacher head ({teacher.student_head['name'] if teacher.student_head else 'zero_shot'}) "
                f"on {agree[2]} validation videos: top-1 agreement {agree[0]:.4f}, "
                f"mean KL(teacher || student) {agree[1]:.4f} nats (the head's calibrated logits, temperature 1).\n"
            )
            classes = per_class_with_teacher(pred, teacher.logits, data.rows_by_id.get("validation", {}))
            lines.append(_teacher_student_table(classes, class_names))
    else:
        lines.append("Student-teacher agreement: no teacher logits for validation (vanilla run or no cache).\n")
    return "\n".join(lines)


def _against_vanilla_section(training: TrainFacts | None, vanilla: Path, class_names: list[str]) -> str:
    """Validation top-1 per class of this student beside a vanilla run's (the same videos), largest changes first."""
    lines = [f"## Against labels alone ({vanilla})\n"]
    other = vanilla / "val_predictions.npz"
    if training is None or training.predictions is None or not other.exists():
        missing = other if not other.exists() else "this run's validation predictions"
        return "\n".join(lines + [f"Missing: {missing} (written when a training run finishes).\n"])
    with np.load(other) as z:
        base = {k: z[k] for k in z.files}
    rows = per_class_against(training.predictions, base)
    if not rows:
        return "\n".join(lines + ["The two runs share no validation video: they were not trained on the same data set.\n"])
    total = sum(r["videos"] for r in rows.values())
    mine, theirs = (sum(r[k] for r in rows.values()) / total for k in ("student", "vanilla"))
    lines.append(
        f"Over the {total} validation videos both runs scored: this run {mine:.4f}, vanilla {theirs:.4f} "
        f"({mine - theirs:+.4f}).\n"
    )
    lines += ["| class | videos | vanilla top-1 | this run's top-1 | change |", "| --- | --- | --- | --- | --- |"]
    for c, r in sorted(rows.items(), key=lambda kv: -abs(kv[1]["student"] - kv[1]["vanilla"])):
        n, change = r["videos"], (r["student"] - r["vanilla"]) / r["videos"]
        lines.append(f"| {class_names[c]} | {n} | {r['vanilla'] / n:.3f} | {r['student'] / n:.3f} | {change:+.3f} |")
    return "\n".join(lines) + "\n"


def _classes_with_videos(data: DataFacts, class_names: list[str]) -> int:
    """The classes the training videos have (chance is one over these), else every class name."""
    counts = data.videos_per_class.get("train", {})
    return len([c for c, n in counts.items() if c >= 0 and n]) or len(class_names)
