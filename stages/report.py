"""Write the run report: `<run_dir>/report/report.md` and PNG plots (`python -m stages.report [key=value ...]`)."""

from __future__ import annotations

import sys

from pipeline import cli
from pipeline.report import write as report
from pipeline.runtime.errors import guarded


def main(argv: list[str] | None = None) -> int:
    """Report on whatever the run has produced so far."""
    cfg, _ = cli.parse(__doc__, argv)
    report.write_report(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(guarded("report", main))
