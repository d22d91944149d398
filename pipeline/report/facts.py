"""The facts a run report shows, read from the run's own files (never typed in by hand).

Each gatherer returns None when its stage has not produced its files yet, so a partial run gives a
partial report that says what is missing.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from pipeline.cache.store import head_array, head_records
from pipeline.config import Config
from pipeline.shards.plan import index_path, manifest_path
from pipeline.ssv2.annotations import class_names, labels_path, load_labels


@dataclass
class DataFacts:
    """What the shards stage produced, per split."""

    videos_per_class: dict[str, Counter] = field(default_factory=dict)  # split -> class index -> count
    frames: dict[str, list[int]] = field(default_factory=dict)  # split -> frames per video
    rejected: dict[str, Counter] = field(default_factory=dict)  # split -> reason kind -> count
    bytes: dict[str, int] = field(default_factory=dict)
    videos: dict[str, int] = field(default_factory=dict)
    labels: dict[str, dict[int, int]] = field(default_factory=dict)  # split -> row -> label
    rows_by_id: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> video id -> row
    missing: list[str] = field(default_factory=list)


def data_facts(cfg: Config) -> DataFacts:
    """Class counts, frame counts, rejects and bytes from the split indexes and shard manifests."""
    facts = DataFacts()
    out = cfg.paths.shards_dir
    for split in cfg.data.splits:
        if not index_path(out, split).exists():
            facts.missing.append(split)
            continue
        index = json.loads(index_path(out, split).read_text())
        classes, frames, reasons, rows, ids = Counter(), [], Counter(), {}, {}
        for shard in index["shards"]:
            manifest = json.loads(manifest_path(out, shard["name"]).read_text())
            for video in manifest["videos"]:
                classes[video.get("label", -1)] += 1
                frames.append(video["num_frames"])
                rows[video["row"]] = video.get("label", -1)
                ids[video["id"]] = video["row"]
            for reject in manifest["rejected"]:
                reasons[reject["reason"].split(":")[0]] += 1
        facts.videos_per_class[split], facts.frames[split], facts.rejected[split] = classes, frames, reasons
        facts.bytes[split], facts.videos[split], facts.labels[split] = index["bytes"], index["num_videos"], rows
        facts.rows_by_id[split] = ids
    return facts


@dataclass
class TeacherFacts:
    """What the teacher cache holds and how good its targets are."""

    rows_done: dict[str, tuple[int, int]]  # split -> (shards done, shards expected)
    valid_rows: dict[str, int]
    top1: float | None
    top5: float | None
    evaluated: int
    built_with: dict
    logits: dict[int, np.ndarray]  # validation row -> the student's teacher head's calibrated logits
    heads: dict[str, dict] = field(default_factory=dict)  # every fitted head's record (teacher-head stage)
    student_head: dict | None = None  # the head the student learned from (student/teacher_head.json)


def teacher_facts(cfg: Config, data: DataFacts) -> TeacherFacts | None:
    """Done shards and the zero-shot accuracy on validation, from the Zarr store."""
    if not cfg.paths.teacher_cache.exists():
        return None
    import zarr

    root = zarr.open_group(cfg.paths.teacher_cache, mode="r")
    heads = head_records(root)
    chosen_file = cfg.paths.student_dir / "teacher_head.json"
    student_head = json.loads(chosen_file.read_text()) if chosen_file.exists() else None
    array, temperature = "logits", 1.0  # agreement with the head the student learned from (zero_shot if unknown)
    if student_head is not None and student_head["name"] in heads:
        array, temperature = head_array(student_head["name"]), float(student_head["temperature"])
    done, valid, top1, top5, n, logits = {}, {}, None, None, 0, {}
    for split in cfg.data.splits:
        if split not in root:
            continue
        g = root[split]
        flags, ok = g["done"][:], g["valid"][:]
        done[split], valid[split] = (int(flags.sum()), len(flags)), int(ok.sum())
        if split == "validation" and split in data.labels:
            rows = np.array(sorted(r for r in data.labels[split] if ok[r]))
            if len(rows):
                table = g["logits"][:][rows, 0]  # validation: the centre view
                labels = np.array([data.labels[split][r] for r in rows])
                order = np.argsort(-table, axis=1)
                top1 = float((order[:, 0] == labels).mean())
                top5 = float((order[:, :5] == labels[:, None]).any(1).mean())
                n = len(rows)
                logits = dict(zip(rows.tolist(), g[array][:][rows, 0] / np.float32(temperature)))
    attrs = dict(root.attrs)
    built = {
        "model": attrs.get("teacher", {}).get("model"),
        "weights": attrs.get("teacher", {}).get("pretrained"),
        "weights_sha256": attrs.get("weights_sha256", "")[:16],
        "frames": attrs.get("teacher", {}).get("num_frames"),
        "prompts": attrs.get("teacher", {}).get("prompts"),
        "views": attrs.get("teacher", {}).get("views", {}),
    }
    return TeacherFacts(done, valid, top1, top5, n, built, logits, heads, student_head)


@dataclass
class TrainFacts:
    """What training logged."""

    train: list[dict]
    val: list[dict]
    best: dict | None
    frame_counts: dict | None
    predictions: dict | None
    optimiser: dict | None = None  # student/optimiser.json: the effective lr, its groups and schedule


def train_facts(cfg: Config) -> TrainFacts | None:
    """Metrics, the best checkpoint's state, the frame-count table and validation predictions."""
    folder = cfg.paths.student_dir
    metrics = folder / "metrics.jsonl"
    if not metrics.exists():
        return None
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    best = None
    if (folder / "best.pt").exists():
        from pipeline.models import checkpoint

        state = checkpoint.load(folder / "best.pt")["state"]
        best = {"epoch": state["epoch"] - 1, "step": state["step"], "top1": state["best_top1"]}
    counts = json.loads((folder / "eval_frames.json").read_text()) if (folder / "eval_frames.json").exists() else None
    predictions = None
    if (folder / "val_predictions.npz").exists():
        with np.load(folder / "val_predictions.npz") as z:
            predictions = {k: z[k] for k in z.files}
    optimiser = json.loads((folder / "optimiser.json").read_text()) if (folder / "optimiser.json").exists() else None
    return TrainFacts(
        [r for r in records if r["kind"] == "train"],
        [r for r in records if r["kind"] == "val"],
        best,
        counts,
        predictions,
        optimiser,
    )


def names(cfg: Config) -> list[str]:
    """Class names by index."""
    return class_names(load_labels(labels_path(cfg)))


def per_class_and_confusions(
    pred: dict, num_classes: int, top: int = 10
) -> tuple[dict[int, tuple[int, int]], list[tuple[int, int, int]]]:
    """(class -> (correct, total)), and the most frequent (true, predicted, count) mistakes."""
    labels, guess = pred["labels"], pred["logits"].astype(np.float32).argmax(1)
    per_class = {int(c): (int(((labels == c) & (guess == c)).sum()), int((labels == c).sum())) for c in np.unique(labels)}
    mistakes = Counter((int(t), int(p)) for t, p in zip(labels, guess) if t != p)
    return per_class, [(t, p, n) for (t, p), n in mistakes.most_common(top)]


def per_class_with_teacher(pred: dict, teacher_logits: dict[int, np.ndarray], rows_by_id: dict[str, int]) -> dict[int, dict]:
    """Per validation class: videos, teacher's and student's top-1, and the student's mistakes that repeat the teacher's."""
    out: dict[int, dict] = {}
    for vid, label, logits in zip(pred["ids"], pred["labels"], pred["logits"]):
        row = rows_by_id.get(vid)
        if row not in teacher_logits:
            continue
        t, s = int(np.argmax(teacher_logits[row])), int(np.argmax(logits.astype(np.float32)))
        c = out.setdefault(int(label), {"videos": 0, "teacher": 0, "student": 0, "copied": 0, "student_wrong": 0})
        c["videos"] += 1
        c["teacher"] += t == label
        c["student"] += s == label
        c["student_wrong"] += s != label
        c["copied"] += s != label and s == t
    return out


def agreement(pred: dict, teacher_logits: dict[int, np.ndarray], rows_by_id: dict[str, int]) -> tuple[float, float, int] | None:
    """(top-1 agreement, mean KL(teacher || student) at T=1, videos) over videos in both."""
    pairs = [
        (teacher_logits[rows_by_id[i]], s) for i, s in zip(pred["ids"], pred["logits"]) if rows_by_id.get(i) in teacher_logits
    ]
    if not pairs:
        return None
    t = np.stack([p[0] for p in pairs]).astype(np.float64)
    s = np.stack([p[1] for p in pairs]).astype(np.float64)
    log_pt = t - np.logaddexp.reduce(t, axis=1, keepdims=True)
    log_ps = s - np.logaddexp.reduce(s, axis=1, keepdims=True)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(1).mean()
    return float((t.argmax(1) == s.argmax(1)).mean()), float(kl), len(pairs)


def per_class_against(pred: dict, base: dict) -> dict[int, dict]:
    """Per validation class, over the videos both prediction sets hold: videos, and top-1 hits of each."""
    theirs = {i: int(np.argmax(logits.astype(np.float32))) for i, logits in zip(base["ids"], base["logits"])}
    out: dict[int, dict] = {}
    for vid, label, logits in zip(pred["ids"], pred["labels"], pred["logits"]):
        if vid not in theirs:
            continue
        c = out.setdefault(int(label), {"videos": 0, "student": 0, "vanilla": 0})
        c["videos"] += 1
        c["student"] += int(np.argmax(logits.astype(np.float32))) == label
        c["vanilla"] += theirs[vid] == label
    return out
