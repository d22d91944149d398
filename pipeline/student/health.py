"""Whether a training run learned: the plateau check every run summary, report and experiment table applies.

A student that falls onto a plateau early (docs/proxy_benchmark.md: AdamW at lr 1e-3 without
warm-up, 16 frames) keeps the validation top-1 of its first epochs to the end; it trains on, its
loss falls a little, and nothing fails. The check compares the best validation top-1 after the
first fifth of the epochs with the best of that first fifth.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_EPOCHS = 4  # fewer validations say nothing about a curve's shape
FITTED = 0.9  # training top-1 at which the training clips count as learned (the flat curve is overfitting)
# or this far above the best validation top-1: memorised beyond what generalises (a failed
# optimisation keeps the two close: 0.19 validation, about 0.2-0.3 training)
GAP = 0.5
RISE = 0.05  # top-1 a learning run gains after its first fifth of epochs, at least (docs/frame_flexible.md)
SOLVED = 0.95  # an early level this high has nothing left to rise to


@dataclass(frozen=True)
class Plateau:
    """The verdict on one validation curve."""

    flagged: bool
    early: float  # best validation top-1 of the first epochs
    later: float  # best after them
    early_epochs: int
    train_top1: float | None = None  # the last epoch's training top-1, when known

    @property
    def overfit(self) -> bool:
        """A flat validation curve over learned training clips: the labels are used up, the optimiser is fine."""
        if not self.flagged or self.train_top1 is None:
            return False
        return self.train_top1 >= FITTED or self.train_top1 >= max(self.early, self.later) + GAP

    def sentence(self) -> str:
        """One line for a log, a report or a table note."""
        if not self.flagged:
            return f"learned: validation top-1 rose from {self.early:.3f} (first {self.early_epochs} epochs) to {self.later:.3f}"
        head = (
            f"PLATEAU: validation top-1 never left its first {self.early_epochs} epochs' level ({self.early:.3f}, "
            f"best later {self.later:.3f})"
        )
        if self.overfit:
            return (
                f"{head}, while the training clips were learned (training top-1 {self.train_top1:.3f}): more labelled "
                "or unlabelled videos, a teacher or augmentation will help, a lower lr will not"
            )
        train = "" if self.train_top1 is None else f", training top-1 {self.train_top1:.3f}"
        return (
            f"{head}{train}; the run likely learned only what single frames show. Lower train.lr or raise "
            "train.warmup_epochs (docs/frame_flexible.md, 'Training that learns')"
        )


def learned_word(top1_per_epoch: list[float], train_top1: float | None = None) -> str:
    """The verdict in a word for tables: PLATEAU, yes, or - when too short to judge."""
    verdict = plateau(top1_per_epoch, train_top1)
    return "-" if verdict is None else ("PLATEAU" if verdict.flagged else "yes")


def plateau(top1_per_epoch: list[float], train_top1: float | None = None) -> Plateau | None:
    """The plateau verdict of a run's validation top-1 per epoch (with its last training top-1, which
    tells overfitting from a failed optimisation), or None when it has too few epochs to judge."""
    n = len(top1_per_epoch)
    if n < MIN_EPOCHS:
        return None
    k = max(1, n // 5)
    early, later = max(top1_per_epoch[:k]), max(top1_per_epoch[k:])
    flagged = early < SOLVED and later < early + RISE
    return Plateau(flagged=flagged, early=early, later=later, early_epochs=k, train_top1=train_top1)
