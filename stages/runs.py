"""Every trained student under a folder (`python -m stages.runs DIR`, `make runs DIR=...`): one line each
with its student, frames, recipe, best validation top-1, whether it learned, epochs, date, commit and device."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.report.runs import runs_table
from pipeline.runtime.errors import UserError, guarded


def main(argv: list[str] | None = None) -> int:
    """Print the table of runs under the folder."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path, nargs="?", default=Path("runs"), help="where to look (default runs/)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        print(runs_table(args.folder))
    except FileNotFoundError as e:
        raise UserError(str(e)) from e
    return 0


if __name__ == "__main__":
    sys.exit(guarded("runs", main))
