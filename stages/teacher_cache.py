"""Stage 2: frozen CLIP teacher over the shards -> Zarr cache (`python -m stages.teacher_cache [key=value ...]`)."""

from __future__ import annotations

import logging
import sys

from pipeline import cli
from pipeline.cache.store import forget_shards, open_checked
from pipeline.config import Config
from pipeline.runtime.errors import guarded
from pipeline.teacher import run as teacher_run

log = logging.getLogger("stages.teacher_cache")


def run_task(cfg: Config, shard_positions: list[int] | None, task_id: int = 0, num_tasks: int = 1) -> dict:
    """One array task: the given shards (positions in the shard indexes), or a stride of them."""
    cli.setup_task_logging()
    summary = teacher_run.run(cfg, task_id, num_tasks, only=shard_positions)
    return {"computed": len(summary.shards_computed), "skipped": summary.shards_skipped}


def main(argv: list[str] | None = None) -> int:
    """Compute this task's shards of the teacher cache."""
    cfg, args = cli.parse(__doc__, argv, tasks=True, options=_options)
    if args.recompute:
        root = open_checked(cfg, mode="r+")  # only a cache built from these shards and this teacher is repaired
        log.info("recomputing %s (done marks cleared)", ", ".join(forget_shards(root, args.recompute)))
    teacher_run.run(cfg, args.task_id, args.num_tasks)
    return 0


def _options(parser) -> None:
    parser.add_argument(
        "--recompute", nargs="+", default=[], metavar="SHARD", help="recompute these shards (e.g. a damaged one: train-000003)"
    )


if __name__ == "__main__":
    sys.exit(guarded("teacher-cache", main))
