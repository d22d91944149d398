"""Stage 3 work: train a student with DDP from the shards and the cached teacher outputs.

Reads top to bottom like the recipe: set up the process group and the data, build the student and
its optimiser, resume from `latest.pt` if there is one, then train epoch by epoch with validation,
checkpoints and metrics, and finish with an evaluation at several frame counts.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from . import checkpoint, dist
from .atomic import write_text
from .config import Config, dump, to_dict
from .device import autocast_dtype, pick_device
from .dist import DistEnv
from .distill_loss import distill_loss
from .evaluate import EvalResult, evaluate, split_shards, to_device, write_frame_count_eval, write_predictions
from .frames import IMAGENET_MEAN, IMAGENET_STD, normalizer
from .metrics import AverageMeter, MetricsLog
from .models import build_student
from .progress import format_duration
from .ssv2 import class_names, load_labels
from .teacher_cache import open_checked
from .train_data import CacheSource, ClipSpec, ShardClips, check_shards_feed, flip_pairs, make_loader, train_workers

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where training is: what `latest.pt` records besides the weights and optimiser."""

    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0
    best_top1: float = -1.0
    history: list[dict] = field(default_factory=list)


@dataclass
class TrainSummary:
    """What a call of `run` did."""

    state: TrainState
    resumed_from_step: int
    stopped_early: bool
    val: EvalResult | None
    frame_counts: dict[int, EvalResult]
    seconds: float
    clips_per_s: float
    model: torch.nn.Module = field(repr=False, default=None)  # this rank's trained (unwrapped) model


def run(cfg: Config, env: DistEnv | None = None, stop_after_steps: int | None = None,
        should_stop: Callable[[], bool] | None = None) -> TrainSummary:
    """Train (or resume) the configured student; `stop_after_steps`/`should_stop` end the call early
    after a checkpoint, as a preemption would."""
    start = time.monotonic()
    env = env or dist.from_environment()
    device = _device(cfg, env)
    dist.init(env, device)
    out = cfg.paths.student_dir
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", dump(cfg))
        checkpoint.clean_tmp(out)
    names = class_names(load_labels(Path(cfg.paths.ssv2_root) / cfg.data.labels_subdir / "labels.json"))
    if cfg.loss.mode == "distill":
        open_checked(cfg)  # refuses a cache built from other shards or another teacher
    train_shards, train_videos = split_shards(cfg, "train")
    check_shards_feed(len(train_shards), env.world_size, train_workers(cfg, env) or 1, "train")
    per_rank = train_videos // (env.world_size * cfg.train.batch_size)
    if per_rank == 0:
        raise ValueError(f"{train_videos} training videos are fewer than one batch per rank")
    total_steps = cfg.train.epochs * per_rank

    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank and in every rerun
    model = prepare_model(build_student(cfg.student, len(names)), cfg, device)
    optimizer = make_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(cfg.train.warmup_steps, total_steps))
    scaler = torch.amp.GradScaler(enabled=device.type == "cuda" and cfg.train.precision == "fp16")
    state = _resume(out / "latest.pt", model, optimizer, scheduler, scaler, env)
    resumed_from = state.step
    wrapped = torch.compile(model) if cfg.train.compile and device.type == "cuda" else model
    if env.world_size > 1:
        # CE alone leaves the feature projection out of the loss; DDP must be told.
        wrapped = DDP(wrapped, device_ids=[device.index] if device.type == "cuda" else None,
                      find_unused_parameters=cfg.loss.mode == "vanilla")
    metrics = MetricsLog(out, enabled=env.is_main)
    loop = _Loop(cfg, env, device, wrapped, model, optimizer, scheduler, scaler, metrics, names, per_rank, total_steps)
    stopped = loop.train(state, stop_after_steps, should_stop)
    val, counts = None, {}
    if not stopped:
        val = state.history[-1]["val"] if state.history else None
        dist.broadcast_buffers(model)
        counts = _frame_counts(cfg, model, env, device)
        if env.is_main:
            write_frame_count_eval(out, counts, cfg.student.num_frames)
    metrics.close()
    seconds = time.monotonic() - start
    summary = TrainSummary(state, resumed_from, stopped, val and EvalResult(**val), counts, seconds, loop.clips_per_s, model)
    if env.is_main:
        log.info(_summary_paragraph(cfg, summary, env, total_steps))
    return summary


def _device(cfg: Config, env: DistEnv) -> torch.device:
    device = pick_device(cfg.train.device)
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    return device


def prepare_model(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.nn.Module:
    """The student on `device`, in channels-last layout when asked for on CUDA."""
    model = model.to(device)
    if cfg.train.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        model.channels_last = True
    return model


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, **fused)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, **fused)
    raise ValueError(f"train.optimizer must be sgd or adamw, got {t.optimizer!r}")


def _cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _resume(path: Path, model, optimizer, scheduler, scaler, env: DistEnv) -> TrainState:
    saved = checkpoint.load(path)
    if saved is None:
        return TrainState()
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    checkpoint.set_rng_state(saved["rng"][min(env.rank, len(saved["rng"]) - 1)])
    state = TrainState(**saved["state"])
    if env.is_main:
        log.info("resumed from %s: epoch %d, step %d (%d into the epoch)", path, state.epoch, state.step, state.step_in_epoch)
    return state


def _frame_counts(cfg: Config, model, env: DistEnv, device) -> dict[int, EvalResult]:
    results = {}
    trained = cfg.student.num_frames
    for frames in sorted(set(cfg.train.eval_frame_counts) | {trained}):
        result = evaluate(cfg, model, env, device, frames, collect=frames == trained)
        if frames == trained and env.is_main:
            write_predictions(cfg.paths.student_dir, result, frames)  # per-video logits, for the report
        if frames not in cfg.train.eval_frame_counts:
            continue
        results[frames] = result
        if env.is_main:
            log.info("evaluation at %d frames: top-1 %.4f, top-5 %.4f", frames, results[frames].top1, results[frames].top5)
    return results


class _Loop:
    """The epoch loop, with the objects it needs held together."""

    def __init__(self, cfg, env, device, wrapped, model, optimizer, scheduler, scaler, metrics, names, per_rank, total_steps):
        self.cfg, self.env, self.device, self.wrapped, self.model = cfg, env, device, wrapped, model
        self.optimizer, self.scheduler, self.scaler, self.metrics = optimizer, scheduler, scaler, metrics
        self.per_rank, self.total_steps = per_rank, total_steps
        self.flip_pairs = flip_pairs(names)
        self.norm = normalizer(IMAGENET_MEAN, IMAGENET_STD, device)
        self.dtype = autocast_dtype(device, cfg.train.precision)
        self.clips_per_s = 0.0

    def train(self, state: TrainState, stop_after: int | None, should_stop) -> bool:
        """Run the remaining epochs; True if stopped early (after writing latest.pt)."""
        cfg = self.cfg
        max_steps = cfg.train.max_steps or self.total_steps
        while state.epoch < cfg.train.epochs and state.step < max_steps:
            for _ in self._epoch(state):
                done_here = stop_after is not None and state.step >= stop_after
                if done_here or self._agreed(should_stop):
                    self._save(state, "latest.pt")
                    return True
                if state.step >= max_steps:
                    break
            if state.step_in_epoch >= self.per_rank:
                self._end_epoch(state)
        if state.step_in_epoch:  # max_steps ended it mid-epoch: keep where it is
            self._save(state, "latest.pt")
        return False

    def _agreed(self, should_stop) -> bool:
        """Whether any rank was asked to stop (all ranks must stop at the same step)."""
        if should_stop is None:
            return False
        flag = 1.0 if should_stop() else 0.0
        return dist.all_reduce_sum([flag], self.device)[0] > 0

    def _epoch(self, state: TrainState):
        cfg, env = self.cfg, self.env
        spec = ClipSpec(cfg.student.num_frames, cfg.student.image_size, cfg.train.batch_size, train=True,
                        flip=cfg.train.flip, shuffle_buffer=cfg.train.shuffle_buffer, seed=cfg.train.seed, epoch=state.epoch)
        shards, _ = split_shards(cfg, "train")
        cache = CacheSource(cfg.paths.teacher_cache, "train") if cfg.loss.mode == "distill" else None
        dataset = ShardClips(shards, spec, env.rank, env.world_size, self.per_rank, cache, self.flip_pairs, state.step_in_epoch)
        loader = make_loader(dataset, train_workers(cfg, env), self.device, cfg.train.batch_pool)
        meters = {k: AverageMeter() for k in ("total", "feature", "response", "task", "top1", "top5")}
        tick, clips = time.monotonic(), 0
        for batch in loader:
            parts, (top1, top5) = self._step(batch)
            n = len(batch.labels)
            for key, value in zip(("total", "feature", "response", "task"), parts):
                meters[key].update(value, n)  # device tensors: no sync until the log line reads them
            meters["top1"].update(top1, n)
            meters["top5"].update(top5, n)
            state.step += 1
            state.step_in_epoch += 1
            clips += n * env.world_size
            if state.step % cfg.train.log_every_steps == 0 or state.step_in_epoch == self.per_rank:
                tick, clips = self._log(state, meters, tick, clips)
            if state.step % cfg.train.checkpoint_every_steps == 0:
                self._save(state, "latest.pt")
            yield state.step

    def _step(self, batch) -> tuple[list, tuple]:
        return train_step(self.wrapped, self.model, self.optimizer, self.scheduler, self.scaler, self.norm,
                          self.dtype, self.cfg, to_device(batch, self.device))

    def _log(self, state: TrainState, meters, tick: float, clips: int) -> tuple[float, int]:
        now = time.monotonic()
        rate = clips / max(now - tick, 1e-9)
        self.clips_per_s = rate
        lr = self.optimizer.param_groups[0]["lr"]
        left = (self.total_steps - state.step) * self.cfg.train.batch_size * self.env.world_size / max(rate, 1e-9)
        values = {k: m.avg for k, m in meters.items()}
        self.metrics.write("train", state.step, epoch=state.epoch, lr=lr, clips_per_s=rate,
                           loss=values["total"], loss_feature=values["feature"], loss_response=values["response"],
                           loss_task=values["task"], top1=values["top1"], top5=values["top5"])
        if self.env.is_main:
            log.info("epoch %d step %d/%d: loss %.4f (feature %.4f, response %.4f, task %.4f), top-1 %.3f, lr %.5f, %.1f clips/s, ETA %s",
                     state.epoch, state.step, self.total_steps, values["total"], values["feature"], values["response"],
                     values["task"], values["top1"], lr, rate, format_duration(left))
        return now, 0

    def _end_epoch(self, state: TrainState) -> None:
        cfg, env = self.cfg, self.env
        dist.broadcast_buffers(self.model)
        val = evaluate(cfg, self.model, env, self.device, cfg.student.num_frames)
        self.metrics.write("val", state.step, epoch=state.epoch, loss=val.loss, top1=val.top1, top5=val.top5, videos=val.videos)
        if env.is_main:
            log.info("epoch %d validation: loss %.4f, top-1 %.4f, top-5 %.4f over %d videos", state.epoch, val.loss, val.top1, val.top5, val.videos)
        state.history.append({"epoch": state.epoch, "step": state.step, "val": vars(val)})
        improved = val.top1 > state.best_top1
        state.best_top1 = max(state.best_top1, val.top1)
        state.epoch += 1
        state.step_in_epoch = 0
        if improved:
            self._save(state, "best.pt")
        self._save(state, "latest.pt")

    def _save(self, state: TrainState, name: str) -> None:
        rngs = [None] * self.env.world_size
        mine = checkpoint.rng_state()
        if self.env.world_size > 1:
            torch.distributed.all_gather_object(rngs, mine)
        else:
            rngs = [mine]
        if self.env.is_main:
            checkpoint.save(self.cfg.paths.student_dir / name, {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "state": vars(state) | {"history": list(state.history)},
                "rng": rngs,
                "config": to_dict(self.cfg),
            })
        dist.barrier()


def train_step(wrapped, model, optimizer, scheduler, scaler, norm, dtype, cfg: Config, batch) -> tuple[list, tuple]:
    """One optimisation step on a batch already on the device; returns (loss parts, (top-1, top-5)) as tensors."""
    device_type = batch.clips.device.type
    with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
        out = wrapped(norm(batch.clips))
    parts = distill_loss(cfg.loss, out.logits, out.feature, batch.labels, batch.teacher_logits, batch.teacher_feature)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(parts.total).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    top = out.logits.detach().topk(min(5, out.logits.shape[-1]), dim=-1).indices == batch.labels[:, None]
    return [p.detach() for p in parts], (top[:, :1].any(1).float().mean(), top.any(1).float().mean())


def _summary_paragraph(cfg: Config, s: TrainSummary, env: DistEnv, total_steps: int) -> str:
    how = "stopped early after saving latest.pt" if s.stopped_early else "finished"
    val = f"last validation top-1 {s.val.top1:.4f} / top-5 {s.val.top5:.4f}" if s.val else "no validation yet"
    counts = ", ".join(f"{k} frames {r.top1:.4f}" for k, r in sorted(s.frame_counts.items())) or "not run"
    resumed = f"resumed from step {s.resumed_from_step}, " if s.resumed_from_step else ""
    return (
        f"Training {how} in {format_duration(s.seconds)}: {cfg.student.arch} ({cfg.loss.mode}), {resumed}now at "
        f"epoch {s.state.epoch}/{cfg.train.epochs}, step {s.state.step}/{total_steps}, {env.world_size} process(es) x "
        f"{cfg.train.batch_size} clips, {s.clips_per_s:.1f} clips/s at the last log; {val}; best top-1 "
        f"{s.state.best_top1:.4f}; top-1 at {counts}; outputs in {cfg.paths.student_dir}."
    )
