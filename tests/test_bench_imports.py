"""Every benchmark imports on a machine without ffmpeg (the GPU machines here have neither the
binary nor ffmpeg-python nor imageio-ffmpeg): each in a fresh interpreter where those are hidden."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = sorted(f"bench.{p.stem}" for p in (REPO / "bench").glob("*.py") if p.stem != "__init__")

# Runs before the benchmark's import: a meta-path finder refuses the hidden packages, as if not installed.
HIDE = """
import importlib, importlib.abc, os, shutil, sys
HIDDEN = {"ffmpeg", "imageio_ffmpeg"}

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None

sys.meta_path.insert(0, Hide())
assert shutil.which("ffmpeg") is None and "FFMPEG" not in os.environ, "an ffmpeg binary is still reachable"
importlib.import_module(sys.argv[1])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN)
assert not leaked, f"importing {sys.argv[1]} left {leaked} in sys.modules"
"""


def _env_without_ffmpeg() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FFMPEG"}
    # only the interpreter's own folder: no system ffmpeg binary on PATH
    env["PATH"] = str(Path(sys.executable).parent)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _import_error(module: str) -> str | None:
    """Why `module` does not import in a fresh interpreter without ffmpeg, or None when it does."""
    done = subprocess.run(
        [sys.executable, "-c", HIDE, module], cwd=REPO, env=_env_without_ffmpeg(), capture_output=True, text=True, timeout=300
    )
    return None if done.returncode == 0 else done.stderr[-3000:]


@pytest.mark.unit
def test_every_bench_module_imports_without_ffmpeg() -> None:
    """Each bench module imports with ffmpeg, ffmpeg-python and imageio-ffmpeg out of reach."""
    # one interpreter per module (an import cached by an earlier module would hide a need), several at once
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        errors = dict(zip(MODULES, pool.map(_import_error, MODULES)))
    failed = {m: e for m, e in errors.items() if e is not None}
    assert not failed, "\n\n".join(f"{m} does not import without ffmpeg:\n{e}" for m, e in failed.items())


@pytest.mark.unit
def test_the_hiding_works() -> None:
    """The hidden interpreter refuses ffmpeg-python itself (else the test above proves nothing)."""
    assert _import_error("ffmpeg") is not None
