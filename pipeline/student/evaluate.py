"""Validation of a student: loss and top-1/top-5 over a split, at any number of frames."""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.accel.pool_loader import PoolKeeper
from pipeline.cache.heads import HeadChoice
from pipeline.config import Config
from pipeline.models import input_normalizer
from pipeline.runtime import dist
from pipeline.runtime.atomic import write_bytes, write_json, write_text
from pipeline.runtime.device import autocast_dtype
from pipeline.runtime.dist import DistEnv
from pipeline.student.data import ClipSource, ClipSpec, make_loader, split_shards, teacher_source, to_device, train_workers
from pipeline.student.loss import distill_loss, run_loss
from pipeline.student.metrics import topk_hits


@dataclass
class EvalResult:
    """Means over every video of the split (summed over ranks)."""

    loss: float
    top1: float
    top5: float
    videos: int
    predictions: dict | None = None  # ids, labels, logits of every video (when asked for; rank 0 only)


@torch.no_grad()
def evaluate(
    cfg: Config,
    model: torch.nn.Module,
    *,
    env: DistEnv,
    device: torch.device,
    num_frames: int,
    split: str = "validation",
    collect: bool = False,
    pools: PoolKeeper | None = None,
    teacher: HeadChoice | None = None,
) -> EvalResult:
    """Loss (the training loss when the cache is there, else CE) and accuracy with centre clips;
    with `collect`, also every video's logits (gathered on rank 0). `pools` keeps the loader's
    page-locked pool between calls (none: batches in shared-memory segments); `teacher` is the head
    whose logits the loss compares with (zero_shot when none is given)."""
    shards, _ = split_shards(cfg, split)
    spec = ClipSpec(num_frames, cfg.student.image_size, cfg.train.batch_size, train=False, seed=cfg.train.seed)
    cache = teacher_source(cfg, split, teacher, frames=False)
    no_frames = dataclasses.replace(run_loss(cfg), frame_alpha=0.0)
    workers = min(train_workers(cfg, env), max(1, len(shards) // env.world_size))
    source = ClipSource(shards, spec, env.rank, env.world_size, None, cache, {})
    loader = make_loader(source, workers=workers, device=device, keeper=pools)
    norm = input_normalizer(model, device)
    dtype = autocast_dtype(device, cfg.train.precision)
    was_training = model.training
    model.eval()
    sums = [0.0, 0.0, 0.0, 0.0]  # loss * n, top-1 hits, top-5 hits, n
    ids, labels, logits = [], [], []
    for batch in loader:
        batch = to_device(batch, device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(norm(batch.clips))
        # validation clips carry no teacher frames: the validation loss leaves the frame term out
        loss = distill_loss(no_frames, out.logits, out.feature, batch.labels, batch.teacher_logits, batch.teacher_feature)
        top1, top5 = topk_hits(out.logits.float(), batch.labels)
        n = len(batch.labels)
        sums = [sums[0] + float(loss.total) * n, sums[1] + int(top1.sum()), sums[2] + int(top5.sum()), sums[3] + n]
        if collect:
            ids += batch.ids
            labels.append(batch.labels.cpu())
            logits.append(out.logits.float().cpu())
    model.train(was_training)
    total = dist.all_reduce_sum(sums, device)
    n = max(1.0, total[3])
    predictions = gather_predictions(ids, labels, logits, env) if collect else None
    return EvalResult(total[0] / n, total[1] / n, total[2] / n, int(total[3]), predictions)


def gather_predictions(ids: list, labels: list, logits: list, env: DistEnv) -> dict | None:
    """Every rank's ids, labels and scores on rank 0 (ranks may hold different numbers of videos)."""
    mine = {
        "ids": ids,
        "labels": torch.cat(labels).numpy() if labels else [],
        "logits": torch.cat(logits).numpy() if logits else [],
    }
    parts = [mine]
    if env.world_size > 1:
        parts = [None] * env.world_size
        torch.distributed.all_gather_object(parts, mine)
    if not env.is_main:
        return None
    return {
        "ids": [i for p in parts for i in p["ids"]],
        "labels": np.concatenate([np.asarray(p["labels"]) for p in parts if len(p["labels"])]),
        "logits": np.concatenate([np.asarray(p["logits"]) for p in parts if len(p["logits"])]),
    }


def write_predictions(folder: Path, result: EvalResult, num_frames: int) -> None:
    """`val_predictions.npz`: ids, labels and float16 logits of every validation video."""
    p = result.predictions
    buffer = io.BytesIO()
    np.savez(
        buffer,
        ids=np.asarray(p["ids"]),
        labels=p["labels"],
        logits=p["logits"].astype(np.float16),
        num_frames=np.asarray(num_frames),
    )
    write_bytes(Path(folder) / "val_predictions.npz", buffer.getvalue())


def frame_count_table(results: dict[int, EvalResult], trained: list[int]) -> str:
    """A Markdown table of accuracy at each evaluated frame count."""
    lines = ["| frames | top-1 | top-5 | loss | videos |", "| --- | --- | --- | --- | --- |"]
    for frames, r in sorted(results.items()):
        mark = " (trained)" if frames in trained else ""
        lines.append(f"| {frames}{mark} | {r.top1:.4f} | {r.top5:.4f} | {r.loss:.4f} | {r.videos} |")
    return "\n".join(lines) + "\n"


def write_frame_count_eval(folder: Path, results: dict[int, EvalResult], trained: list[int]) -> None:
    """eval_frames.json and eval_frames.md next to the checkpoints; `trained`: the frame counts trained."""

    write_json(
        Path(folder) / "eval_frames.json",
        {
            "trained_num_frames": max(trained),  # the clip length trained on (FFN: the highest count)
            "trained_counts": sorted(trained),
            "results": {
                str(k): {f: getattr(v, f) for f in ("loss", "top1", "top5", "videos")} for k, v in sorted(results.items())
            },
        },
    )
    write_text(Path(folder) / "eval_frames.md", frame_count_table(results, trained))
