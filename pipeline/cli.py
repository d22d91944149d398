"""The command line every stage shares: `--config FILE`, task placement, and dotted overrides."""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from .config import Config, ConfigError, load
from .progress import setup_logging

log = logging.getLogger(__name__)


def setup_task_logging() -> None:
    """Logging for a stage function started by a job runner (submitit) rather than from the shell."""
    setup_logging()


class TaskStopped(BaseException):
    """The task was told to stop (SIGTERM: scancel, or the job's end); not an error of its input."""


def stop_on_sigterm() -> None:
    """End this task at SIGTERM instead of running on until SLURM's SIGKILL (submitit only logs it).

    Whatever the task was writing stays a temporary file, which the rerun drops; without this, a
    cancelled task could keep starting decodes for the seconds until the kill.
    """
    def stop(signum: int, _frame) -> None:
        raise TaskStopped(f"stopped by signal {signum} (scancel or the job's end); a rerun does what is left")

    signal.signal(signal.SIGTERM, stop)


def parse(description: str, argv: list[str] | None = None, tasks: bool = False) -> tuple[Config, argparse.Namespace]:
    """Parse a stage's command line; exits with a one-line message on a bad config."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="pipeline.yaml", help="the pipeline config (default: pipeline.yaml)")
    if tasks:
        parser.add_argument("--task-id", type=int, default=0, help="this task's index in the array")
        parser.add_argument("--num-tasks", type=int, default=1, help="how many tasks share the work")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. shards.videos_per_shard=64")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        cfg = load(args.config, args.overrides)
    except (ConfigError, OSError) as e:
        sys.exit(f"config error: {e}")
    if tasks and not 0 <= args.task_id < args.num_tasks:
        sys.exit(f"--task-id must be in [0, {args.num_tasks}), got {args.task_id}")
    return cfg, args
