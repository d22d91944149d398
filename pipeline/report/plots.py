"""The report's figures: headless matplotlib, one PNG per question, titled and labelled with units."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def class_counts(counts: dict[str, dict[int, int]], names: list[str], path: Path) -> str:
    """Videos per class, one bar group per split (classes that occur only)."""
    classes = sorted({c for per in counts.values() for c in per})
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(classes) + 2), 4.5))
    width = 0.8 / max(1, len(counts))
    for k, (split, per) in enumerate(counts.items()):
        ax.bar([i + k * width for i in range(len(classes))], [per.get(c, 0) for c in classes], width, label=split)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(classes))])
    ax.set_xticklabels([names[c][:38] if c >= 0 else "unlabelled" for c in classes], rotation=60, ha="right", fontsize=7)
    ax.set(title="Videos per class", xlabel="class", ylabel="videos")
    ax.legend()
    return _save(fig, path)


def frame_histogram(frames: dict[str, list[int]], path: Path) -> str:
    """Frames per video, per split."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for split, values in frames.items():
        ax.hist(values, bins=20, alpha=0.6, label=split)
    ax.set(title="Frames per video", xlabel="frames (at the native 12 fps)", ylabel="videos")
    ax.legend()
    return _save(fig, path)


def losses(train: list[dict], path: Path) -> str:
    """Loss components and learning rate over steps."""
    steps = [r["step"] for r in train]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (
        ("loss", "total"),
        ("loss_feature", "feature (0.5 MSE)"),
        ("loss_response", "response (KL T^2)"),
        ("loss_task", "task (0.1 CE)"),
    ):
        ax.plot(steps, [r[key] for r in train], label=label)
    ax.set(title="Training loss by component", xlabel="step", ylabel="loss (mean over the log interval)")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in train], "k:", label="learning rate")
    ax2.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8)
    return _save(fig, path)


def accuracy(train: list[dict], val: list[dict], path: Path) -> str:
    """Train and validation top-1/top-5 per epoch."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    epochs = sorted({r["epoch"] for r in train})
    last = {e: [r for r in train if r["epoch"] == e][-1] for e in epochs}
    ax.plot(epochs, [last[e]["top1"] for e in epochs], "o-", label="train top-1 (last log of the epoch)")
    ax.plot(epochs, [last[e].get("top5", float("nan")) for e in epochs], "o--", label="train top-5")
    ax.plot([r["epoch"] for r in val], [r["top1"] for r in val], "s-", label="validation top-1")
    ax.plot([r["epoch"] for r in val], [r["top5"] for r in val], "s--", label="validation top-5")
    ax.set(title="Accuracy per epoch", xlabel="epoch", ylabel="accuracy (fraction)", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    return _save(fig, path)


def throughput(train: list[dict], path: Path) -> str:
    """Training throughput over time."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    start = train[0]["time"]
    ax.plot([(r["time"] - start) / 60 for r in train], [r["clips_per_s"] for r in train], ".-")
    ax.set(title="Training throughput", xlabel="time since the first log (minutes)", ylabel="clips/s (all ranks)")
    return _save(fig, path)


def frame_counts(results: dict[str, dict], trained: list[int], path: Path) -> str:
    """Top-1 at each evaluated frame count, the trained ones marked."""
    counts = sorted(int(k) for k in results)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(counts, [results[str(c)]["top1"] for c in counts], "o-", label="validation top-1")
    ax.plot(counts, [results[str(c)]["top5"] for c in counts], "s--", label="validation top-5")
    for i, count in enumerate(trained):
        label = f"trained at {', '.join(map(str, trained))} frames" if i == 0 else None
        ax.axvline(count, color="grey", linestyle=":", label=label)
    ax.set(
        title="Accuracy by frames per clip",
        xlabel="frames per clip at evaluation",
        ylabel="accuracy (fraction)",
        xticks=counts,
        ylim=(0, 1.02),
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


def per_class(per_class: dict[int, tuple[int, int]], names: list[str], path: Path) -> str:
    """Validation accuracy of each class present, lowest first."""
    items = sorted(per_class.items(), key=lambda kv: kv[1][0] / max(1, kv[1][1]))
    fig, ax = plt.subplots(figsize=(7, max(3, 0.3 * len(items) + 1.5)))
    ax.barh([names[c][:45] for c, _ in items], [ok / max(1, n) for _, (ok, n) in items])
    ax.set(title="Validation top-1 per class", xlabel="accuracy (fraction)", ylabel="class", xlim=(0, 1))
    ax.tick_params(axis="y", labelsize=7)
    return _save(fig, path)


def validation_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> str:
    """Validation top-1 per epoch, one line per run."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, points in curves.items():
        if points:
            ax.plot([e for e, _ in points], [a for _, a in points], "o-", label=name, markersize=3)
    ax.set(title="Validation top-1 per epoch, every run", xlabel="epoch", ylabel="top-1 (fraction)", ylim=(0, 1.02))
    ax.legend(fontsize=6)
    return _save(fig, path)


def best_per_count(best: dict[str, dict[int, tuple[float, float]]], path: Path) -> str:
    """Top-1 at each evaluated frame count, one line per run."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, results in best.items():
        counts = sorted(results)
        if counts:
            ax.plot(counts, [results[t][0] for t in counts], "o-", label=name, markersize=3)
    ax.set(title="Top-1 at each evaluated frame count", xlabel="frames per clip", ylabel="top-1 (fraction)", ylim=(0, 1.02))
    ax.legend(fontsize=6)
    return _save(fig, path)
