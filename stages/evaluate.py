"""The published test protocol on a trained student (`python -m stages.evaluate [key=value ...]`).

`eval.clips` x `eval.crops` views per video (default 2 x 3, mmaction2's), softmax averaged, at each
evaluated frame count, beside the single centre view; one process per GPU under torchrun or SLURM.
"""

from __future__ import annotations

import sys

from pipeline import cli
from pipeline.config import Config
from pipeline.runtime.errors import guarded, settings_errors
from pipeline.student import evaluate_run


def run_task(cfg: Config) -> list[dict]:
    """Evaluate as this process's rank (from torchrun's or SLURM's environment)."""
    cli.setup_task_logging()
    with settings_errors():
        return evaluate_run.run(cfg)


def main(argv: list[str] | None = None) -> int:
    """Evaluate the checkpoint named by eval.checkpoint and write <student>/test/."""
    cfg, _ = cli.parse(__doc__, argv)
    with settings_errors():
        evaluate_run.run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(guarded("evaluate", main))
