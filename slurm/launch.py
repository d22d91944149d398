"""Submit the pipeline's stages (`python -m slurm.launch {shards,teacher-cache,teacher-head,train-student,evaluate,all,status}`).

Array stages submit only the shards that are not done yet, in groups of one task each; `all` chains
the four stages with afterok dependencies; with --wait (the default for single stages) the command
waits, names every failed task with its log and the shards it owned, and exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import zarr

from pipeline import cli
from pipeline.cache.heads import head_settings
from pipeline.cache.store import CacheMismatchError, head_fingerprint, head_records
from pipeline.config import Config, ConfigError
from pipeline.runtime.errors import UserError, guarded
from pipeline.runtime.progress import setup_logging
from pipeline.shards import build as shards_lib
from pipeline.teacher import run as teacher_run
from slurm.executor import executor_kind, make_executor, max_array_size, submission_folder
from slurm.jobs import EvaluateJob, TrainJob
from slurm.launch_lock import claim
from slurm.status import status_report
from stages import export as export_stage
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


def submit_array(
    cfg: Config, stage: str, fn, task_args: list[tuple], after: list | None = None, resources=None
) -> tuple[list, Path]:
    """Submit fn over task_args as one or more arrays (split at MaxArraySize); returns jobs and log
    folder. Resources: the stage's (shards or teacher_cache) unless given."""
    resources = resources or (cfg.slurm.shards if stage == "shards" else cfg.slurm.teacher_cache)
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
    if isinstance(args[0], str):
        return f", point {args[0]}"
    return ""


def _error_line(error: Exception) -> str:
    """The exception line of a failed job's trace (not the trailing log paths)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    user = _user_errors()
    raised = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Interrupted)\b", ln) or _raised_name(ln) in user]
    return (raised or lines or ["no message"])[-1][:400]


def _raised_name(line: str) -> str:
    """'pkg.mod.SomeError: message' -> 'SomeError' (empty when the line is not an exception line)."""
    found = re.match(r"^([\w.]+)(?::|$)", line)
    return found.group(1).split(".")[-1] if found else ""


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
    from pipeline.models import checkpoint

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


@dataclass
class Waited:
    """How a step's jobs ended: true when all succeeded; `input_errors` counts failures that are the
    user's to fix (a UserError: bad settings or data), which no resubmission would cure."""

    ok: bool
    input_errors: int = 0

    def __bool__(self) -> bool:
        return self.ok


def _user_errors() -> set[str]:
    """Class names of every UserError (the one-line errors of pipeline.runtime.errors)."""
    names, todo = set(), [UserError]
    while todo:
        kind = todo.pop()
        names.add(kind.__name__)
        todo += kind.__subclasses__()
    return names


def submit_export(cfg: Config, after: list | None = None) -> tuple[list, Path | None]:
    """One job exporting, checking and timing the student (on the evaluate stage's resources: a GPU)."""
    folder = submission_folder(cfg, "export")
    resources = cfg.slurm.evaluate
    executor = make_executor(cfg, "export", dataclasses.replace(resources, nodes=1, tasks_per_node=1), folder)
    _run_after(executor, cfg, resources, after)
    job = executor.submit(export_stage.run_task, cfg)
    _record(folder, cfg, "export", [{"job_id": job.job_id}])
    log.info("export: submitted job %s (logs in %s)", job.job_id, folder)
    return [job], folder


def wait(jobs: list, stage: str, *, totals: bool = True) -> Waited:
    """Wait for the jobs; log each failure with its log file and what it owned; with `totals`, the
    sum of the jobs' counts (tasks of one stage; not the points of a sweep)."""
    ok, results, input_errors = True, [], 0
    for job in jobs:
        try:
            results.append(job.result())
        except Exception as e:  # failed, killed, or its result file torn by the kill: resubmittable unless a UserError
            ok = False
            line = _error_line(e)
            input_errors += _raised_name(line) in _user_errors()
            log.error(
                "%s task %s FAILED (log: %s)%s: %s",
                stage,
                job.job_id,
                job.paths.stderr,
                _owned(getattr(job, "pipeline_args", None)),
                line,
            )
    summed: dict = {}
    for result in results if totals else []:
        for key, value in (result or {}).items():
            summed[key] = summed.get(key, 0) + value if isinstance(value, int) else value
    if jobs:
        log.info(
            "%s: %d/%d job(s) succeeded%s",
            stage,
            len(results),
            len(jobs),
            "; " + (", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summed.items()) or "no results")
            if totals
            else "",
        )
    return Waited(ok, input_errors)


PLANS = {
    "shards": ["shards"],
    "teacher-cache": ["teacher"],
    "teacher-head": ["head"],
    "train-student": ["train"],
    "evaluate": ["evaluate"],
    "export": ["export"],
    "all": ["shards", "teacher", "head", "train"],
}


def submit_step(cfg: Config, step: str, after: list | None = None) -> list:
    """Submit one step's jobs (only what is not done); [] when nothing is left."""
    if step == "shards":
        return submit_shards(cfg)[0]
    submit = {
        "teacher": submit_teacher,
        "head": submit_head,
        "train": submit_train,
        "evaluate": submit_evaluate,
        "export": submit_export,
    }[step]
    return submit(cfg, after=after)[0]


def check_resubmit(cfg: Config) -> None:
    """slurm.resubmit is a count: 0 or more."""
    if cfg.slurm.resubmit < 0:
        raise ConfigError(f"slurm.resubmit={cfg.slurm.resubmit}: a number of resubmissions, 0 or more")


def finish(cfg: Config, step: str, jobs: list, *, used: int = 0) -> bool:
    """Wait for a step's jobs; while some failed, resubmit what is still not done, up to
    slurm.resubmit times in all (`used` already spent), so a lost node or a killed task costs only
    its unfinished work."""
    for attempt in range(used, cfg.slurm.resubmit + 1):
        waited = wait(jobs, step)
        if waited:
            return True
        if waited.input_errors:
            log.error("%s: not resubmitted: fix what the errors above say, then launch again", step)
            return False
        if attempt == cfg.slurm.resubmit:
            break
        log.warning("%s: resubmitting what is not done (%d/%d, slurm.resubmit)", step, attempt + 1, cfg.slurm.resubmit)
        jobs = submit_step(cfg, step)
    log.error("%s: still failing after %d resubmission(s) (slurm.resubmit); the errors above say why", step, cfg.slurm.resubmit)
    return False


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and submit (and by default wait for) the asked stage."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=[*PLANS, "status"])
    parser.add_argument("--no-wait", action="store_true", help="submit and return")
    cli.add_config_args(parser)
    args = parser.parse_intermixed_args(argv)
    setup_logging()
    cfg = cli.load_config(args)
    check_resubmit(cfg)
    if args.stage == "status":
        print(status_report(cfg))
        return 0
    with contextlib.ExitStack() as stack:
        claim(cfg, PLANS[args.stage], stack)
        return _launch(cfg, PLANS[args.stage], wait_for=not args.no_wait)


def _launch(cfg: Config, plan: list[str], *, wait_for: bool) -> int:
    local = executor_kind(cfg) == "local"
    if local and not wait_for and len(plan) > 1:
        # the local executor has no dependencies: each step must end before the next reads its output
        log.info("local executor (no SLURM): --no-wait applies to SLURM only; running %s in order", ", ".join(plan))
        wait_for = True
    submitted: list[tuple[str, list]] = []
    previous: list = []
    for step in plan:
        try:
            jobs = submit_step(cfg, step, after=previous if not local else None)
        except CacheMismatchError as e:  # a cache built with other settings: say what differs, submit nothing
            log.error("%s", e)
            return 2
        submitted.append((step, jobs))
        previous = jobs or previous
        if local and wait_for and not finish(cfg, step, jobs):  # no dependencies locally: run in order
            return 1
    if not wait_for or local:
        return 0
    for i, (step, jobs) in enumerate(submitted):
        waited = wait(jobs, step)
        if waited:
            continue
        for _, later in submitted[i + 1 :]:  # their afterok can never be met now
            for job in later:
                job.cancel(check=False)
        # from the failed step on, one step at a time, each resubmitted while it fails
        if cfg.slurm.resubmit == 0 or waited.input_errors:
            return 1
        log.warning("%s: resubmitting what is not done (1/%d, slurm.resubmit)", step, cfg.slurm.resubmit)
        for j, (rest, _) in enumerate(submitted[i:]):
            if not finish(cfg, rest, submit_step(cfg, rest), used=int(j == 0)):
                return 1
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(guarded(" ".join(["launch", *sys.argv[1:2]]), main))
