"""A small CLIP pretrained here (`make pretrain-teacher`): the proxy benchmark's stand-in for real CLIP.

Real CLIP learns objects and places from images and their captions and nothing about time. This
trains an open_clip model of the same kind (`teacher_pretrain.model`, an open_clip config shipped in
pipeline/teacher/resources/) with open_clip's own contrastive loss (`ClipLoss`) on single frames of
the proxy set's teacher corpus (pipeline/ssv2/proxy.py: videos drawn with seeds no student video
has), each paired with a caption of that frame alone ("a red ball next to a brown box"), never with
its class or direction. The frames go through the teacher stage's own geometry (centred square,
bicubic antialiased resize) and the model's normalisation, so the cache sees what training saw.

The checkpoint is a plain open_clip state dict: `teacher.model=<model> teacher.pretrained=<file>`
uses it wherever a real CLIP goes (cache, views, heads), as a downloaded one would be.
"""

from __future__ import annotations

import io
import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from pipeline.config import Config
from pipeline.runtime import atomic
from pipeline.runtime.device import pick_device
from pipeline.runtime.progress import Progress
from pipeline.ssv2 import proxy
from pipeline.ssv2.frames import normalize, resize_crop
from pipeline.teacher import clip  # noqa: F401 (registers the project's open_clip model configs)

log = logging.getLogger(__name__)
CORPUS_SEED = 1_000_003  # the corpus' videos: another seed than any split's


@dataclass
class PretrainSummary:
    """What `make pretrain-teacher` made and how well it matches held-out captions."""

    checkpoint: str
    model: str
    pairs: int
    steps: int
    seconds: float
    final_loss: float
    heldout_caption_top1: float  # image -> the right caption among the held-out set's distinct captions
    heldout_text_top1_chance: float


def checkpoint_path(cfg: Config) -> Path:
    """Where the pretrained teacher is written: teacher_pretrain.out, else <run_dir>/teacher_pretrain/<model>.pt."""
    if cfg.teacher_pretrain.out:
        return Path(cfg.teacher_pretrain.out)
    return Path(cfg.paths.run_dir) / "teacher_pretrain" / f"{cfg.teacher_pretrain.model}.pt"


def _render(args: tuple[int, int, int, int]) -> tuple[np.ndarray, list[str]]:
    seed, frames, lo, hi = args
    return proxy.corpus_video(seed, frames, lo, hi)


def corpus(cfg: Config, size: int, videos: int, offset: int = 0) -> tuple[torch.Tensor, list[str]]:
    """uint8 frames [N, 3, size, size] of the teacher corpus and their captions.

    Worker processes render (numpy only: torch's thread pool does not survive a fork); this process
    crops and resizes as the teacher stage does.
    """
    syn, tp = cfg.synthetic, cfg.teacher_pretrain
    base = CORPUS_SEED + syn.seed * 7919 + offset
    jobs = [(base + i, tp.frames_per_video, syn.min_frames, syn.max_frames) for i in range(videos)]
    frames, texts = [], []
    progress = Progress("teacher corpus videos", len(jobs), logger=log)
    with ProcessPoolExecutor(max(tp.workers, 1)) as pool:
        for rgb, caption in pool.map(_render, jobs, chunksize=16):
            frames.append(resize_crop(torch.from_numpy(rgb).permute(0, 3, 1, 2), size))
            texts.extend(caption)
            progress.update()
    return torch.cat(frames), texts


def run(cfg: Config) -> PretrainSummary:
    """Render the corpus, train with ClipLoss, write the checkpoint and its record; returns the summary."""
    tp = cfg.teacher_pretrain
    out = checkpoint_path(cfg)
    torch.manual_seed(tp.seed)
    device = pick_device(tp.device)
    model = open_clip.create_model(tp.model, pretrained=None).to(device)
    pre = open_clip.get_model_preprocess_cfg(model)
    size = pre["size"] if isinstance(pre["size"], int) else pre["size"][0]
    tokenizer = open_clip.get_tokenizer(tp.model)
    frames, texts = corpus(cfg, size, tp.videos)
    held_frames, held_texts = corpus(cfg, size, tp.heldout_videos, offset=10_000_000)
    log.info(
        "teacher corpus: %d frame-caption pairs (%d distinct captions), held out %d", len(texts), len(set(texts)), len(held_texts)
    )
    tokens = tokenizer(texts)
    start = time.monotonic()
    loss = _train(model, frames, tokens, pre, tp, device)
    top1, chance = _caption_top1(model, held_frames, held_texts, tokenizer, pre, device)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(out, _state_bytes(model))
    summary = PretrainSummary(str(out), tp.model, len(texts), tp.steps, time.monotonic() - start, loss, top1, chance)
    atomic.write_json(out.with_suffix(".json"), {"summary": asdict(summary), "settings": asdict(tp)})
    log.info(
        "pretrained %s on %d frame-caption pairs in %.0f s (%d steps, final loss %.3f); held-out image->caption top-1 %.3f "
        "(chance %.3f); teacher.model=%s teacher.pretrained=%s uses it",
        tp.model, len(texts), summary.seconds, tp.steps, loss, top1, chance, tp.model, out,
    )  # fmt: skip
    return summary


def _state_bytes(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def _augment(frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # A small random shift and brightness change: the cache's crops and lighting vary a little too.
    n, _, s, _ = frames.shape
    pad = max(s // 16, 1)
    padded = F.pad(frames.float(), (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    gain = 1 + 0.15 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    return (padded[:, :, dy : dy + s, dx : dx + s] * gain).clamp(0, 255).to(torch.uint8)


def _train(model, frames, tokens, pre, tp, device) -> float:
    """AdamW with warm-up and cosine decay over `tp.steps` batches of ClipLoss; returns the last loss."""
    loss_fn = ClipLoss()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tp.weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=tp.lr)
    warm = max(tp.steps // 20, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min((i + 1) / warm, 0.5 * (1 + math.cos(math.pi * min(i / tp.steps, 1.0))))
    )
    g = torch.Generator().manual_seed(tp.seed)
    progress = Progress("teacher pretraining steps", tp.steps, logger=log)
    model.train()
    value = float("nan")
    for _ in range(tp.steps):
        idx = torch.randint(0, len(frames), (tp.batch_size,), generator=g)
        images = normalize(_augment(frames[idx], g).to(device), pre["mean"], pre["std"])
        image_f, text_f, scale = model(images, tokens[idx].to(device))
        loss = loss_fn(image_f, text_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # as open_clip's trainer: the temperature stays below 100
            model.logit_scale.clamp_(0, math.log(100))
        value = float(loss.detach())
        progress.update()
        if progress.done % max(tp.steps // 10, 1) == 0:
            log.info("step %d: ClipLoss %.3f, logit scale %.1f", progress.done, value, float(scale.detach()))
    model.eval()
    return value


@torch.no_grad()
def _caption_top1(model, frames, texts, tokenizer, pre, device) -> tuple[float, float]:
    """Image -> caption retrieval over the held-out set's distinct captions; a hit is the frame's own text."""
    distinct = sorted(set(texts))
    text_f = F.normalize(model.encode_text(tokenizer(distinct).to(device)).float(), dim=-1)
    hits = 0
    for i in range(0, len(frames), 512):
        image_f = F.normalize(
            model.encode_image(normalize(frames[i : i + 512].to(device), pre["mean"], pre["std"])).float(), dim=-1
        )
        best = (image_f @ text_f.T).argmax(1).tolist()
        hits += sum(distinct[b] == texts[i + j] for j, b in enumerate(best))
    return hits / len(texts), 1 / len(distinct)
