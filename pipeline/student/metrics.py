"""Running means, top-k accuracy, and a metrics log (JSON lines plus TensorBoard scalars)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.runtime.atomic import write_text


class AverageMeter:
    """A running mean weighted by batch size."""

    def __init__(self) -> None:
        self.sum, self.count = 0.0, 0

    def update(self, value, n: int = 1) -> None:
        """Add `value` (a number or a device tensor, kept unsynchronised) measured over `n` items."""
        self.sum = self.sum + value * n
        self.count += n

    @property
    def avg(self) -> float:
        """The mean so far (0 before any update)."""
        return float(self.sum) / self.count if self.count else 0.0


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Per clip, whether its label is among the top k logits, for each k (bool tensors, on the device)."""
    top = logits.topk(min(max(ks), logits.shape[-1]), dim=-1).indices == labels[:, None]
    return [top[:, :k].any(dim=1) for k in ks]


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1, top-5) accuracy of a batch as device tensors (no synchronisation)."""
    top1, top5 = topk_hits(logits, labels)
    return top1.float().mean(), top5.float().mean()


class MetricsLog:
    """Appends one JSON object per record to `metrics.jsonl` and mirrors numbers to TensorBoard.

    A run resumed from a checkpoint at step S first drops every record after S (written by the
    interrupted run after its last checkpoint, and written again as the steps are redone), in the
    file and in TensorBoard (`purge_step`), so each step has one record.
    """

    def __init__(self, folder: Path, enabled: bool = True, resume_step: int = 0, resume_validations: int | None = None):
        self.enabled = enabled
        self.path = Path(folder) / "metrics.jsonl"
        self._tb = None
        if enabled:
            Path(folder).mkdir(parents=True, exist_ok=True)
            truncate_after(self.path, resume_step, validations=resume_validations)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(folder) / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:  # TensorBoard is pinned, but metrics.jsonl is the record of truth
                self._tb = None

    def write(self, kind: str, step: int, **values: Any) -> None:
        """Record `values` of `kind` (train, val, eval) at `step`."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": time.time(), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        """Flush TensorBoard."""
        if self._tb is not None:
            self._tb.close()


def truncate_after(path: Path, step: int, *, validations: int | None = None) -> int:
    """Drop the records of `path` past `step`, and the validation records of epochs from `validations`
    on (a checkpoint saved at an epoch's last step precedes that epoch's validation, which the resumed
    run does again); atomically: a crash leaves the old file or the new one. How many went."""
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if _kept(line, step, validations)]
    if len(kept) < len(lines):
        write_text(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


def _kept(line: str, step: int, validations: int | None) -> bool:
    """Whether a record stays: at or before `step`, and not a validation the resumed run does again."""
    try:
        record = json.loads(line)
        at, epoch = int(record.get("step", 0)), int(record.get("epoch", 0))
    except (ValueError, AttributeError):  # a line torn by a kill: past any checkpoint
        return False
    redone = validations is not None and record.get("kind") == "val" and epoch >= validations
    return at <= step and not redone
