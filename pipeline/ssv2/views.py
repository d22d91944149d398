"""Views of a training video: which frames, which crop box and whether flipped.

A view is what one training clip looks at. The teacher-cache stage draws K views per training
video from a generator keyed by (view seed, row), computes the teacher's outputs for each, and
stores the views' parameters beside them; in epoch e the student replays view
`replay_view(seed, row, e, K)` of each video, so both models see the same pixels (FKD's soft labels
for K stored crops, brought to clips).

Frames are the training sampler's random frame per segment at the student's frame count; the box
is TSN's multi-scale crop, in the stored frame's pixels; the flip is a horizontal flip of the crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.ssv2.sampling import segment_centres, segment_random

SCALES = (1.0, 0.875, 0.75, 0.66)  # TSN multi-scale crop, as fractions of the short side
SAMPLER = "a random frame in each of equal segments; TSN multi-scale crop (scales 1, .875, .75, .66, pairs one step apart)"


@dataclass(frozen=True)
class View:
    """One clip of a video: frame indices, crop box (top, left, height, width) and horizontal flip."""

    frames: tuple[int, ...]
    box: tuple[int, int, int, int]
    flip: bool


def crop_box(h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width): a random scale pair (at most one step apart) at a random place."""
    base = min(h, w)
    i = int(rng.integers(len(SCALES)))
    j = int(np.clip(i + rng.integers(-1, 2), 0, len(SCALES) - 1))
    ch, cw = int(base * SCALES[i]), int(base * SCALES[j])
    return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw


def centre_box(h: int, w: int) -> tuple[int, int, int, int]:
    """The centred square of side min(h, w): the evaluation and centre-view crop."""
    s = min(h, w)
    return (h - s) // 2, (w - s) // 2, s, s


def draw_views(record: dict, *, count: int, clip_frames: int, flip: bool, seed: int) -> list[View]:
    """The `count` views of the video in shard `record`, the same on every call (keyed by seed and row)."""
    rng = np.random.default_rng([seed, record["row"]])
    views = []
    for _ in range(count):
        frames = tuple(segment_random(record["num_frames"], clip_frames, rng))
        box = crop_box(record["height"], record["width"], rng)
        views.append(View(frames, box, bool(flip and rng.random() < 0.5)))
    return views


def centre_view(record: dict, num_frames: int) -> View:
    """The single view of a video outside training views: segment centres, centred square, no flip."""
    frames = tuple(segment_centres(record["num_frames"], num_frames))
    return View(frames, centre_box(record["height"], record["width"]), False)


def replay_view(seed: int, row: int, epoch: int, count: int) -> int:
    """Which of a video's `count` views the student sees in `epoch`: each once per `count` epochs,
    in an order drawn afresh every round."""
    if count == 1:
        return 0
    rounds, turn = divmod(epoch, count)
    return int(np.random.default_rng([seed, row, rounds]).permutation(count)[turn])


def teacher_subset(frames: tuple[int, ...], count: int) -> tuple[int, ...]:
    """The `count` frames of a view the teacher encodes: evenly spaced over the student's frames
    (all of them when the counts are equal)."""
    if count > len(frames):
        raise ValueError(f"the teacher cannot take {count} frames of a {len(frames)}-frame view")
    return tuple(frames[i] for i in segment_centres(len(frames), count))


def view_arrays(views: list[list[View]], clip_frames: int) -> dict[str, np.ndarray]:
    """Per video and view: `view_frames` [V, K, T] int32, `view_box` [V, K, 4] int32, `view_flip` [V, K] bool."""
    k = len(views[0]) if views else 0
    frames = np.array([[v.frames for v in vv] for vv in views], dtype=np.int32).reshape(len(views), k, clip_frames)
    boxes = np.array([[v.box for v in vv] for vv in views], dtype=np.int32).reshape(len(views), k, 4)
    flips = np.array([[v.flip for v in vv] for vv in views], dtype=bool).reshape(len(views), k)
    return {"view_frames": frames, "view_box": boxes, "view_flip": flips}


def view_from_arrays(frames: np.ndarray, box: np.ndarray, flip: np.ndarray | bool) -> View:
    """A View from one row of the stored arrays."""
    return View(tuple(int(f) for f in frames), tuple(int(b) for b in box), bool(flip))
