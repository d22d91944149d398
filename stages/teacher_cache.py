"""Stage 2: frozen CLIP teacher over the shards -> Zarr cache (`python -m stages.teacher_cache [key=value ...]`)."""
from __future__ import annotations

import sys

from pipeline import cli, teacher_run
from pipeline.clip_teacher import TeacherWeightsError
from pipeline.teacher_cache import CacheMismatchError


def main(argv: list[str] | None = None) -> int:
    """Compute this task's shards of the teacher cache."""
    cfg, args = cli.parse(__doc__, argv, tasks=True)
    try:
        teacher_run.run(cfg, args.task_id, args.num_tasks)
    except (TeacherWeightsError, CacheMismatchError, FileNotFoundError) as e:
        sys.exit(f"teacher-cache: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
