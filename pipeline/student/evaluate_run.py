"""The evaluate stage: a trained checkpoint under the published test protocol at every evaluated
frame count, beside the single view; the table and every video's scores in <student>/test/."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from pipeline.accel.pool_loader import PoolKeeper
from pipeline.config import Config
from pipeline.models import build_student, checkpoint
from pipeline.runtime import dist
from pipeline.runtime.atomic import write_json, write_text
from pipeline.runtime.device import pick_device
from pipeline.runtime.dist import DistEnv
from pipeline.runtime.progress import format_duration
from pipeline.ssv2.annotations import class_names, labels_path, load_labels
from pipeline.student.ffn import trained_counts
from pipeline.student.protocol import Protocol, ProtocolResult, evaluate_views, protocols, table, write_scores
from pipeline.student.train import prepare_model

log = logging.getLogger(__name__)


def checkpoint_path(cfg: Config) -> Path:
    """eval.checkpoint: best or latest in the student folder, or a file."""
    if cfg.eval.checkpoint in ("best", "latest"):
        return cfg.paths.student_dir / f"{cfg.eval.checkpoint}.pt"
    return Path(cfg.eval.checkpoint)


def run(cfg: Config, env: DistEnv | None = None) -> list[dict]:
    """Evaluate the checkpoint; rank 0 writes test.json, test.md and scores-<frames>f-<clips>x<crops>.npz."""
    start, env = time.monotonic(), env or dist.from_environment()
    cfg = checkpoint.with_trained_settings(cfg)
    device = pick_device(cfg.train.device)
    device = dist.cuda_device(env.local_rank) if device.type == "cuda" else device
    dist.init(env, device)
    path = checkpoint_path(cfg)
    saved = checkpoint.load(path)
    if saved is None:
        raise FileNotFoundError(f"{path}: no such checkpoint (train first with `make train-student`, or set eval.checkpoint)")
    names = class_names(load_labels(labels_path(cfg)))
    model = prepare_model(build_student(cfg.student, len(names), trained_counts(cfg)), cfg, device)
    model.load_state_dict(saved["model"])
    counts = cfg.eval.frame_counts or sorted(set(cfg.train.eval_frame_counts) | set(trained_counts(cfg)))
    out = cfg.paths.student_dir / "test"
    rows: list[dict] = []
    with contextlib.closing(PoolKeeper()) if cfg.experimental.batch_pool else contextlib.nullcontext() as pools:
        for frames in counts:
            rows += _evaluate_count(cfg, model, env=env, device=device, frames=frames, pools=pools)
    if env.is_main:
        facts = {"checkpoint": str(path), "epoch": saved["state"]["epoch"], "trained_counts": trained_counts(cfg), "rows": rows}
        write_json(out / "test.json", facts)
        write_text(out / "test.md", table(rows))
        log.info(_summary(rows, path, time.monotonic() - start))
    return rows


def _evaluate_count(cfg: Config, model, *, env: DistEnv, device, frames: int, pools: PoolKeeper | None) -> list[dict]:
    """Every protocol at one frame count; rank 0 writes each one's scores."""
    rows = []
    for protocol in protocols(cfg):
        result = evaluate_views(cfg, model, env=env, device=device, num_frames=frames, protocol=protocol, pools=pools)
        rows.append(_row(frames, protocol, result))
        if env.is_main:
            path = cfg.paths.student_dir / "test" / f"scores-{frames}f-{protocol.clips}x{protocol.crops}.npz"
            write_scores(path, result, num_frames=frames, protocol=protocol)
    return rows


def _row(frames: int, protocol: Protocol, result: ProtocolResult) -> dict:
    return {
        "frames": frames,
        "protocol": protocol.name,
        "clips": protocol.clips,
        "crops": protocol.crops,
        "top1": result.top1,
        "top5": result.top5,
        "videos": result.videos,
        "videos_per_s": result.videos_per_s,
    }


def _summary(rows: list[dict], path: Path, seconds: float) -> str:
    best = max(rows, key=lambda r: r["top1"])
    return (
        f"evaluate: {path.name} at {len({r['frames'] for r in rows})} frame count(s) under {len({r['protocol'] for r in rows})} "
        f"protocol(s), {rows[0]['videos']} videos each, in {format_duration(seconds)}; best top-1 {100 * best['top1']:.2f} "
        f"({best['frames']} frames, {best['protocol']}); table in {path.parent / 'test' / 'test.md'}"
    )
