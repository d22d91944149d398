"""Logging set-up and a progress reporter (count, rate, ETA) for long jobs."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is at each record, not as it was when logging was set up (a test
    harness swaps it, and a handler kept on a closed stream fails on every record)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """One format for every stage; safe to call more than once."""
    root = logging.getLogger()
    if not any(getattr(h, "_pipeline", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._pipeline = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


def format_duration(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Logs `what` done out of `total` with rate and ETA, at most every `every_s` seconds."""

    def __init__(self, what: str, total: int, every_s: float = 10.0, logger: logging.Logger = log):
        self.what, self.total, self.every_s, self.logger = what, total, every_s, logger
        self.done = 0
        self.start = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        """Count `n` more items and log if it is time."""
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s or self.done == self.total:
            self._last = now
            self.logger.info(self.line())

    @property
    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.start

    def line(self) -> str:
        """The current progress as one line."""
        rate = self.done / self.elapsed if self.elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_text = format_duration(eta) if rate > 0 else "?"
        return f"{self.what}: {self.done}/{self.total} ({rate:.2f}/s, elapsed {format_duration(self.elapsed)}, ETA {eta_text})"
