"""What several test modules share: the repo's paths and configs pointed at a data set and a run."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import config

REPO = Path(__file__).resolve().parents[1]
PIPELINE_YAML = REPO / "pipeline.yaml"
SMOKE_YAML = REPO / "configs" / "smoke.yaml"


# Over the smoke settings: a smaller student and clip, for tests that train (seconds on two cores).
TINY_TRAINING = (
    "teacher.num_workers=0",
    "student.image_size=48",
    "student.num_frames=4",
    "teacher.num_frames=4",  # with training views the teacher encodes (a subset of) the student's frames
    "train.log_every_steps=2",
    "train.eval_frame_counts=[2,4]",
)


# The proxy benchmark's stages on a few videos per class (the slow tier's experiment variants).
TINY_PROXY = (
    "synthetic.train_per_class=2",
    "synthetic.validation_per_class=1",
    "synthetic.test_per_class=0",
    "teacher_pretrain.videos=40",
    "teacher_pretrain.heldout_videos=10",
    "teacher_pretrain.steps=3",
    "teacher_pretrain.batch_size=32",
    "teacher_head.min_steps=20",
    "teacher_head.folds=2",
)


def make_config(ssv2_root: Path, run_dir: Path, *overrides: str) -> config.Config:
    """pipeline.yaml with the smoke settings (configs/smoke.yaml), pointed at a data set and a run folder."""
    paths = [f"paths.ssv2_root={ssv2_root}", f"paths.run_dir={run_dir}"]
    return config.load([PIPELINE_YAML, SMOKE_YAML], paths + list(overrides))


def config_args(ssv2_root: Path, run_dir: Path, *overrides: str) -> list[str]:
    """The command-line arguments that give a stage the same config as `make_config`."""
    return [
        "--config",
        str(PIPELINE_YAML),
        "--config",
        str(SMOKE_YAML),
        f"paths.ssv2_root={ssv2_root}",
        f"paths.run_dir={run_dir}",
        *overrides,
    ]


def read_annotations(root: Path, split: str) -> list[dict]:
    """A split's annotation list as written."""
    return json.loads((Path(root) / "labels" / f"{split}.json").read_text())
