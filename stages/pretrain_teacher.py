"""Pretrain the proxy benchmark's CLIP-style teacher here (`python -m stages.pretrain_teacher [key=value ...]`)."""

from __future__ import annotations

import sys

from pipeline import cli
from pipeline.runtime.errors import guarded
from pipeline.teacher import pretrain


def main(argv: list[str] | None = None) -> int:
    """Render the teacher corpus, train with ClipLoss, write the checkpoint teacher.pretrained names."""
    cfg, _ = cli.parse(__doc__, argv)
    pretrain.run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(guarded("pretrain-teacher", main))
