"""Submit the pipeline's stages (`python -m slurm.launch {shards,teacher-cache,teacher-head,train-student,evaluate,all,status}`).

Array stages submit only the shards that are not done yet, in groups of one task each; `all` chains
the four stages with afterok dependencies; with --wait (the default for single stages) the command
waits, names every failed task with its log and the shards it owned, and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

import submitit
import zarr

from pipeline import cli
from pipeline.config import Config
from pipeline.runtime.errors import guarded
from pipeline.runtime.progress import setup_logging
from pipeline.shards import build as shards_lib
from pipeline.teacher import run as teacher_run
from pipeline.teacher.heads import head_settings
from pipeline.teacher.store import CacheMismatchError, head_fingerprint, head_records
from slurm.executor import executor_kind, make_executor, max_array_size, submission_folder
from slurm.jobs import EvaluateJob, TrainJob
from slurm.status import status_report
from stages import shards as shards_stage
from stages import teacher_cache as teacher_stage
from stages import teacher_head as head_stage

log = logging.getLogger("slurm.launch")


def groups(positions: list[int], max_tasks: int) -> list[list[int]]:
    """Shard positions dealt round-robin into at most `max_tasks` groups, one per array task."""
    n = max(1, min(max_tasks, len(positions)))
    return [positions[i::n] for i in range(n)]


def _run_after(executor, cfg: Config, resources, after: list | None) -> None:
    """Make the executor's jobs wait for `after` to succeed (SLURM afterok; the local executor runs in order)."""
    if after and executor_kind(cfg) == "slurm":
        extra = dict(i.split("=", 1) for i in resources.extra)
        executor.update_parameters(
            slurm_additional_parameters={**extra, "dependency": "afterok:" + ":".join(j.job_id for j in after)}
        )


def submit_array(cfg: Config, stage: str, fn, task_args: list[tuple], after: list | None = None) -> tuple[list, Path]:
    """Submit fn over task_args as one or more arrays (split at MaxArraySize); returns jobs and log folder."""
    resources = cfg.slurm.shards if stage == "shards" else cfg.slurm.teacher_cache
    folder = submission_folder(cfg, stage)
    executor = make_executor(cfg, stage, resources, folder)
    _run_after(executor, cfg, resources, after)
    limit = max_array_size() if executor_kind(cfg) == "slurm" else len(task_args)
    jobs = []
    for start in range(0, len(task_args), limit):
        chunk = task_args[start : start + limit]
        jobs += executor.map_array(fn, *zip(*chunk))
    for job, args in zip(jobs, task_args):
        job.pipeline_args = _describe(args)  # what the task owned, for failure reports
    record = [{"job_id": j.job_id, "args": _describe(a)} for j, a in zip(jobs, task_args)]
    _record(folder, cfg, stage, record)
    return jobs, folder


def _record(folder: Path, cfg: Config, stage: str, tasks: list[dict]) -> None:
    (folder / "submission.json").write_text(
        json.dumps({"stage": stage, "executor": executor_kind(cfg), "tasks": tasks}, indent=1)
    )


def _describe(args: tuple) -> list:
    return [a for a in args if not isinstance(a, Config)]


def _owned(args: list | None) -> str:
    """What a task was given, in words: its shard positions, or its stride of all shards."""
    if not args:
        return ""
    if isinstance(args[0], list):
        return f", owned shards {args[0]}"
    if args[0] is None and len(args) == 3:
        return f", owned every {args[2]}th shard from {args[1]}"
    return ""


def _error_line(error: Exception) -> str:
    """The exception line of a failed job's trace (not the trailing log paths)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    raised = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Interrupted)\b", ln)]
    return (raised or lines or ["no message"])[-1][:400]


def submit_shards(cfg: Config) -> tuple[list, Path | None]:
    """The shards not yet done, grouped into array tasks; nothing when all are done."""
    todo = shards_lib.missing(cfg)
    if not todo:
        log.info("shards: every shard is done, nothing to submit")
        return [], None
    task_args = [(cfg, g) for g in groups(todo, cfg.slurm.shards.array_tasks)]
    jobs, folder = submit_array(cfg, "shards", shards_stage.run_task, task_args)
    log.info("shards: submitted %d tasks for %d missing shards (logs in %s)", len(jobs), len(todo), folder)
    return jobs, folder


def submit_teacher(cfg: Config, after: list | None = None) -> tuple[list, Path | None]:
    """Teacher-cache tasks: over the shards not yet cached, or (after a shards job) strides of all."""
    if after:
        # The shards are not written yet: each task takes a stride and skips shards already done.
        n = cfg.slurm.teacher_cache.array_tasks
        task_args = [(cfg, None, t, n) for t in range(n)]
    else:
        todo = teacher_run.missing(cfg)
        if not todo:
            log.info("teacher-cache: every shard is cached, nothing to submit")
            return [], None
        task_args = [(cfg, g, 0, 1) for g in groups(todo, cfg.slurm.teacher_cache.array_tasks)]
    jobs, folder = submit_array(cfg, "teacher_cache", teacher_stage.run_task, task_args, after)
    log.info("teacher-cache: submitted %d tasks (logs in %s)", len(jobs), folder)
    return jobs, folder


def heads_complete(cfg: Config) -> bool:
    """Every configured head is fitted, with the current settings, on the current cache."""
    if not cfg.paths.teacher_cache.exists():
        return False
    root = zarr.open_group(cfg.paths.teacher_cache, mode="r")
    records, fingerprint = head_records(root), root.attrs.get("fingerprint")
    expected = {n: head_fingerprint(fingerprint, head_settings(n, cfg.teacher_head)) for n in cfg.teacher_head.heads}
    return all(records.get(n, {}).get("fingerprint") == fp for n, fp in expected.items())


def submit_head(cfg: Config, after: list | None = None) -> tuple[list, Path | None]:
    """One job fitting the teacher heads (none when every configured head is fitted on this cache)."""
    if not after and heads_complete(cfg):
        log.info("teacher-head: every head in teacher_head.heads is fitted on this cache, nothing to submit")
        return [], None
    folder = submission_folder(cfg, "teacher_head")
    resources = cfg.slurm.teacher_head
    executor = make_executor(cfg, "teacher_head", resources, folder)
    _run_after(executor, cfg, resources, after)
    job = executor.submit(head_stage.run_task, cfg)
    _record(folder, cfg, "teacher_head", [{"job_id": job.job_id}])
    log.info("teacher-head: submitted job %s (logs in %s)", job.job_id, folder)
    return [job], folder


def training_complete(cfg: Config) -> bool:
    """latest.pt is past the last epoch and the frame-count evaluation is written."""
    from pipeline.student import checkpoint

    saved = checkpoint.load(cfg.paths.student_dir / "latest.pt")
    done = saved is not None and saved["state"]["epoch"] >= cfg.train.epochs
    return done and (cfg.paths.student_dir / "eval_frames.json").exists()


def submit_train(cfg: Config, after: list | None = None) -> tuple[list, Path | None]:
    """One training job over nodes x tasks_per_node processes (none when training is complete)."""
    if not after and training_complete(cfg):
        log.info("train-student: training is complete (%s), nothing to submit", cfg.paths.student_dir / "eval_frames.md")
        return [], None
    folder = submission_folder(cfg, "train_student")
    resources = cfg.slurm.train_student
    executor = make_executor(cfg, "train_student", resources, folder)
    _run_after(executor, cfg, resources, after)
    job = executor.submit(TrainJob(cfg))
    _record(folder, cfg, "train_student", [{"job_id": job.job_id}])
    log.info(
        "train-student: submitted job %s (%d node(s) x %d task(s); logs in %s)",
        job.job_id,
        resources.nodes,
        resources.tasks_per_node,
        folder,
    )
    return [job], folder


def submit_evaluate(cfg: Config, after: list | None = None) -> tuple[list, Path | None]:
    """One evaluation job over nodes x tasks_per_node processes (one per GPU)."""
    folder = submission_folder(cfg, "evaluate")
    resources = cfg.slurm.evaluate
    executor = make_executor(cfg, "evaluate", resources, folder)
    _run_after(executor, cfg, resources, after)
    job = executor.submit(EvaluateJob(cfg))
    _record(folder, cfg, "evaluate", [{"job_id": job.job_id}])
    tasks = resources.nodes * resources.tasks_per_node
    log.info("evaluate: submitted job %s (%d task(s); logs in %s)", job.job_id, tasks, folder)
    return [job], folder


def wait(jobs: list, stage: str) -> bool:
    """Wait for the jobs; log each failure with its log file and what it owned. True if all succeeded."""
    ok, results = True, []
    for job in jobs:
        try:
            results.append(job.result())
        except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as e:
            ok = False
            log.error(
                "%s task %s FAILED (log: %s)%s: %s",
                stage,
                job.job_id,
                job.paths.stderr,
                _owned(getattr(job, "pipeline_args", None)),
                _error_line(e),
            )
    totals: dict = {}
    for result in results:
        for key, value in (result or {}).items():
            totals[key] = totals.get(key, 0) + value if isinstance(value, int) else value
    if jobs:
        log.info(
            "%s: %d/%d job(s) succeeded; %s",
            stage,
            len(results),
            len(jobs),
            ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in totals.items()) or "no results",
        )
    return ok


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and submit (and by default wait for) the asked stage."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = ["shards", "teacher-cache", "teacher-head", "train-student", "evaluate", "all", "status"]
    parser.add_argument("stage", choices=stages)
    parser.add_argument("--no-wait", action="store_true", help="submit and return")
    cli.add_config_args(parser)
    args = parser.parse_intermixed_args(argv)
    setup_logging()
    cfg = cli.load_config(args)
    if args.stage == "status":
        print(status_report(cfg))
        return 0
    plan = {
        "shards": ["shards"],
        "teacher-cache": ["teacher"],
        "teacher-head": ["head"],
        "train-student": ["train"],
        "evaluate": ["evaluate"],
        "all": ["shards", "teacher", "head", "train"],
    }[args.stage]
    local = executor_kind(cfg) == "local"
    submitted: list[tuple[str, list]] = []
    previous: list = []
    for step in plan:
        if step == "shards":
            jobs, _ = submit_shards(cfg)
        elif step == "teacher":
            try:
                jobs, _ = submit_teacher(cfg, after=previous if not local else None)
            except CacheMismatchError as e:  # a cache built with other settings: say what differs, submit nothing
                log.error("%s", e)
                return 2
        elif step == "head":
            jobs, _ = submit_head(cfg, after=previous if not local else None)
        elif step == "evaluate":
            jobs, _ = submit_evaluate(cfg, after=previous if not local else None)
        else:
            jobs, _ = submit_train(cfg, after=previous if not local else None)
        submitted.append((step, jobs))
        previous = jobs or previous
        if local and not args.no_wait and not wait(jobs, step):  # no dependencies locally: run in order
            return 1
    if args.no_wait or local:
        return 0
    for i, (step, jobs) in enumerate(submitted):
        if not wait(jobs, step):
            for _, later in submitted[i + 1 :]:  # their afterok can never be met now
                for job in later:
                    job.cancel(check=False)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(guarded(" ".join(["launch", *sys.argv[1:2]]), main))
