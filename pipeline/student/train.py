"""Stage 3 work: train a student with DDP from the shards and the cached teacher outputs.

Reads top to bottom like the recipe: set up the process group and the data, build the student and
its optimiser, resume from `latest.pt` if there is one, then train epoch by epoch with validation,
checkpoints and metrics, and finish with an evaluation at several frame counts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from pipeline.accel.pool_loader import PoolKeeper
from pipeline.cache.heads import HeadChoice, beats_chance, choose_head
from pipeline.cache.store import head_records, open_checked
from pipeline.config import Config, dump, to_dict
from pipeline.models import build_student, checkpoint, input_normalizer
from pipeline.models.norm_groups import NormGroups, separate_norms
from pipeline.runtime import dist
from pipeline.runtime.atomic import write_json, write_text
from pipeline.runtime.device import autocast_dtype, pick_device
from pipeline.runtime.dist import DistEnv
from pipeline.runtime.progress import format_duration
from pipeline.runtime.provenance import provenance
from pipeline.shards.plan import row_labels
from pipeline.ssv2.annotations import class_names, flip_pairs, labels_path, load_labels
from pipeline.student import health
from pipeline.student.data import (
    ClipSource,
    ClipSpec,
    check_shards_feed,
    make_loader,
    split_shards,
    teacher_source,
    to_device,
    train_workers,
    unlabelled_per_batch,
    unlabelled_source,
)
from pipeline.student.evaluate import EvalResult, evaluate, write_frame_count_eval, write_predictions
from pipeline.student.ffn import consistency_loss, trained_counts
from pipeline.student.loss import distill_loss, fade_weight, run_loss, student_level
from pipeline.student.metrics import AverageMeter, MetricsLog, topk_accuracy
from pipeline.student.optim import base_lr, effective_lr, lr_factor, make_optimizer, optimiser_facts

log = logging.getLogger(__name__)


@dataclass
class TrainProgress:
    """Where training is: what `latest.pt` records besides the weights and optimiser."""

    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0
    best_top1: float = -1.0
    history: list[dict] = field(default_factory=list)


@dataclass
class TrainState:
    """Everything a training step changes, passed around as one."""

    model: torch.nn.Module  # the plain module: what is saved and evaluated
    wrapped: torch.nn.Module  # what the step calls: the model, compiled and/or in DDP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    progress: TrainProgress = field(default_factory=TrainProgress)
    norm_groups: NormGroups | None = None  # `train.unlabelled_norm: separate`: labelled clips normalised apart


@dataclass
class TrainSummary:
    """What a call of `run` did."""

    progress: TrainProgress
    resumed_from_step: int
    stopped_early: bool
    val: EvalResult | None
    frame_counts: dict[int, EvalResult]
    seconds: float
    clips_per_s: float
    model: torch.nn.Module = field(repr=False, default=None)  # this rank's trained (unwrapped) model


def run(
    cfg: Config, env: DistEnv | None = None, stop_after_steps: int | None = None, should_stop: Callable[[], bool] | None = None
) -> TrainSummary:
    """Train (or resume) the configured student; `stop_after_steps`/`should_stop` end the call early
    after a checkpoint, as a preemption would."""
    start = time.monotonic()
    check_unlabelled(cfg)
    env = env or dist.from_environment()
    device = _device(cfg, env)
    dist.init(env, device)
    out = cfg.paths.student_dir
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", dump(cfg))
        checkpoint.clean_tmp(out)
    names = class_names(load_labels(labels_path(cfg)))
    teacher = None
    if cfg.loss.mode == "distill":
        root = open_checked(cfg)  # refuses a cache built from other shards or another teacher
        teacher = choose_head(
            cfg.loss.teacher_head, records=head_records(root), cache_fingerprint=root.attrs["fingerprint"], cfg=cfg.teacher_head
        )
        if env.is_main:
            log.info(
                "learning from teacher head %s (temperature %.3f, validation top-1 %s)",
                teacher.name,
                teacher.temperature,
                "n/a" if teacher.val_top1 is None else f"{teacher.val_top1:.4f}",
            )
            write_json(out / "teacher_head.json", {"asked": cfg.loss.teacher_head, **asdict(teacher)})
            if cfg.loss.fade != "none" and teacher.val_top1 is None:
                log.warning(
                    "teacher head %s has no validation top-1 (run make teacher-head, which records it): its terms will not "
                    "fade out (loss.fade=%s) however far the student passes it",
                    teacher.name,
                    cfg.loss.fade,
                )
    train_shards, train_videos = split_shards(cfg, "train")
    check_shards_feed(len(train_shards), env.world_size, train_workers(cfg, env) or 1, "train")
    for split in cfg.train.unlabelled_splits:
        check_shards_feed(len(split_shards(cfg, split)[0]), env.world_size, train_workers(cfg, env) or 1, split)
    per_rank = train_videos // (env.world_size * cfg.train.batch_size)
    if per_rank == 0:
        raise ValueError(f"{train_videos} training videos are fewer than one batch per rank")
    total_steps = cfg.train.epochs * per_rank

    state = build_state(
        cfg, device, num_classes=len(names), total_steps=total_steps, steps_per_epoch=per_rank, world_size=env.world_size
    )
    if env.is_main:
        lr = effective_lr(cfg.train, world_size=env.world_size)
        log.info(
            "lr %.5g: train.lr %.5g for %s clips, global batch %d (%d x %d)%s",
            lr,
            cfg.train.lr,
            cfg.train.lr_batch or "any number of",
            env.world_size * cfg.train.batch_size,
            env.world_size,
            cfg.train.batch_size,
            ", TSM's lr multipliers" if cfg.train.lr_multipliers else "",
        )
        write_json(out / "optimiser.json", optimiser_facts(cfg.train, state.optimizer, world_size=env.world_size))
    _resume(out / "latest.pt", state, env)
    resumed_from = state.progress.step
    if env.is_main:  # where this process's part of the run came from: one line per start (a requeue adds one)
        record = provenance(cfg.train.device) | {"resumed_from_step": resumed_from, "world_size": env.world_size}
        append_line(out / "provenance.jsonl", json.dumps(record))
    if env.world_size > 1:
        # CE alone leaves the feature projection out of the loss; DDP must be told.
        state.wrapped = DDP(
            state.wrapped,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.loss.mode == "vanilla",
        )
    trainer = Trainer(
        cfg,
        env=env,
        device=device,
        names=names,
        per_rank=per_rank,
        total_steps=total_steps,
        teacher=teacher,
        resumed_step=resumed_from,
        resumed_validations=len(state.progress.history),
    )
    try:
        stopped = trainer.train(state, stop_after_steps, should_stop)
        val, counts = None, {}
        if not stopped:
            history = state.progress.history
            val = EvalResult(**history[-1]["val"]) if history else None
            dist.broadcast_buffers(state.model)
            counts = trainer.frame_counts(state.model)
            if env.is_main:
                write_frame_count_eval(out, counts, trained_counts(cfg))
    finally:
        trainer.close()
    summary = TrainSummary(
        state.progress, resumed_from, stopped, val, counts, time.monotonic() - start, trainer.clips_per_s, state.model
    )
    if env.is_main:
        log.info(_summary_paragraph(cfg, summary, env, total_steps))
        history = state.progress.history
        verdict = health.plateau([h["val"]["top1"] for h in history], history[-1].get("train_top1") if history else None)
        if verdict is not None and verdict.flagged and not stopped:
            log.warning(verdict.sentence())
        _log_compute(out / "compute.jsonl", seconds=summary.seconds, env=env, device=device)
    return summary


def check_unlabelled(cfg: Config) -> None:
    """Refuse unlabelled splits that cannot be trained on: not cached, labelled, or what validation scores."""
    for split in cfg.train.unlabelled_splits:
        if split not in cfg.data.splits:
            raise ValueError(
                f"train.unlabelled_splits: {split!r} is not in data.splits {cfg.data.splits}: add it there, then run "
                "make shards and make teacher-cache, which build and cache every split in data.splits"
            )
        if split in ("train", "validation", cfg.eval.split):
            raise ValueError(
                f"train.unlabelled_splits: {split!r} is a labelled or evaluation split; name a split without labels (SSv2: test)"
            )
    if cfg.train.unlabelled_splits and cfg.loss.mode != "distill":
        raise ValueError("train.unlabelled_splits needs loss.mode=distill: unlabelled clips train on the teacher's terms alone")


def _log_compute(path, *, seconds: float, env: DistEnv, device: torch.device) -> None:
    """One line per training process run (a requeue adds one): what `make compare` sums into
    device-hours. A run killed without warning leaves no line for its last segment."""
    record = {"seconds": seconds, "processes": env.world_size, "device": device.type, "time": time.time()}
    append_line(path, json.dumps(record))


def append_line(path: Path, line: str) -> None:
    """Append one line to a JSON-lines record."""
    with open(path, "a") as f:
        f.write(line + "\n")


def _device(cfg: Config, env: DistEnv) -> torch.device:
    device = pick_device(cfg.train.device)
    return dist.cuda_device(env.local_rank) if device.type == "cuda" else device


def build_state(
    cfg: Config, device: torch.device, *, num_classes: int, total_steps: int, steps_per_epoch: int = 1, world_size: int = 1
) -> TrainState:
    """A fresh student with its optimiser, schedule and grad scaler (same weights on every rank)."""
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank and in every rerun
    model = prepare_model(build_student(cfg.student, num_classes, trained_counts(cfg)), cfg, device)
    optimizer = make_optimizer(cfg.train, model, world_size=world_size)
    factor = lr_factor(cfg.train, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scaler = torch.amp.GradScaler(enabled=device.type == "cuda" and cfg.train.precision == "fp16")
    wrapped = torch.compile(model, dynamic=False) if cfg.train.compile and device.type == "cuda" else model
    groups = separate_norms(model) if cfg.train.unlabelled_splits and cfg.train.unlabelled_norm == "separate" else None
    return TrainState(model, wrapped, optimizer, scheduler, scaler, norm_groups=groups)


def prepare_model(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.nn.Module:
    """The student on `device`, in channels-last layout when asked for on CUDA."""
    model = model.to(device)
    if cfg.train.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        model.channels_last = True
    return model


def _resume(path: Path, state: TrainState, env: DistEnv) -> None:
    saved = checkpoint.load(path)
    if saved is None:
        return
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.scaler.load_state_dict(saved["scaler"])
    checkpoint.set_rng_state(saved["rng"][min(env.rank, len(saved["rng"]) - 1)])
    state.progress = TrainProgress(**saved["state"])
    p = state.progress
    if env.is_main:
        log.info("resumed from %s: epoch %d, step %d (%d into the epoch)", path, p.epoch, p.step, p.step_in_epoch)


def train_step(
    state: TrainState,
    batch,
    *,
    cfg: Config,
    norm,
    dtype: torch.dtype | None,
    labelled: int | None = None,
    teacher_weight: float = 1.0,
) -> tuple[list, dict]:
    """One optimisation step on a batch already on the device; returns the loss parts and the step's
    statistics (top-1 and top-5 over its first `labelled` clips, the labelled ones: default all;
    agreement with the teacher where there is one; the gradient norm before clipping), all device tensors."""
    # forward: the clip, and with FFN the same videos at the lower counts (one call)
    with torch.autocast(batch.clips.device.type, dtype=dtype, enabled=dtype is not None), _groups(state, batch, labelled):
        outs = state.wrapped(norm(batch.clips), *(norm(c) for c in batch.lower))
    out, lower = (outs[0], outs[1:]) if batch.lower else (outs, ())
    parts = distill_loss(
        run_loss(cfg),
        out.logits,
        out.feature,
        batch.labels,
        batch.teacher_logits,
        batch.teacher_feature,
        frames=out.frames,
        teacher_frames=batch.teacher_frames,
        teacher_weight=teacher_weight,
    )
    if lower:  # FFN: each lower count's prediction towards the highest's (in the total, beside its parts)
        parts = parts._replace(total=parts.total + consistency_loss(out.logits, [o.logits for o in lower], cfg.train.ffn_lambda))
    # backward, clip, update
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(parts.total).backward()
    state.scaler.unscale_(state.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.train.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    top1, top5 = topk_accuracy(out.logits.detach()[:labelled], batch.labels[:labelled])
    stats = {"top1": top1, "top5": top5, "grad_norm": grad_norm.detach()}
    if batch.teacher_logits is not None:
        stats["agree"] = (out.logits.detach().argmax(1) == batch.teacher_logits.argmax(1)).float().mean()
    return [p.detach() for p in parts], stats


@contextlib.contextmanager
def _groups(state: TrainState, batch, labelled: int | None):
    """With separate norms, a batch's first `labelled` clips normalised apart from its unlabelled ones
    (a batch of labelled clips alone goes through in one pass: `VideoStudent._in_groups`)."""
    groups = state.norm_groups
    if groups is None or labelled is None:
        yield
        return
    groups.split = (labelled, len(batch.labels))
    try:
        yield
    finally:
        groups.split = None


PARTS = ("total", "feature", "response", "task", "frame")  # the loss parts train_step returns, in order


class Trainer:
    """The epoch loop: data per epoch, steps, logs, validation and checkpoints."""

    def __init__(
        self,
        cfg: Config,
        *,
        env: DistEnv,
        device: torch.device,
        names: list[str],
        per_rank: int,
        total_steps: int,
        teacher: HeadChoice | None = None,
        resumed_step: int = 0,
        resumed_validations: int | None = None,
    ):
        self.cfg, self.env, self.device, self.teacher = cfg, env, device, teacher
        self.per_rank, self.total_steps = per_rank, total_steps
        self.flip_pairs = flip_pairs(names)
        self.chance = None  # 1 / the classes the training videos have: what a useless teacher scores (loss.fade)
        self.norm = None  # the student's own input normalisation, set when training starts
        self.dtype = autocast_dtype(device, cfg.train.precision)
        self.pools = PoolKeeper() if cfg.experimental.batch_pool else None
        self.metrics = MetricsLog(
            cfg.paths.student_dir, enabled=env.is_main, resume_step=resumed_step, resume_validations=resumed_validations
        )
        self.clips_per_s = 0.0
        self.train_top1: float | None = None
        self.epoch_teacher_weight = 1.0  # this epoch's share of the teacher (loss.fade), set as the epoch starts
        self.unlabelled_per_batch = unlabelled_per_batch(cfg)
        self.epoch_unlabelled = self.unlabelled_per_batch  # this epoch's: none once the teacher has faded out
        self.val_videos: int | None = None  # labelled validation videos: how far a head's top-1 is from chance
        self.head_at_chance = False  # its validation top-1 within noise of chance (set with val_videos)
        self.said_weight_zero = False

    def close(self) -> None:
        """Flush the metrics and release the loader pool."""
        self.metrics.close()
        if self.pools is not None:
            self.pools.close()

    def train(self, state: TrainState, stop_after: int | None, should_stop) -> bool:
        """Run the remaining epochs; True if stopped early (after writing latest.pt)."""
        cfg, p = self.cfg, state.progress
        self.norm = input_normalizer(state.model, self.device)
        max_steps = cfg.train.max_steps or self.total_steps
        while p.epoch < cfg.train.epochs and p.step < max_steps:
            for _ in self._epoch(state):
                done_here = stop_after is not None and p.step >= stop_after
                if done_here or self._agreed(should_stop):
                    self._save(state, "latest.pt")
                    return True
                if p.step >= max_steps:
                    break
            if p.step_in_epoch >= self.per_rank:
                self._end_epoch(state)
        if p.step_in_epoch:  # max_steps ended it mid-epoch: keep where it is
            self._save(state, "latest.pt")
        return False

    def _agreed(self, should_stop) -> bool:
        """Whether any rank was asked to stop (all ranks must stop at the same step)."""
        if should_stop is None:
            return False
        flag = 1.0 if should_stop() else 0.0
        return dist.all_reduce_sum([flag], self.device)[0] > 0

    def _loader(self, progress: TrainProgress):
        cfg, env = self.cfg, self.env
        spec = ClipSpec(
            cfg.student.num_frames,
            cfg.student.image_size,
            cfg.train.batch_size,
            train=True,
            flip=cfg.train.flip,
            lower_counts=tuple(trained_counts(cfg)[:-1]),
            shuffle_buffer=cfg.train.shuffle_buffer,
            seed=cfg.train.seed,
            epoch=progress.epoch,
        )
        shards, _ = split_shards(cfg, "train")
        cache = teacher_source(cfg, "train", self.teacher)
        source = ClipSource(
            shards,
            spec,
            env.rank,
            env.world_size,
            self.per_rank,
            cache,
            self.flip_pairs,
            skip_batches=progress.step_in_epoch,
            unlabelled=unlabelled_source(cfg, self.teacher) if self.epoch_unlabelled else None,
        )
        return make_loader(source, workers=train_workers(cfg, env), device=self.device, keeper=self.pools)

    def _epoch(self, state: TrainState):
        cfg, env, p = self.cfg, self.env, state.progress
        meters = {k: AverageMeter() for k in (*PARTS, "top1", "top5", "agree", "grad_norm")}
        tick, clips = time.monotonic(), 0
        weight = self.epoch_teacher_weight = self.teacher_weight(p)
        self._unlabelled_for(weight, p.epoch)
        for batch in self._loader(p):
            n = len(batch.labels) - self.epoch_unlabelled  # a batch's labelled clips come first
            device_batch = to_device(batch, self.device)
            parts, stats = train_step(
                state, device_batch, cfg=cfg, norm=self.norm, dtype=self.dtype, labelled=n, teacher_weight=weight
            )
            for key, value in (*zip(PARTS, parts), *stats.items()):
                meters[key].update(value, n)  # device tensors: no sync until the log line reads them
            p.step += 1
            p.step_in_epoch += 1
            clips += len(batch.labels) * env.world_size
            if p.step % cfg.train.log_every_steps == 0 or p.step_in_epoch == self.per_rank:
                tick, clips = self._log(state, meters, tick, clips)
            if p.step % cfg.train.checkpoint_every_steps == 0:
                self._save(state, "latest.pt")
            yield p.step

    def teacher_weight(self, p: TrainProgress) -> float:
        """This epoch's share of the teacher (`loss.fade`), from the student's level over the validations
        so far (`student_level`; they are in the checkpoint, so a resumed run and every rank agree)."""
        if self.cfg.loss.mode != "distill":
            return 1.0
        loss = self.cfg.loss
        level = student_level([h["val"]["top1"] for h in p.history], window=loss.fade_window)
        teacher = self.teacher.val_top1 if self.teacher else None
        if self.chance is None:
            labels = row_labels(self.cfg.paths.shards_dir, "train")
            self.chance = 1.0 / max(1, len(set(labels[labels >= 0].tolist())))
            if teacher is not None:  # a head's validation top-1: the split it was measured on is sharded
                self.val_videos = int((row_labels(self.cfg.paths.shards_dir, "validation") >= 0).sum()) or None
                self.head_at_chance = bool(self.val_videos) and not beats_chance(
                    teacher, chance=self.chance, videos=self.val_videos
                )
        return fade_weight(loss, teacher_top1=teacher, student_level=level, chance=self.chance, val_videos=self.val_videos)

    def _unlabelled_for(self, weight: float, epoch: int) -> None:
        """Unlabelled clips carry only the teacher's terms: with its weight at 0 they would teach nothing
        and only change the batch statistics, so they leave the batches (for the rest of the run: the
        weight follows the student's level, which never falls). Says so once, with the reason."""
        before, self.epoch_unlabelled = self.epoch_unlabelled, self.unlabelled_per_batch if weight > 0 else 0
        if weight > 0 or self.said_weight_zero or not self.env.is_main:
            return
        self.said_weight_zero = True
        if not self.head_at_chance and not before:
            return  # labels alone once the student has passed its head: the fade's ordinary end
        why = (
            f"its head's validation top-1 {self.teacher.val_top1:.3f} is within noise of chance, {self.chance:.3f}, over "
            f"{self.val_videos} videos"
            if self.head_at_chance
            else "the student has come level with its head"
        )
        leave = f"the unlabelled clips ({', '.join(self.cfg.train.unlabelled_splits)}) leave the batches and " if before else ""
        log.warning("epoch %d: the teacher's weight is 0 (%s), so %sthe run trains on the labels alone", epoch, why, leave)

    def _log(self, state: TrainState, meters, tick: float, clips: int) -> tuple[float, int]:
        p = state.progress
        now = time.monotonic()
        rate = clips / max(now - tick, 1e-9)
        self.clips_per_s = rate
        self.train_top1 = meters["top1"].avg  # the epoch's last log: what the plateau check sets beside validation
        lr = base_lr(state.optimizer)
        per_step = (self.cfg.train.batch_size + self.epoch_unlabelled) * self.env.world_size  # what `rate` counts
        left = (self.total_steps - p.step) * per_step / max(rate, 1e-9)
        v = {k: m.avg for k, m in meters.items()}
        self.metrics.write(
            "train",
            p.step,
            epoch=p.epoch,
            lr=lr,
            clips_per_s=rate,
            loss=v["total"],
            loss_feature=v["feature"],
            loss_response=v["response"],
            loss_task=v["task"],
            loss_frame=v["frame"],
            teacher_weight=self.epoch_teacher_weight,
            top1=v["top1"],
            top5=v["top5"],
            grad_norm=v["grad_norm"],
            **({"teacher_agree": v["agree"]} if meters["agree"].count else {}),
        )
        if self.env.is_main:
            log.info(
                "epoch %d step %d/%d: loss %.4f (feature %.4f, response %.4f, task %.4f, frame %.4f), top-1 %.3f, "
                "lr %.5f, gradient norm %.3g, %.1f clips/s, ETA %s",
                p.epoch,
                p.step,
                self.total_steps,
                v["total"],
                v["feature"],
                v["response"],
                v["task"],
                v["frame"],
                v["top1"],
                lr,
                v["grad_norm"],
                rate,
                format_duration(left),
            )
        return now, 0

    def evaluate(self, model: torch.nn.Module, num_frames: int, *, collect: bool = False) -> EvalResult:
        """Validation of `model` at `num_frames` frames, through this trainer's loader pool."""
        return evaluate(
            self.cfg,
            model,
            env=self.env,
            device=self.device,
            num_frames=num_frames,
            collect=collect,
            pools=self.pools,
            teacher=self.teacher,
        )

    def _end_epoch(self, state: TrainState) -> None:
        cfg, env, p = self.cfg, self.env, state.progress
        dist.broadcast_buffers(state.model)
        val = self.evaluate(state.model, cfg.student.num_frames)
        self.metrics.write("val", p.step, epoch=p.epoch, loss=val.loss, top1=val.top1, top5=val.top5, videos=val.videos)
        if env.is_main:
            batches = self.per_rank * env.world_size
            log.info(
                "epoch %d validation: loss %.4f, top-1 %.4f, top-5 %.4f over %d videos (the epoch trained %d labelled "
                "and %d unlabelled clips)",
                p.epoch,
                val.loss,
                val.top1,
                val.top5,
                val.videos,
                batches * cfg.train.batch_size,
                batches * self.epoch_unlabelled,
            )
        p.history.append(
            {
                "epoch": p.epoch,
                "step": p.step,
                "val": vars(val),
                "train_top1": self.train_top1,
                "unlabelled_clips": self.per_rank * env.world_size * self.epoch_unlabelled,
            }
        )
        improved = val.top1 > p.best_top1
        p.best_top1 = max(p.best_top1, val.top1)
        p.epoch += 1
        p.step_in_epoch = 0
        if improved:
            self._save(state, "best.pt")
        self._save(state, "latest.pt")

    def frame_counts(self, model: torch.nn.Module) -> dict[int, EvalResult]:
        """Validation at every `train.eval_frame_counts`; the trained count's predictions are written."""
        cfg, results = self.cfg, {}
        trained = cfg.student.num_frames  # the highest trained count
        for frames in sorted(set(cfg.train.eval_frame_counts) | {trained}):
            result = self.evaluate(model, frames, collect=frames == trained)
            if frames == trained and self.env.is_main:
                write_predictions(cfg.paths.student_dir, result, frames)  # per-video logits, for the report
            if frames not in cfg.train.eval_frame_counts:
                continue
            results[frames] = result
            if self.env.is_main:
                log.info("evaluation at %d frames: top-1 %.4f, top-5 %.4f", frames, result.top1, result.top5)
        return results

    def _save(self, state: TrainState, name: str) -> None:
        rngs = [None] * self.env.world_size
        mine = checkpoint.rng_state()
        if self.env.world_size > 1:
            torch.distributed.all_gather_object(rngs, mine)
        else:
            rngs = [mine]
        if self.env.is_main:
            p = state.progress
            checkpoint.save(
                self.cfg.paths.student_dir / name,
                {
                    "model": state.model.state_dict(),
                    "optimizer": state.optimizer.state_dict(),
                    "scheduler": state.scheduler.state_dict(),
                    "scaler": state.scaler.state_dict(),
                    "state": vars(p) | {"history": list(p.history)},
                    "rng": rngs,
                    "config": to_dict(self.cfg),
                },
            )
        dist.barrier()


def _summary_paragraph(cfg: Config, s: TrainSummary, env: DistEnv, total_steps: int) -> str:
    how = "stopped early after saving latest.pt" if s.stopped_early else "finished"
    val = f"last validation top-1 {s.val.top1:.4f} / top-5 {s.val.top5:.4f}" if s.val else "no validation yet"
    counts = ", ".join(f"{k} frames {r.top1:.4f}" for k, r in sorted(s.frame_counts.items())) or "not run"
    resumed = f"resumed from step {s.resumed_from_step}, " if s.resumed_from_step else ""
    p = s.progress
    per_epoch = total_steps // max(1, cfg.train.epochs) * env.world_size
    unlabelled = per_epoch * unlabelled_per_batch(cfg)
    # they leave the batches once the teacher has faded out: the count per epoch is the most
    used = sum(h.get("unlabelled_clips", unlabelled) for h in p.history)
    where = f" ({', '.join(cfg.train.unlabelled_splits)}; {used} in all over {len(p.history)} epochs)" if unlabelled else ""
    return (
        f"Training {how} in {format_duration(s.seconds)}: {cfg.student.arch} ({cfg.loss.mode}), {resumed}now at "
        f"epoch {p.epoch}/{cfg.train.epochs}, step {p.step}/{total_steps}, {env.world_size} process(es) x "
        f"{cfg.train.batch_size} clips, each epoch {per_epoch * cfg.train.batch_size} labelled and "
        f"{'up to ' if unlabelled else ''}{unlabelled} unlabelled clips{where}, "
        f"{s.clips_per_s:.1f} clips/s at the last log; {val}; best top-1 "
        f"{p.best_top1:.4f}; top-1 at {counts}; outputs in {cfg.paths.student_dir}."
    )
