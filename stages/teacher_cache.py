"""Stage 2: frozen CLIP teacher over the shards -> Zarr cache (`python -m stages.teacher_cache [key=value ...]`)."""

from __future__ import annotations

import sys

from pipeline import cli
from pipeline.config import Config
from pipeline.runtime.errors import guarded
from pipeline.teacher import run as teacher_run


def run_task(cfg: Config, shard_positions: list[int] | None, task_id: int = 0, num_tasks: int = 1) -> dict:
    """One array task: the given shards (positions in the shard indexes), or a stride of them."""
    cli.setup_task_logging()
    summary = teacher_run.run(cfg, task_id, num_tasks, only=shard_positions)
    return {"computed": len(summary.shards_computed), "skipped": summary.shards_skipped}


def main(argv: list[str] | None = None) -> int:
    """Compute this task's shards of the teacher cache."""
    cfg, args = cli.parse(__doc__, argv, tasks=True)
    teacher_run.run(cfg, args.task_id, args.num_tasks)
    return 0


if __name__ == "__main__":
    sys.exit(guarded("teacher-cache", main))
