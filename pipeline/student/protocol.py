"""The published test protocol on a checkpoint: every validation video as `eval.clips` x `eval.crops`
views, the softmax averaged over its views, at each evaluated frame count.

Ranks take their own shards and one pass of them; rank 0 gathers every video's averaged scores
once. The single view (1 x 1: the centre clip and crop that validation during training uses) is
evaluated beside it, so the two read side by side.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.accel.pool_loader import PoolKeeper
from pipeline.config import Config
from pipeline.models import input_normalizer
from pipeline.runtime import dist
from pipeline.runtime.atomic import write_bytes
from pipeline.runtime.cpus import EVAL_RESERVE, loader_workers
from pipeline.runtime.device import autocast_dtype
from pipeline.runtime.dist import DistEnv
from pipeline.runtime.progress import Progress
from pipeline.student.data import ClipSource, ClipSpec, make_loader, split_shards, to_device
from pipeline.student.evaluate import gather_predictions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Protocol:
    """Views per video: clips x crops, and the crops' size (three crops) ."""

    clips: int
    crops: int
    size: int

    @property
    def name(self) -> str:
        """'2 clips x 3 crops'."""
        return f"{self.clips} clip{'s' * (self.clips > 1)} x {self.crops} crop{'s' * (self.crops > 1)}"


@dataclass
class ProtocolResult:
    """Top-1/top-5 of the view-averaged softmax over every video, and (rank 0) each video's scores."""

    top1: float
    top5: float
    videos: int
    videos_per_s: float  # over the whole pass, loader start included
    predictions: dict | None
    steady_videos_per_s: float = float("nan")  # after the first batch: what the loader sustains once started


@torch.no_grad()
def evaluate_views(
    cfg: Config,
    model: torch.nn.Module,
    *,
    env: DistEnv,
    device: torch.device,
    num_frames: int,
    protocol: Protocol,
    pools: PoolKeeper | None = None,
) -> ProtocolResult:
    """Every video of cfg.eval.split at `num_frames`, its views' softmax averaged; `pools` keeps the
    loader's page-locked pool between calls (none: batches in shared-memory segments)."""
    shards, videos = split_shards(cfg, cfg.eval.split)
    spec = ClipSpec(
        num_frames,
        cfg.student.image_size,
        cfg.eval.batch_size,
        train=False,
        test_clips=protocol.clips,
        test_crops=protocol.crops,
        test_size=protocol.size,
    )
    workers = min(eval_workers(cfg, env), max(1, len(shards) // env.world_size))
    source = ClipSource(shards, spec, env.rank, env.world_size, None, None, {})
    loader = make_loader(source, workers=workers, device=device, keeper=pools)
    norm, dtype = input_normalizer(model, device), autocast_dtype(device, cfg.train.precision)
    views = protocol.clips * protocol.crops
    model.eval()
    progress = Progress(f"{protocol.name}, {num_frames} frames, rank {env.rank}", total=videos // env.world_size or 1)
    ids, labels, scores, hits = [], [], [], [0, 0, 0]
    first: tuple[float, int] | None = None
    for batch in loader:
        batch = to_device(batch, device)
        b = len(batch.labels)
        first = first or (progress.elapsed, b)
        clips = batch.clips.view(b * views, num_frames, *batch.clips.shape[2:])
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(norm(clips)).logits
        probs = logits.float().softmax(-1).view(b, views, -1).mean(1)
        top5 = probs.topk(min(5, probs.shape[1]), dim=1).indices
        hits = [
            hits[0] + int((top5[:, 0] == batch.labels).sum()),
            hits[1] + int((top5 == batch.labels[:, None]).any(1).sum()),
            hits[2] + b,
        ]
        ids += batch.ids
        labels.append(batch.labels.cpu())
        scores.append(probs.cpu())
        progress.update(b)
    total = dist.all_reduce_sum([float(h) for h in hits], device)
    n = max(1.0, total[2])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = progress.elapsed
    rate = total[2] / max(elapsed, 1e-9)
    steady = (hits[2] - first[1]) / max(elapsed - first[0], 1e-9) if first and hits[2] > first[1] else float("nan")
    predictions = gather_predictions(ids, labels, scores, env)
    return ProtocolResult(total[0] / n, total[1] / n, int(total[2]), rate, predictions, steady_videos_per_s=steady)


def eval_workers(cfg: Config, env: DistEnv) -> int:
    """Loader processes per rank for the test protocol: train.num_workers, or for -1 the rank's CPUs
    less EVAL_RESERVE (no optimiser step to leave room for)."""
    return loader_workers(cfg.train.num_workers, EVAL_RESERVE, env.local_world_size)


def write_scores(path: Path, result: ProtocolResult, *, num_frames: int, protocol: Protocol) -> None:
    """ids, labels and the view-averaged softmax scores (float16) of every video, as .npz."""
    p = result.predictions
    buffer = io.BytesIO()
    np.savez(
        buffer,
        ids=np.asarray(p["ids"]),
        labels=p["labels"],
        scores=p["logits"].astype(np.float16),
        num_frames=np.asarray(num_frames),
        clips=np.asarray(protocol.clips),
        crops=np.asarray(protocol.crops),
    )
    write_bytes(path, buffer.getvalue())


def protocols(cfg: Config) -> list[Protocol]:
    """The single view (the trainer's validation) and the configured clips x crops."""
    single = Protocol(1, 1, cfg.student.image_size)
    if cfg.eval.crops not in (1, 3):
        raise ValueError(f"eval.crops={cfg.eval.crops}: 1 (centre) or 3 (ThreeCrop)")
    asked = Protocol(cfg.eval.clips, cfg.eval.crops, cfg.eval.image_size if cfg.eval.crops == 3 else cfg.student.image_size)
    return [single] if asked == single else [single, asked]


def table(rows: list[dict]) -> str:
    """The published layout: one line per frame count and protocol."""
    lines = ["| frames | views | top-1 | top-5 | videos |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['frames']} | {r['protocol']} | {100 * r['top1']:.2f} | {100 * r['top5']:.2f} | {r['videos']} |")
    return "\n".join(lines) + "\n"
