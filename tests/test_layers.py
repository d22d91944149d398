"""The import-layer check of `make lint` finds imports that run the wrong way, and the tree has none."""

from __future__ import annotations

import importlib.util

import pytest

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("import_layers", REPO / "lint" / "import_layers.py")
layers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(layers)


@pytest.mark.unit
def test_the_tree_imports_one_way():
    assert layers.violations() == []


@pytest.mark.unit
def test_imports_against_the_layers_are_found(tmp_path):
    files = {
        "pipeline/teacher/x.py": "from pipeline.student import train\nfrom pipeline.cache import store\n",
        "pipeline/student/y.py": "def f():\n    import pipeline.teacher.heads\n",  # a function-level import counts
        "pipeline/accel/z.py": "from pipeline.ssv2 import frames\nfrom pipeline.runtime import errors\n",
        "pipeline/cache/w.py": "from pipeline import models\n",  # the same level: not below
        "stages/s.py": "from slurm import launch\nfrom pipeline.cache import store\n",
        "slurm/t.py": "from stages import s\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = layers.violations(tmp_path)
    assert [line.split(":")[0] for line in found] == [
        "pipeline/accel/z.py",
        "pipeline/cache/w.py",
        "pipeline/student/y.py",
        "pipeline/teacher/x.py",
        "stages/s.py",
    ], found
