"""Every benchmark imports on a machine without ffmpeg (the GPU machines here have neither the
binary nor ffmpeg-python nor imageio-ffmpeg): each in its own process where those are hidden."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = sorted(f"bench.{p.stem}" for p in (REPO / "bench").glob("*.py") if p.stem != "__init__")

# A fresh interpreter: a meta-path finder refuses the hidden packages, as if not installed; the heavy
# third-party packages are imported once, then each module is imported in a fork of its own, so no
# project module imported for one benchmark can hide another's need. Prints {module: error}.
CHECK = """
import importlib, importlib.abc, json, os, shutil, sys, traceback
HIDDEN = {"ffmpeg", "imageio_ffmpeg"}

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None

sys.meta_path.insert(0, Hide())
assert shutil.which("ffmpeg") is None and "FFMPEG" not in os.environ, "an ffmpeg binary is still reachable"
for heavy in ("numpy", "torch", "torchvision", "timm", "open_clip", "zarr", "webdataset"):
    try:
        importlib.import_module(heavy)
    except ImportError:
        pass  # then the module that needs it fails below, in its own fork

def check(module):
    try:
        importlib.import_module(module)
    except BaseException:
        return traceback.format_exc()[-3000:]
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN)
    return f"left {leaked} in sys.modules" if leaked else ""

failed = {}
for module in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, check(module).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        error = pipe.read().decode()
    os.waitpid(pid, 0)
    if error:
        failed[module] = error
print(json.dumps(failed))
"""


def _env_without_ffmpeg() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FFMPEG"}
    # only the interpreter's own folder: no system ffmpeg binary on PATH
    env["PATH"] = str(Path(sys.executable).parent)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def import_errors(modules: list[str]) -> dict[str, str]:
    """{module: why it does not import} for `modules` imported without ffmpeg, each on its own."""
    done = subprocess.run(
        [sys.executable, "-c", CHECK, *modules], cwd=REPO, env=_env_without_ffmpeg(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.unit
def test_every_bench_module_imports_without_ffmpeg() -> None:
    """Each bench module imports with ffmpeg, ffmpeg-python and imageio-ffmpeg out of reach."""
    failed = import_errors(MODULES)
    assert not failed, "\n\n".join(f"{m} does not import without ffmpeg:\n{e}" for m, e in failed.items())


@pytest.mark.unit
def test_the_hiding_works() -> None:
    """The checking interpreter refuses ffmpeg-python and imageio-ffmpeg (else the test above proves nothing)."""
    assert set(import_errors(["ffmpeg", "imageio_ffmpeg", "json"])) == {"ffmpeg", "imageio_ffmpeg"}
