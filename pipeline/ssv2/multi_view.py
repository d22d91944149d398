"""The published test protocol's views of a video: several clips x three crops (mmaction2, TSM).

Clips: mmaction2's `SampleFrames(test_mode=True, twice_sample=True)` for 2D models. With
`n = num_frames / T`, clip 0 takes frame floor((k + 0.5) n) of segment k (the segment centres, as
single-view evaluation does) and clip 1 takes floor(k n) (the segment starts). More clips continue
the rule: clip j takes floor((k + s_j) n) with s_j = (0.5 + j / clips) mod 1, so two clips are
exactly mmaction2's pair.

Crops: mmaction2's `ThreeCrop` after `Resize(scale=(-1, 256))`: three squares as tall (or wide) as
the frame's short side, at the start, the end and the middle of the long side, in that order. Here
the squares are cut from the stored frame and then resized (mmaction2 resizes first, so its offsets
can differ from these by a pixel of the stored frame).
"""

from __future__ import annotations


def clip_frames(num_frames: int, segments: int, clips: int) -> list[list[int]]:
    """Frame indices of each test clip: `clips` lists of `segments` indices."""
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    if clips < 1:
        raise ValueError(f"eval.clips={clips}: at least 1")
    step = num_frames / segments
    if clips <= 2:  # mmaction2's own floating-point arithmetic, so the indices are its indices
        pair = [[k * step + step / 2.0 for k in range(segments)], [k * step for k in range(segments)]]
        return [[min(num_frames - 1, int(x)) for x in offsets] for offsets in pair[:clips]]
    # exact fractions: clip j at (k + s_j) segments, s_j = (clips + 2j mod 2 clips) / (2 clips)
    twice = 2 * clips
    return [
        [min(num_frames - 1, (twice * k + (clips + 2 * j) % twice) * num_frames // (twice * segments)) for k in range(segments)]
        for j in range(clips)
    ]


def three_crop_boxes(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(top, left, size, size) of the three short-side squares: start, end, middle of the long side."""
    side = min(height, width)
    step = (max(height, width) - side) // 2
    offsets = (0, 2 * step, step)
    if width >= height:
        return [(0, o, side, side) for o in offsets]
    return [(o, 0, side, side) for o in offsets]
