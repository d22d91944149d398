"""Who may launch: one launch per stage folder at a time, and none while that folder's earlier
jobs are still queued or running (a second `make shards` on the same run folder)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from pipeline.config import Config
from pipeline.runtime import lock
from slurm.status import active_jobs

ADVICE = "wait for it to end (make status shows its jobs), then launch again if anything is left"

# launch step -> the stage's folder under <run_dir>/slurm (submissions, logs, the launch lock)
FOLDERS = {
    "shards": "shards",
    "teacher": "teacher_cache",
    "head": "teacher_head",
    "train": "train_student",
    "evaluate": "evaluate",
    "export": "export",
}


def claim(cfg: Config, plan: list[str], stack: contextlib.ExitStack) -> None:
    """Take each step's launch lock for this process's life, and refuse while an earlier submission's
    jobs of these steps are still queued or running (a second `make shards` on the same run folder)."""
    run_dir = Path(cfg.paths.run_dir)
    for step in plan:
        folder = FOLDERS[step]
        stack.enter_context(
            lock.hold(run_dir / "slurm" / folder / "launch.lock", what=f"a launch of {folder} on {run_dir}", advice=ADVICE)
        )
        active = active_jobs(cfg, folder)
        if active:
            raise lock.Busy(
                f"{folder} jobs {', '.join(active)} submitted earlier on {run_dir} are still queued or running; "
                f"wait for them (make status) or cancel them (scancel {' '.join(active)}), then launch again"
            )


def claim_sweep(cfg: Config, sweep: str, stack: contextlib.ExitStack) -> None:
    """The sweep's own launch lock, refused while its array is still queued or running."""
    run_dir = cfg.paths.run_dir
    stack.enter_context(
        lock.hold(Path(run_dir) / "slurm" / f"sweep-{sweep}" / "launch.lock", what=f"sweep {sweep} on {run_dir}", advice=ADVICE)
    )
    active = active_jobs(cfg, f"sweep-{sweep}")
    if active:
        raise lock.Busy(
            f"sweep {sweep}: its array {', '.join(active)} is still queued or running on {run_dir}; "
            f"wait for it (make status) or cancel it (scancel {' '.join(active)}), then launch again"
        )
