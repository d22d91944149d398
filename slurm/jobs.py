"""The training job as a checkpointable callable: on preemption or time-out it saves and requeues."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

import submitit

from pipeline.config import Config
from stages import evaluate, train_student

log = logging.getLogger(__name__)


class TrainJob:
    """Runs one rank of the training; submitit requeues it through `checkpoint`.

    SLURM signals USR2 before preemption or the time limit. The handler installed here only raises
    a flag; the training loop sees it at the next step (all ranks agree), writes latest.pt at that
    step and returns; only then is submitit's own handler called, which asks `checkpoint` for the
    resubmission and requeues the job. The requeued job resumes from that same latest.pt.
    """

    def __init__(self, cfg: Config | None = None):
        self.cfg = cfg
        self.saved_to: str | None = None

    def __call__(self, cfg: Config | None = None) -> dict:
        """Train `self.cfg`, or (a task of a sweep's array, whose config is its argument) `cfg`."""
        self.cfg = cfg or self.cfg
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        latest = self.cfg.paths.student_dir / "latest.pt"
        stop = threading.Event()
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        signal.signal(signal.SIGUSR2, lambda signum, frame: stop.set())
        env = submitit.JobEnvironment()
        self._record("started", str(latest), env)
        summary = train_student.run_task(self.cfg, should_stop=stop.is_set)
        if self.saved_to is not None:  # a requeued run: which checkpoint it started from
            self._record("resumed", str(latest), env, summary.resumed_from_step)
        if summary.stopped_early:
            self.saved_to = str(latest)
            self._record("saved", self.saved_to, env, summary.progress.step)
            if env.global_rank == 0:
                if callable(submitit_handler):
                    submitit_handler(signal.SIGUSR2, None)  # checkpoint() + requeue + exit
            else:
                time.sleep(3600)  # the other ranks wait to be ended by the requeue
        return {"step": summary.progress.step, "epoch": summary.progress.epoch, "best_top1": summary.progress.best_top1}

    def checkpoint(self, *args) -> submitit.helpers.DelayedSubmission:
        """What submitit resubmits: this job, which resumes from the latest.pt it saved."""
        return submitit.helpers.DelayedSubmission(self, *args)

    def _record(self, event: str, path: str, env, step: int | None = None) -> None:
        if env.global_rank != 0:
            return
        folder = self.cfg.paths.student_dir
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "requeue.jsonl", "a") as f:
            record = {"event": event, "path": path, "step": step, "job_id": env.job_id, "pid": os.getpid(), "time": time.time()}
            f.write(json.dumps(record) + "\n")
        log.info("%s %s (job %s)", event, path, env.job_id)


class EvaluateJob:
    """Runs one rank of the evaluate stage; a rerun (or a requeue) evaluates again from the start."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def __call__(self) -> dict:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        rows = evaluate.run_task(self.cfg)
        return {"rows": len(rows), "best_top1": max((r["top1"] for r in rows), default=0.0)}

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Preempted: run it again (evaluation keeps no state worth resuming)."""
        return submitit.helpers.DelayedSubmission(self)
