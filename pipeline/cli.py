"""The command line every stage shares: `--config FILE`, task placement, and dotted overrides."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from pipeline.config import Config, ConfigError, load
from pipeline.runtime.progress import setup_logging

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


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` (repeatable: later files override earlier ones) and dotted overrides."""
    parser.add_argument(
        "--config",
        action="append",
        default=None,
        help="a pipeline config; give it again to layer another file on top (default: pipeline.yaml)",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also PIPELINE_DEBUG=1)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. shards.videos_per_shard=64")


def load_config(args: argparse.Namespace) -> Config:
    """The config the parsed arguments name; exits with a one-line message when it does not fit."""
    try:
        return load(args.config or ["pipeline.yaml"], args.overrides)
    except OSError as e:
        raise ConfigError(f"config file {e.filename}: {e.strerror}; name an existing file with --config") from e


def parse(
    description: str, argv: list[str] | None = None, tasks: bool = False, options=None
) -> tuple[Config, argparse.Namespace]:
    """Parse a stage's command line (`options(parser)` adds the stage's own); a bad config raises ConfigError."""
    parser = argparse.ArgumentParser(description=description)
    if options is not None:
        options(parser)
    if tasks:
        parser.add_argument("--task-id", type=int, default=0, help="this task's index in the array")
        parser.add_argument("--num-tasks", type=int, default=1, help="how many tasks share the work")
    add_config_args(parser)
    args = parser.parse_intermixed_args(argv)
    setup_logging()
    cfg = load_config(args)
    if tasks and not 0 <= args.task_id < args.num_tasks:
        sys.exit(f"--task-id must be in [0, {args.num_tasks}), got {args.task_id}")
    return cfg, args
