"""A published TSM-ResNet checkpoint as this project's student (`python -m stages.import_weights
--src FILE --from {mit-han-lab,mmaction2,ffn} [--out FILE] [key=value ...]`).

The file is read as downloaded (nothing is fetched), every tensor is matched to the student the
config builds (student.arch, student.num_frames, train.frame_counts) and checked: layout, shapes,
class count, frame count and shift. By default it becomes a new student folder (paths.student_name):
best.pt, which `make evaluate` reads (eval.checkpoint=best), and config.yaml, the student settings
evaluation builds. Any output file also serves as `student.pretrained=FILE` to start a training from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline import cli
from pipeline.runtime.errors import guarded, settings_errors
from pipeline.student.import_weights import FORMATS, import_as_student, import_checkpoint


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", type=Path, required=True, help="the downloaded checkpoint")
    parser.add_argument("--from", dest="fmt", required=True, choices=FORMATS, help="whose layout it is in")
    parser.add_argument("--out", type=Path, default=None, help="where to write it (default: <student>/best.pt and config.yaml)")
    parser.add_argument(
        "--trusted", action="store_true", help="load a file that holds more than tensors (can run code: trusted files only)"
    )


def main(argv: list[str] | None = None) -> int:
    """Convert --src into a project checkpoint and say where it went."""
    cfg, args = cli.parse(__doc__, argv, options=_options)
    with settings_errors():
        if args.out is None:
            import_as_student(cfg, args.src, args.fmt, trusted=args.trusted)
        else:
            import_checkpoint(cfg, args.src, args.fmt, args.out, trusted=args.trusted)
    return 0


if __name__ == "__main__":
    sys.exit(guarded("import-weights", main))
