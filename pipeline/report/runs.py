"""`make runs DIR=...`: every trained student under a folder, one line each."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from pipeline.report.compare import jsonl, student_folders, task_weight
from pipeline.student.health import learned_word

COLUMNS = ("run", "student", "frames", "recipe", "best val top-1", "learned", "epochs", "date", "commit", "device")


def recipe_line(cfg: dict) -> str:
    """The loss a student trained with, in a few words."""
    loss, train = cfg["loss"], cfg["train"]
    if loss["mode"] == "vanilla":
        text = "vanilla"
    else:
        text = f"distill {loss['teacher_head']}: {loss['alpha']}/{loss['beta']}/{task_weight(cfg)}, T {loss['temperature']}"
        text += f", gate {loss.get('teacher_gate', 'all')}"
        if loss.get("frame_alpha"):
            text += f", frames {loss['frame_alpha']}"
        if train.get("unlabelled_splits"):
            text += f", unlabelled {'+'.join(train['unlabelled_splits'])}"
    return f"{text}; {train['optimizer']} lr {train['lr']}"


def run_row(folder: Path, root: Path) -> dict[str, str]:
    """One student folder's line."""
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    val = [r for r in jsonl(folder / "metrics.jsonl") if r.get("kind") == "val"]
    starts = jsonl(folder / "provenance.jsonl")
    last = starts[-1] if starts else {}
    curve = [r["top1"] for r in val]
    counts = cfg["train"].get("frame_counts") or [cfg["student"]["num_frames"]]
    when = max((r["time"] for r in val), default=None)
    dirty = {True: " (dirty)", False: "", None: ""}[last.get("dirty")]
    return {
        "run": str(folder.relative_to(root)) if folder != root else folder.name,
        "student": cfg["student"]["arch"],
        "frames": "/".join(map(str, sorted(counts))),
        "recipe": recipe_line(cfg),
        "best val top-1": f"{max(curve):.4f}" if curve else "-",
        "learned": learned_word(curve),
        "epochs": f"{len(val)}/{cfg['train']['epochs']}",
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(when)) if when else "-",
        "commit": (last.get("commit") or "-")[:10] + dirty,
        "device": last.get("device", "-"),
    }


def runs_table(root: Path) -> str:
    """A Markdown table of every student under `root`, newest first."""
    folders = student_folders([root])
    if not folders:
        raise FileNotFoundError(f"no trained student under {root} (a folder with config.yaml and metrics.jsonl)")
    rows = sorted((run_row(f, root) for f in folders), key=lambda r: r["date"], reverse=True)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)
