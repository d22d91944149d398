"""Where a result came from: the code's commit (and whether the tree was dirty), package versions, the device."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "torchvision", "timm", "open_clip_torch", "numpy", "zarr", "webdataset")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> dict:
    """The commit and whether tracked files differ from it. PIPELINE_COMMIT, where set, wins: a tree
    copied from a checkout (as onto a lent GPU machine) may carry a .git that is not its own."""
    given = os.environ.get("PIPELINE_COMMIT", "")
    if given:
        return {"commit": given, "dirty": None, "commit_from": "PIPELINE_COMMIT"}
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": "unknown (not a git checkout)", "dirty": None}
    return {"commit": commit, "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}


def versions() -> dict:
    """Python and the versions of the packages a result depends on (absent ones left out)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def device_name(device: str = "auto") -> str:
    """The accelerator's model (CUDA), else the CPU's, with the core count."""
    if device != "cpu":
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {os.cpu_count()} cores"


def provenance(device: str = "auto") -> dict:
    """Everything above plus the host and the time, as one JSON-ready record."""
    return {
        **code_version(),
        "versions": versions(),
        "device": device_name(device),
        "host": socket.gethostname(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
