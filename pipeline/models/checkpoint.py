"""Checkpoints that are complete or absent: `latest.pt` and `best.pt`, each written atomically."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import config
from pipeline.config import Config
from pipeline.runtime.atomic import discard_on_error, publish, tmp_name
from pipeline.runtime.errors import UserError


def rng_state() -> dict[str, Any]:
    """Every random generator's state, so a resumed run draws what the uninterrupted one would."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]  # plain values: loads with weights_only
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()  # serialised first: on a full disk torch's writer hides the OSError behind its own error
    torch.save(state, buffer)
    with discard_on_error(tmp_name(path), path) as tmp:  # a full disk leaves the previous checkpoint as it was
        tmp.write_bytes(buffer.getbuffer())
        publish(tmp, path)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that is not one the trainer wrote; the message says what to do."""


# Earlier versions stored numpy's RNG state as an array: these rebuild exactly that, nothing else.
_EARLIER_FORMAT = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


def load(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None when there is none. Loaded with `weights_only=True`: tensors
    and plain values only, so a file from elsewhere cannot run code; anything else is refused."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with torch.serialization.safe_globals(_EARLIER_FORMAT):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise CheckpointError(
            f"{path}: not a checkpoint this pipeline wrote ({reason[:160]}); it was not loaded, since that could run "
            "code. Move it away to train afresh, or point eval.checkpoint at one the trainer saved"
        ) from e


def clean_tmp(folder: Path) -> None:
    """Drop temporary checkpoint files left by a killed process (never trusted)."""
    for tmp in Path(folder).glob(".*.pt.tmp-*"):
        if tmp.name.endswith(f"-{os.getpid()}"):
            continue
        tmp.unlink(missing_ok=True)


def with_trained_settings(cfg: Config) -> Config:
    """`cfg` with the model the student folder's config.yaml says was trained (the `student` section
    and the trained frame counts), so evaluation and export build that model whatever the command
    says (a sweep's points differ in them); runtime settings stay the command's."""
    path = cfg.paths.student_dir / "config.yaml"
    if not path.exists():
        return cfg
    saved = config.load(path)
    train = dataclasses.replace(cfg.train, frame_counts=saved.train.frame_counts)
    return dataclasses.replace(cfg, student=saved.student, train=train)
