"""Write the run report: `<run_dir>/report/report.md` and PNG plots (`python -m stages.report [key=value ...]`)."""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline import cli
from pipeline.report import write as report
from pipeline.runtime.errors import guarded


def _options(parser) -> None:
    parser.add_argument("--vanilla", type=Path, default=None, help="a vanilla student folder: set this run against it per class")


def main(argv: list[str] | None = None) -> int:
    """Report on whatever the run has produced so far."""
    cfg, args = cli.parse(__doc__, argv, options=_options)
    report.write_report(cfg, vanilla=args.vanilla)
    return 0


if __name__ == "__main__":
    sys.exit(guarded("report", main))
