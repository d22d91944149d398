"""Runs side by side (`make compare`): one Markdown table and two plots across any set of trained students.

A run is a student folder (config.yaml, metrics.jsonl, eval_frames.json, ...); a run folder or a
sweep folder given instead stands for every student folder below it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.report import plots
from pipeline.runtime.atomic import write_text
from pipeline.student.health import learned_word


@dataclass
class RunFacts:
    """What the comparison shows of one trained student."""

    name: str
    folder: Path
    settings: dict
    teacher_head: str
    best: dict[int, tuple[float, float]]  # frame count -> (top-1, top-5) of the trained model at that count
    best_val_top1: float  # the best validation top-1 over epochs, at the trained count
    epochs_done: int
    device_hours: float
    device: str
    val_curve: list[tuple[int, float]]

    @property
    def learned(self) -> str:
        """'plateau' when the validation curve never left its first epochs' level, 'yes' when it did, '-' when too short."""
        return learned_word([top1 for _, top1 in self.val_curve])


def task_weight(cfg: dict) -> float:
    """The label's weight a saved config's run trained with (`Config.task_weight`; configs saved before
    `loss.gamma_with_unlabelled` used `gamma` throughout)."""
    loss = cfg["loss"]
    return loss.get("gamma_with_unlabelled", loss["gamma"]) if cfg["train"].get("unlabelled_splits") else loss["gamma"]


def student_folders(paths: list[Path]) -> list[Path]:
    """Every student folder named or found below the given paths (those holding a config.yaml and metrics)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / "metrics.jsonl").exists() and (path / "config.yaml").exists():
            found.append(path)
            continue
        found += sorted(p.parent for p in path.rglob("metrics.jsonl") if (p.parent / "config.yaml").exists())
    return list(dict.fromkeys(found))


def jsonl(path: Path) -> list[dict]:
    """A JSON-lines file's records ([] when it is not there)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run_facts(folder: Path, names: dict[Path, str]) -> RunFacts:
    """One student folder's facts."""
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    metrics = jsonl(folder / "metrics.jsonl")
    val = [r for r in metrics if r.get("kind") == "val"]
    frames = json.loads((folder / "eval_frames.json").read_text()) if (folder / "eval_frames.json").exists() else {}
    best = {int(t): (r["top1"], r["top5"]) for t, r in frames.get("results", {}).items()}
    head = json.loads((folder / "teacher_head.json").read_text())["name"] if (folder / "teacher_head.json").exists() else "-"
    compute = jsonl(folder / "compute.jsonl")
    hours = sum(c["seconds"] * c["processes"] for c in compute) / 3600
    loss, train, teacher, student = cfg["loss"], cfg["train"], cfg["teacher"], cfg["student"]
    counts = train.get("frame_counts") or [student["num_frames"]]
    settings = {
        "student": student["arch"],
        "frames": "/".join(str(c) for c in sorted(counts)),
        "loss": loss["mode"],
        "alpha/beta/task": f"{loss['alpha']}/{loss['beta']}/{task_weight(cfg)}",
        "T": loss["temperature"],
        "views": teacher["views"],
        "lr": train["lr"],
        "warm-up": train.get("warmup_epochs", 0),
    }
    return RunFacts(
        name=names[folder],
        folder=folder,
        settings=settings,
        teacher_head=head if loss["mode"] == "distill" else "-",
        best=best,
        best_val_top1=max((r["top1"] for r in val), default=float("nan")),
        epochs_done=max((r["epoch"] + 1 for r in val), default=0),
        device_hours=hours,
        device=", ".join(sorted({c["device"] for c in compute})) or "-",
        val_curve=[(r["epoch"], r["top1"]) for r in val],
    )


def _short_names(folders: list[Path]) -> dict[Path, str]:
    """The shortest trailing path parts that tell the folders apart."""
    for depth in range(1, 6):
        names = {f: "/".join(f.parts[-depth:]) for f in folders}
        if len(set(names.values())) == len(folders):
            return names
    return {f: str(f) for f in folders}


def comparison_table(runs: list[RunFacts]) -> str:
    """One row per run: settings, best accuracy per evaluated frame count, epochs and device-hours."""
    counts = sorted({t for r in runs for t in r.best})
    keys = list(runs[0].settings) if runs else []
    head = [
        "run",
        *keys,
        "teacher head",
        *[f"top-1 / top-5 @{t}" for t in counts],
        "best val top-1",
        "learned",
        "epochs",
        "device-hours",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in sorted(runs, key=lambda r: -r.best_val_top1 if r.best_val_top1 == r.best_val_top1 else 0):
        cells = [r.name, *[str(r.settings.get(k, "-")) for k in keys], r.teacher_head]
        cells += [f"{100 * r.best[t][0]:.2f} / {100 * r.best[t][1]:.2f}" if t in r.best else "-" for t in counts]
        cells += [f"{100 * r.best_val_top1:.2f}", r.learned, str(r.epochs_done), f"{r.device_hours:.3f} ({r.device})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(paths: list[Path], *, out: Path) -> Path:
    """compare.md, compare.json and the plots (validation curves, best top-1 per frame count) in `out`."""
    folders = student_folders(paths)
    if not folders:
        raise FileNotFoundError(
            f"no trained student under {', '.join(map(str, paths))} (a folder with config.yaml and metrics.jsonl)"
        )
    names = _short_names(folders)
    runs = [run_facts(f, names) for f in folders]
    out.mkdir(parents=True, exist_ok=True)
    curves = plots.validation_curves({r.name: r.val_curve for r in runs}, out / "compare_val_top1.png")
    bars = plots.best_per_count({r.name: r.best for r in runs}, out / "compare_frame_counts.png")
    text = (
        f"# {len(runs)} runs compared\n\n"
        "Best: the trained model evaluated at each frame count at the end of training (eval_frames.json); "
        "best val top-1: the highest validation top-1 over epochs at the trained count; learned: PLATEAU "
        "when it never rose 0.05 above its first fifth of epochs (pipeline/student/health.py). Device-hours: "
        "training processes x their wall time (compute.jsonl; a segment killed without warning is not counted).\n\n"
        + comparison_table(runs)
        + f"\n![validation top-1 of every run]({curves})\n\n![top-1 per frame count]({bars})\n"
    )
    write_text(out / "compare.json", json.dumps([_as_json(r) for r in runs], indent=1))
    write_text(out / "compare.md", text)
    return out / "compare.md"


def _as_json(r: RunFacts) -> dict:
    return {
        "name": r.name,
        "folder": str(r.folder),
        "settings": r.settings,
        "teacher_head": r.teacher_head,
        "best": {str(t): {"top1": a, "top5": b} for t, (a, b) in r.best.items()},
        "best_val_top1": r.best_val_top1,
        "learned": r.learned,
        "epochs": r.epochs_done,
        "device_hours": r.device_hours,
    }
