"""Write the run report: `<run_dir>/report/report.md` and PNG plots (`python -m stages.report [key=value ...]`)."""

from __future__ import annotations

import sys

from pipeline import cli
from pipeline.report import write as report
from pipeline.student.checkpoint import CheckpointError


def main(argv: list[str] | None = None) -> int:
    """Report on whatever the run has produced so far."""
    cfg, _ = cli.parse(__doc__, argv)
    try:
        report.write_report(cfg)
    except CheckpointError as e:
        sys.exit(f"report: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
