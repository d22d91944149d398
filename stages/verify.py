"""Check every output of a run and print each problem with the command that repairs it
(`python -m stages.verify [--config FILE] [key=value ...]`, `make verify`); exit 1 when anything is wrong."""

from __future__ import annotations

import shlex
import sys

from pipeline import cli
from pipeline.runtime.errors import guarded
from pipeline.verify import verify


def main(argv: list[str] | None = None) -> int:
    """Run every check; 0 when the run's outputs are whole, 1 when a problem was found."""
    argv = sys.argv[1:] if argv is None else argv
    cfg, _ = cli.parse(__doc__, argv)
    args = shlex.join(a for a in argv if a != "--debug")
    problems = verify(cfg, args)
    for p in problems:
        print(f"PROBLEM {p.what}\n  repair: {p.repair}")
    print(f"verify: {len(problems)} problem(s) in {cfg.paths.run_dir}" if problems else f"verify: {cfg.paths.run_dir} is whole")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(guarded("verify", main))
