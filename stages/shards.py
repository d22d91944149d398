"""Stage 1: SSv2 .webm videos -> WebDataset tar shards (`python -m stages.shards [key=value ...]`)."""
from __future__ import annotations

import sys

from pipeline import cli, shards


def main(argv: list[str] | None = None) -> int:
    """Build this task's shards; exit 0 even with rejected videos (they are listed in the manifests)."""
    cfg, args = cli.parse(__doc__, argv, tasks=True)
    shards.run(cfg, args.task_id, args.num_tasks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
