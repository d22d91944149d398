"""Shared fixtures: the synthetic SSv2 set is generated once per test session with real ffmpeg."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline import config, synthetic

REPO = Path(__file__).resolve().parents[1]


def make_config(ssv2_root: Path, run_dir: Path, *overrides: str) -> config.Config:
    """The repo's pipeline.yaml pointed at a data set and a run folder, with small shards."""
    base = [f"paths.ssv2_root={ssv2_root}", f"paths.run_dir={run_dir}", "shards.videos_per_shard=8", "shards.cpus_per_task=2"]
    return config.load(REPO / "pipeline.yaml", base + list(overrides))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """The default synthetic set (48 videos, 4 classes), shared read-only by the tests."""
    root = tmp_path_factory.mktemp("ssv2")
    synthetic.generate(root, config.SyntheticConfig())
    return root


@pytest.fixture
def synth_copy(synth_root, tmp_path) -> Path:
    """A private copy of the synthetic set that a test may damage."""
    root = tmp_path / "ssv2"
    shutil.copytree(synth_root, root)
    return root


def read_annotations(root: Path, split: str) -> list[dict]:
    """A split's annotation list as written."""
    return json.loads((Path(root) / "labels" / f"{split}.json").read_text())
