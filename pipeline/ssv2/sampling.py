"""Which frames of a video a model sees: T equal segments, the centre or a random frame of each."""

from __future__ import annotations

import numpy as np


def segment_centres(num_frames: int, segments: int) -> list[int]:
    """The centre frame of each of `segments` equal segments (short videos repeat frames)."""
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    return [min(num_frames - 1, int((k + 0.5) * num_frames / segments)) for k in range(segments)]


def segment_of(index: int, total: int, segments: int) -> int:
    """Which of `segments` equal segments of `total` items item `index` falls in (the inverse of the
    segment samplers: a frame drawn in segment k, or segment k's centre, gives k)."""
    return min(segments - 1, index * segments // total)


def segment_random(num_frames: int, segments: int, rng: np.random.Generator) -> list[int]:
    """A random frame in each of `segments` equal segments (TSN-style training sampling)."""
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    edges = np.linspace(0, num_frames, segments + 1)
    starts = np.floor(edges[:-1]).astype(int)
    ends = np.maximum(starts + 1, np.floor(edges[1:]).astype(int))
    return [int(min(num_frames - 1, rng.integers(s, e))) for s, e in zip(starts, ends)]
