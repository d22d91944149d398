"""Shared fixtures: the synthetic SSv2 set is generated once per test session with real ffmpeg."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline import config
from pipeline.ssv2 import synthetic

TIERS = ("unit", "slurm", "slow")


def pytest_collection_modifyitems(items):
    """A test with no tier marker runs real stages: it is an integration test."""
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.integration)


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
