"""Stage 3: train a student from the shards and the teacher cache (`python -m stages.train_student [key=value ...]`).

One process per GPU: start it under torchrun or as SLURM tasks; a single process trains alone.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipeline import cli
from pipeline.config import Config
from pipeline.runtime.errors import guarded, settings_errors
from pipeline.student import train


def run_task(cfg: Config, should_stop: Callable[[], bool] | None = None) -> train.TrainSummary:
    """Train as this process's rank (from torchrun's or SLURM's environment), stopping when asked."""
    cli.setup_task_logging()
    with settings_errors():
        return train.run(cfg, should_stop=should_stop)


def main(argv: list[str] | None = None) -> int:
    """Train, or resume from latest.pt, and evaluate at the configured frame counts."""
    cfg, _ = cli.parse(__doc__, argv)
    with settings_errors():
        train.run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(guarded("train-student", main))
