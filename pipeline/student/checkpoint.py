"""Checkpoints that are complete or absent: `latest.pt` and `best.pt`, each written atomically."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.runtime.atomic import publish, tmp_name


def rng_state() -> dict[str, Any]:
    """Every random generator's state, so a resumed run draws what the uninterrupted one would."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    torch.save(state, tmp)
    publish(tmp, path)


def load(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None when there is none."""
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def clean_tmp(folder: Path) -> None:
    """Drop temporary checkpoint files left by a killed process (never trusted)."""
    for tmp in Path(folder).glob(".*.pt.tmp-*"):
        if tmp.name.endswith(f"-{os.getpid()}"):
            continue
        tmp.unlink(missing_ok=True)
