"""The trained student for deployment (`python -m stages.export [key=value ...]`).

Per frame count (the trained ones and `export.frame_counts`): an ONNX file and a `torch.export`
program in <student>/export/, each checked against PyTorch on real validation clips, and a latency
table at batch 1 (onnxruntime on the CPU, one thread and all; PyTorch on the GPU when there is one).
"""

from __future__ import annotations

import sys

from pipeline import cli
from pipeline.config import Config
from pipeline.runtime.errors import guarded, settings_errors
from pipeline.student import export_run


def run_task(cfg: Config) -> dict:
    """The stage as one job."""
    cli.setup_task_logging()
    with settings_errors():
        facts = export_run.run(cfg)
    return {"exported": len(facts["rows"])}


def main(argv: list[str] | None = None) -> int:
    """Export, check and time the checkpoint named by export.checkpoint."""
    cfg, _ = cli.parse(__doc__, argv)
    with settings_errors():
        export_run.run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(guarded("export", main))
