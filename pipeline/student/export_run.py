"""The export stage: a trained checkpoint exported per frame count, checked, timed; <student>/export/."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from pipeline.config import Config
from pipeline.models import build_student, checkpoint
from pipeline.runtime.atomic import write_json, write_text
from pipeline.runtime.errors import UserError
from pipeline.runtime.progress import format_duration
from pipeline.ssv2.annotations import class_names, labels_path, load_labels
from pipeline.student.data import ClipSource, ClipSpec, make_loader, split_shards
from pipeline.student.export import export_count, latency
from pipeline.student.ffn import trained_counts

log = logging.getLogger(__name__)


class ExportMismatch(UserError):
    """An exported model's logits differ from PyTorch's by more than export.tolerance."""


def checkpoint_path(cfg: Config) -> Path:
    """export.checkpoint: best or latest in the student folder, or a file."""
    if cfg.export.checkpoint in ("best", "latest"):
        return cfg.paths.student_dir / f"{cfg.export.checkpoint}.pt"
    return Path(cfg.export.checkpoint)


def validation_clips(cfg: Config, *, frames: int, videos: int) -> torch.Tensor:
    """The first `videos` validation clips at `frames` (the centre view, as evaluation takes them), uint8."""
    shards, _ = split_shards(cfg, "validation")
    spec = ClipSpec(frames, cfg.student.image_size, videos, train=False)
    loader = make_loader(ClipSource(shards, spec, 0, 1, None, None, {}), workers=0, device=torch.device("cpu"))
    batch = next(iter(loader))
    return batch.clips.contiguous()


def run(cfg: Config) -> dict:
    """Export every trained count and every export.frame_counts; time the latter; write export.json/md."""
    start = time.monotonic()
    cfg = checkpoint.with_trained_settings(cfg)
    path = checkpoint_path(cfg)
    saved = checkpoint.load(path)
    if saved is None:
        raise FileNotFoundError(f"{path}: no such checkpoint (train first with `make train-student`, or set export.checkpoint)")
    trained = trained_counts(cfg)
    student = build_student(cfg.student, len(class_names(load_labels(labels_path(cfg)))), trained)
    student.load_state_dict(saved["model"])
    student.eval()
    out, size = cfg.paths.student_dir / "export", cfg.student.image_size
    rows = []
    for frames in sorted(set(trained) | set(cfg.export.frame_counts)):
        clips = validation_clips(cfg, frames=frames, videos=cfg.export.check_videos)
        done = export_count(student, frames=frames, size=size, out=out, check_clips=clips)
        times = latency(student, done.onnx, frames=frames, size=size, runs=cfg.export.latency_runs)
        rows.append(
            {
                "frames": frames,
                "trained": frames in trained,
                "onnx": done.onnx.name,
                "program": done.program.name,
                "onnx_max_abs_diff": done.onnx_diff,
                "program_max_abs_diff": done.program_diff,
                "check_clips": int(clips.shape[0]),
                **times,
            }
        )
        log.info(
            "exported %d frames: |ONNX - PyTorch| %.2e, |torch.export - PyTorch| %.2e", frames, done.onnx_diff, done.program_diff
        )
    facts = {"checkpoint": str(path), "epoch": saved["state"]["epoch"], "tolerance": cfg.export.tolerance, "rows": rows}
    write_json(out / "export.json", facts)
    write_text(out / "export.md", table(facts, arch=cfg.student.arch))
    log.info(
        "Exported %s from %s at %s frames into %s in %s.",
        cfg.student.arch,
        path.name,
        ", ".join(str(r["frames"]) for r in rows),
        out,
        format_duration(time.monotonic() - start),
    )
    worst = max(rows, key=lambda r: max(r["onnx_max_abs_diff"], r["program_max_abs_diff"]))
    if max(worst["onnx_max_abs_diff"], worst["program_max_abs_diff"]) > cfg.export.tolerance:
        raise ExportMismatch(
            f"{out / 'export.md'}: at {worst['frames']} frames the exported logits differ from PyTorch's by "
            f"{max(worst['onnx_max_abs_diff'], worst['program_max_abs_diff']):.2e} > export.tolerance "
            f"{cfg.export.tolerance:g}; do not deploy these files (report it with the table)"
        )
    return facts


def table(facts: dict, *, arch: str) -> str:
    """The checks and the latency table in Markdown."""
    lines = [
        f"{arch} from `{Path(facts['checkpoint']).name}` (epoch {facts['epoch']}): uint8 clips [B, T, 3, H, W] in, "
        f"logits out. Checked on real validation clips against PyTorch (float32, CPU); tolerance "
        f"{facts['tolerance']:g}. Latency: median ms per clip at batch 1. A frame-flexible student runs a count it "
        "was not trained at with the nearest trained count's norms.\n",
        "| frames | trained count | ONNX | torch.export | max abs diff ONNX | max abs diff torch.export "
        "| onnxruntime CPU, 1 thread | onnxruntime CPU, all threads | PyTorch GPU (bf16) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in facts["rows"]:
        gpu = f"{r['torch_gpu']:.2f}" if r["torch_gpu"] is not None else "no GPU here"
        lines.append(
            f"| {r['frames']} | {'yes' if r['trained'] else 'no'} | {r['onnx']} | {r['program']} "
            f"| {r['onnx_max_abs_diff']:.1e} | {r['program_max_abs_diff']:.1e} | {r['onnx_cpu_1_thread']:.2f} "
            f"| {r['onnx_cpu_all_threads']:.2f} ({r['cpu_threads']}) | {gpu} |"
        )
    return "\n".join(lines) + "\n"


def load_facts(student_dir: Path) -> dict | None:
    """export.json of a student folder, or None."""
    path = student_dir / "export" / "export.json"
    return json.loads(path.read_text()) if path.exists() else None
