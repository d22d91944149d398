"""The published test protocol: mmaction2's clips and crops, and the evaluate stage."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.ssv2.multi_view import clip_frames, three_crop_boxes
from pipeline.ssv2.sampling import segment_centres


def _mmaction2_twice_sample(total: int, num_clips: int) -> list[list[int]]:
    """mmaction2 SampleFrames(clip_len=1, frame_interval=1, test_mode=True, twice_sample=True), as its
    documentation and code state it: offsets at avg/2 past each segment start, then the starts, cast to int."""
    avg_interval = total / float(num_clips)
    base_offsets = np.arange(num_clips) * avg_interval
    clip_offsets = base_offsets + avg_interval / 2.0
    offsets = np.concatenate([clip_offsets, base_offsets])
    inds = np.mod(offsets.astype(np.int32), total)  # out_of_bound_opt='loop'
    return [inds[:num_clips].tolist(), inds[num_clips:].tolist()]


@pytest.mark.unit
@pytest.mark.parametrize("segments", [4, 8, 16])
@pytest.mark.parametrize("total", [1, 3, 8, 17, 23, 37, 48, 61, 100])
def test_two_clips_are_mmaction2_twice_sample(total, segments):
    ours = clip_frames(total, segments, 2)
    assert ours == _mmaction2_twice_sample(total, segments)
    assert ours[0] == segment_centres(total, segments)  # clip 0 is the single-view clip


@pytest.mark.unit
def test_more_clips_continue_the_rule_and_one_clip_is_the_centres():
    assert clip_frames(40, 8, 1) == [segment_centres(40, 8)]
    three = clip_frames(48, 8, 3)  # segments of 6 frames: shifts 0.5, 0.833, 0.167 of a segment
    assert three == [[3 + 6 * k for k in range(8)], [5 + 6 * k for k in range(8)], [1 + 6 * k for k in range(8)]]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("height", "width", "boxes"),
    [
        # landscape 240p (SSv2's usual frame): squares of 240 at left, right, middle; step (427 - 240) // 2 = 93
        (240, 427, [(0, 0, 240, 240), (0, 186, 240, 240), (0, 93, 240, 240)]),
        # portrait: top, bottom, middle
        (320, 240, [(0, 0, 240, 240), (80, 0, 240, 240), (40, 0, 240, 240)]),
        # an odd difference rounds the step down, as mmaction2's // does
        (100, 131, [(0, 0, 100, 100), (0, 30, 100, 100), (0, 15, 100, 100)]),
        (256, 256, [(0, 0, 256, 256)] * 3),
    ],
)
def test_three_crops_are_mmaction2_three_crop(height, width, boxes):
    assert three_crop_boxes(height, width) == boxes
