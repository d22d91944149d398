"""Write the tiny synthetic SSv2-format data set to `paths.ssv2_root` (`python -m stages.synthetic`)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pipeline import cli
from pipeline.runtime.errors import guarded
from pipeline.ssv2 import synthetic

log = logging.getLogger("stages.synthetic")


def main(argv: list[str] | None = None) -> int:
    """Generate the data set unless it is already there."""
    cfg, _ = cli.parse(__doc__, argv)
    root = Path(cfg.paths.ssv2_root)
    if (root / "labels" / "test.json").exists():
        log.info("synthetic data set already at %s", root)
        return 0
    synthetic.generate(root, cfg.synthetic)
    return 0


if __name__ == "__main__":
    sys.exit(guarded("synthetic", main))
