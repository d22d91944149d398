"""`make sweep SWEEP=sweeps/<name>.yaml`: every point of a sweep as one task of a SLURM array.

    python -m slurm.sweep sweeps/loss_weights.yaml [--no-wait] [--config FILE ...] [key=value ...]

The shared inputs come first, each only when missing: the shards, then for every teacher cache the
points need (one per distinct `teacher.*` / `teacher_head.*` settings) the cache and its heads. The
points not finished yet train as one array (split at MaxArraySize, at most
`slurm.train_student.array_parallelism` at once) after them, each in its own folder
`<run_dir>/sweeps/<name>/<point>/`; a preempted point requeues and resumes like any training job.
Waiting (the default), points that failed are resubmitted (`slurm.resubmit`), and the sweep's
comparison table is written to `<run_dir>/sweeps/<name>/compare.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

from pipeline import cli
from pipeline.config import Config
from pipeline.report.compare import write_comparison
from pipeline.runtime.errors import guarded
from pipeline.runtime.progress import setup_logging
from pipeline.sweep import load_sweep, point_configs
from slurm import launch
from slurm.executor import executor_kind
from slurm.jobs import TrainJob
from slurm.launch_lock import claim, claim_sweep

log = logging.getLogger("slurm.sweep")


def unfinished(cfgs: dict[str, Config]) -> list[str]:
    """The points whose training is not complete."""
    return [name for name, cfg in cfgs.items() if not launch.training_complete(cfg)]


def submit_inputs(cfgs: dict[str, Config], *, wait_for: bool) -> tuple[bool, list]:
    """Shards once, then each distinct teacher cache and its heads, each only when missing; waiting
    (or local), one step after the other, else chained with afterok: (ok, jobs the points wait for)."""
    caches = {cfg.paths.cache_name: cfg for cfg in cfgs.values()}
    first = next(iter(caches.values()))
    chain = not wait_for and executor_kind(first) == "slurm"
    shards = launch.submit_step(first, "shards")
    if not chain and not launch.finish(first, "shards", shards):
        return False, []
    waits_on: list = []
    for cfg in caches.values():
        previous = shards if chain else []
        for step in ("teacher", "head"):
            jobs = launch.submit_step(cfg, step, after=previous or None)
            if not chain and not launch.finish(cfg, step, jobs):
                return False, []
            previous = jobs or previous
        waits_on += previous if chain else []
    return True, waits_on


def submit_points(cfgs: dict[str, Config], names: list[str], *, sweep: str, after: list | None) -> list:
    """The named points as one array (one task each) of training jobs."""
    first = cfgs[names[0]]
    stage = f"sweep-{sweep}"
    jobs, folder = launch.submit_array(
        first, stage, TrainJob(), [(cfgs[n],) for n in names], after=after or None, resources=first.slurm.train_student
    )
    for job, name in zip(jobs, names):
        job.pipeline_args = [name]
    tasks = [{"job_id": j.job_id, "point": n} for j, n in zip(jobs, names)]
    (folder / "submission.json").write_text(
        json.dumps({"stage": stage, "executor": executor_kind(first), "tasks": tasks}, indent=1)
    )
    log.info("sweep %s: submitted %d point(s) as one array (logs in %s)", sweep, len(jobs), folder)
    return jobs


def run_sweep(cfgs: dict[str, Config], *, sweep: str, wait_for: bool) -> int:
    """Inputs, then the unfinished points; waiting, resubmit failed points and write the comparison."""
    todo = unfinished(cfgs)
    if not todo:
        log.info("sweep %s: every point is trained, nothing to submit", sweep)
    else:
        first = cfgs[todo[0]]
        with contextlib.ExitStack() as inputs:  # no other launch builds these inputs meanwhile
            claim(first, ["shards", "teacher", "head"], inputs)
            ok, after = submit_inputs({n: cfgs[n] for n in todo}, wait_for=wait_for)
        if not ok:
            return 1
        jobs = submit_points(cfgs, todo, sweep=sweep, after=after)
        if not wait_for:
            return 0
        for attempt in range(first.slurm.resubmit + 1):
            waited = launch.wait(jobs, f"sweep {sweep}", totals=False)
            todo = unfinished(cfgs)
            if not todo:
                break
            if waited.input_errors or attempt == first.slurm.resubmit:
                log.error("sweep %s: %d point(s) not finished: %s", sweep, len(todo), ", ".join(todo))
                return 1
            log.warning("sweep %s: resubmitting %d unfinished point(s) (slurm.resubmit)", sweep, len(todo))
            jobs = submit_points(cfgs, todo, sweep=sweep, after=None)
    folder = Path(next(iter(cfgs.values())).paths.run_dir) / "sweeps" / sweep
    table = write_comparison([cfg.paths.student_dir for cfg in cfgs.values()], out=folder)
    log.info("sweep %s: %d point(s) compared in %s", sweep, len(cfgs), table)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, then submit (and by default wait for) the sweep."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="the sweep file (sweeps/<name>.yaml)")
    parser.add_argument("--no-wait", action="store_true", help="submit and return")
    cli.add_config_args(parser)
    args = parser.parse_intermixed_args(argv)
    setup_logging()
    sweep = load_sweep(args.sweep)
    cfgs = point_configs(args.config or ["pipeline.yaml"], args.overrides, sweep)
    first = next(iter(cfgs.values()))
    launch.check_resubmit(first)
    with contextlib.ExitStack() as stack:
        claim_sweep(first, sweep.name, stack)
        return run_sweep(cfgs, sweep=sweep.name, wait_for=not args.no_wait)


if __name__ == "__main__":
    sys.exit(guarded("sweep", main))
