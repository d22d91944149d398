"""Runs side by side (`python -m stages.compare RUN [RUN ...] [--out DIR]`): a table and plots.

A RUN is a student folder, a run folder or a sweep folder (every trained student below it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.report.compare import write_comparison
from pipeline.runtime.errors import UserError, guarded
from pipeline.runtime.progress import setup_logging

log = logging.getLogger("compare")


def main(argv: list[str] | None = None) -> int:
    """Write compare.md (and compare.json and two plots) for the named runs."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="student, run or sweep folders")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="where compare.md goes")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        table = write_comparison(args.runs, out=args.out)
    except FileNotFoundError as e:
        raise UserError(f"{e}; name the folders of trained runs") from e
    log.info("wrote %s", table)
    return 0


if __name__ == "__main__":
    sys.exit(guarded("compare", main))
