"""Stage 1: SSv2 .webm videos -> WebDataset tar shards (`python -m stages.shards [key=value ...]`)."""

from __future__ import annotations

import sys

from pipeline import cli
from pipeline.config import Config
from pipeline.runtime.errors import guarded
from pipeline.shards import build as shards


def run_task(cfg: Config, shard_positions: list[int]) -> dict:
    """One array task: build the given shards (plan positions); returns what it did, for the launcher."""
    cli.setup_task_logging()
    cli.stop_on_sigterm()
    summary = shards.run(cfg, only=shard_positions)
    return {"built": summary.shards_built, "skipped": summary.shards_skipped, "rejected": len(summary.rejected)}


def main(argv: list[str] | None = None) -> int:
    """Build this task's shards; exit 0 even with rejected videos (they are listed in the manifests)."""
    cfg, args = cli.parse(__doc__, argv, tasks=True)
    shards.run(cfg, args.task_id, args.num_tasks)
    return 0


if __name__ == "__main__":
    sys.exit(guarded("shards", main))
