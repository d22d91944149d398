"""Stage 2b: teacher heads fitted on the cached features (`python -m stages.teacher_head [key=value ...]`)."""

from __future__ import annotations

import sys

from pipeline import cli
from pipeline.config import Config
from pipeline.runtime.errors import UserError, guarded
from pipeline.teacher import head_run


def run_task(cfg: Config) -> dict:
    """The stage as one job: fit what is not fitted yet."""
    cli.setup_task_logging()
    summary = head_run.run(cfg)
    return {"fitted": summary.fitted, "skipped": summary.skipped}


def main(argv: list[str] | None = None) -> int:
    """Fit the configured teacher heads and write their logits into the cache."""
    cfg, _ = cli.parse(__doc__, argv)
    try:
        head_run.run(cfg)
    except ValueError as e:  # a setting that does not fit: said in one line
        raise UserError(str(e)) from e
    return 0


if __name__ == "__main__":
    sys.exit(guarded("teacher-head", main))
