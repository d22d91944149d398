"""Validation of a student: loss and top-1/top-5 over a split, at any number of frames."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import dist
from .config import Config
from .device import autocast_dtype
from .distill_loss import distill_loss
from .dist import DistEnv
from .atomic import write_json, write_text
from .frames import IMAGENET_MEAN, IMAGENET_STD, normalizer
from .shard_plan import read_index
from .train_data import CacheSource, ClipBatch, ClipSpec, ShardClips, make_loader, train_workers


@dataclass
class EvalResult:
    """Means over every video of the split (summed over ranks)."""

    loss: float
    top1: float
    top5: float
    videos: int
    predictions: dict | None = None  # ids, labels, logits of every video (when asked for; rank 0 only)


def split_shards(cfg: Config, split: str) -> tuple[list[str], int]:
    """The split's shard paths and its number of videos, from the shards index."""
    index = read_index(cfg.paths.shards_dir, split)
    return [str(cfg.paths.shards_dir / s["name"]) for s in index["shards"]], index["num_videos"]


def to_device(batch: ClipBatch, device: torch.device) -> ClipBatch:
    """The batch on `device` (asynchronously where the host memory is pinned)."""
    move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
    return ClipBatch(move(batch.clips), move(batch.labels), move(batch.teacher_feature), move(batch.teacher_logits), batch.ids)


@torch.no_grad()
def evaluate(cfg: Config, model: torch.nn.Module, env: DistEnv, device: torch.device, num_frames: int,
             split: str = "validation", collect: bool = False) -> EvalResult:
    """Loss (the training loss when the cache is there, else CE) and accuracy with centre clips;
    with `collect`, also every video's logits (gathered on rank 0)."""
    shards, _ = split_shards(cfg, split)
    distill = cfg.loss.mode == "distill"
    spec = ClipSpec(num_frames, cfg.student.image_size, cfg.train.batch_size, train=False, seed=cfg.train.seed)
    cache = CacheSource(cfg.paths.teacher_cache, split) if distill else None
    workers = min(train_workers(cfg, env), max(1, len(shards) // env.world_size))
    loader = make_loader(ShardClips(shards, spec, env.rank, env.world_size, None, cache, {}), workers, device, cfg.train.batch_pool)
    norm = normalizer(IMAGENET_MEAN, IMAGENET_STD, device)
    dtype = autocast_dtype(device, cfg.train.precision)
    was_training = model.training
    model.eval()
    sums = [0.0, 0.0, 0.0, 0.0]  # loss * n, top-1 hits, top-5 hits, n
    ids, labels, logits = [], [], []
    for batch in loader:
        batch = to_device(batch, device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(norm(batch.clips))
        loss = distill_loss(cfg.loss, out.logits, out.feature, batch.labels, batch.teacher_logits, batch.teacher_feature)
        top = out.logits.float().topk(min(5, out.logits.shape[-1]), dim=-1).indices
        hit = top == batch.labels[:, None]
        n = len(batch.labels)
        sums = [sums[0] + float(loss.total) * n, sums[1] + int(hit[:, :1].any(1).sum()),
                sums[2] + int(hit.any(1).sum()), sums[3] + n]
        if collect:
            ids += batch.ids
            labels.append(batch.labels.cpu())
            logits.append(out.logits.float().cpu())
    model.train(was_training)
    total = dist.all_reduce_sum(sums, device)
    n = max(1.0, total[3])
    predictions = _gather(ids, labels, logits, env) if collect else None
    return EvalResult(total[0] / n, total[1] / n, total[2] / n, int(total[3]), predictions)


def _gather(ids: list, labels: list, logits: list, env: DistEnv) -> dict | None:
    mine = {"ids": ids, "labels": torch.cat(labels).numpy() if labels else [], "logits": torch.cat(logits).numpy() if logits else []}
    parts = [mine]
    if env.world_size > 1:
        parts = [None] * env.world_size
        torch.distributed.all_gather_object(parts, mine)
    if not env.is_main:
        return None
    import numpy as np

    return {"ids": [i for p in parts for i in p["ids"]],
            "labels": np.concatenate([np.asarray(p["labels"]) for p in parts if len(p["labels"])]),
            "logits": np.concatenate([np.asarray(p["logits"]) for p in parts if len(p["logits"])])}


def write_predictions(folder: Path, result: EvalResult, num_frames: int) -> None:
    """`val_predictions.npz`: ids, labels and float16 logits of every validation video."""
    import io

    import numpy as np

    from .atomic import write_bytes

    p = result.predictions
    buffer = io.BytesIO()
    np.savez(buffer, ids=np.asarray(p["ids"]), labels=p["labels"], logits=p["logits"].astype(np.float16),
             num_frames=np.asarray(num_frames))
    write_bytes(Path(folder) / "val_predictions.npz", buffer.getvalue())


def frame_count_table(results: dict[int, EvalResult], trained_at: int) -> str:
    """A Markdown table of accuracy at each evaluated frame count."""
    lines = ["| frames | top-1 | top-5 | loss | videos |", "| --- | --- | --- | --- | --- |"]
    for frames, r in sorted(results.items()):
        mark = " (trained)" if frames == trained_at else ""
        lines.append(f"| {frames}{mark} | {r.top1:.4f} | {r.top5:.4f} | {r.loss:.4f} | {r.videos} |")
    return "\n".join(lines) + "\n"


def write_frame_count_eval(folder: Path, results: dict[int, EvalResult], trained_at: int) -> None:
    """eval_frames.json and eval_frames.md next to the checkpoints."""

    write_json(Path(folder) / "eval_frames.json", {
        "trained_num_frames": trained_at,
        "results": {str(k): {f: getattr(v, f) for f in ("loss", "top1", "top5", "videos")} for k, v in sorted(results.items())},
    })
    write_text(Path(folder) / "eval_frames.md", frame_count_table(results, trained_at))
