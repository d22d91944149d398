"""Bad input gets one line that says what, where and what to do, exit status 2, and no traceback
unless asked for (`--debug`); checked through the real command lines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from pipeline.ssv2.annotations import AnnotationError, load_labels, load_split
from tests.helpers import REPO, SMOKE_YAML


def _launch(*overrides: str, debug: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "slurm.launch", "shards", "--config", "pipeline.yaml", "--config", str(SMOKE_YAML), *overrides]
    if debug:
        cmd.append("--debug")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PIPELINE_DEBUG", None)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def broken_root(synth_root, tmp_path):
    root = tmp_path / "ssv2"
    shutil.copytree(synth_root / "labels", root / "labels")
    (root / "20bn-something-something-v2").symlink_to(synth_root / "20bn-something-something-v2")
    return root


def test_a_wrong_dataset_root_says_which_file_and_which_setting(tmp_path):
    missing = tmp_path / "no-such-root"
    line = _one_line(_launch(f"paths.ssv2_root={missing}", f"paths.run_dir={tmp_path / 'run'}"))
    assert str(missing / "labels" / "labels.json") in line and "paths.ssv2_root" in line
    debug = _launch(f"paths.ssv2_root={missing}", f"paths.run_dir={tmp_path / 'run'}", debug=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_malformed_json_names_file_line_and_column(broken_root, tmp_path):
    path = broken_root / "labels" / "validation.json"
    path.write_text('[\n  {"id": "1", "template": "x"},\n  {"id": "2" "template": "y"}\n]\n')
    line = _one_line(_launch(f"paths.ssv2_root={broken_root}", f"paths.run_dir={tmp_path / 'run'}"))
    assert str(path) in line and "line 3, column 14" in line


def test_a_run_folder_that_cannot_be_made_is_named(synth_root, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = _one_line(_launch(f"paths.ssv2_root={synth_root}", f"paths.run_dir={blocker / 'run'}"))
    assert str(blocker) in line and "folder" in line


def _split(tmp_path, items) -> list:
    path = tmp_path / "train.json"
    path.write_text(json.dumps(items))
    labels = load_labels(REPO / "pipeline" / "ssv2" / "resources" / "ssv2_labels.json")
    return load_split(path, labels)


T = "Pushing something from left to right"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("items", "words"),
    [
        ([{"id": "1", "template": T}, {"id": "1", "template": T}], "id '1' appears twice (entries 0 and 1)"),
        ([{"id": "../etc", "template": T}], "not a plain name"),
        ([{"id": "a/b", "template": T}], "not a plain name"),
        ([{"template": T}], "entry 0 has no 'id'"),
        ([{"id": "1", "template": T}, {"id": "2"}], "entry 1 (id '2') has no 'template'"),
        ({"id": "1"}, "expected a JSON list"),
    ],
)
def test_annotation_entries_that_cannot_be_used_are_named(tmp_path, items, words):
    with pytest.raises(AnnotationError) as e:
        _split(tmp_path, items)
    assert words in str(e.value) and str(tmp_path / "train.json") in str(e.value) and "\n" not in str(e.value)


@pytest.mark.unit
def test_a_test_split_of_ids_only_is_still_read(tmp_path):
    entries = _split(tmp_path, [{"id": "7"}, {"id": "8"}])
    assert [e.id for e in entries] == ["7", "8"] and {e.label for e in entries} == {-1}
