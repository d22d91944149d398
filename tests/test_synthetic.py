import io

import numpy as np
import pytest
from PIL import Image

from pipeline import config
from pipeline.shards.ffmpeg import decode_video
from pipeline.ssv2 import synthetic
from pipeline.ssv2.annotations import load_labels, load_split
from tests.helpers import read_annotations


def _object_track(root, vid):
    """Centroid and area of the saturated object in every decoded frame."""
    video = decode_video(root / "20bn-something-something-v2" / f"{vid}.webm", 256, 2, 30)
    track = []
    for jpeg in video.jpegs:
        rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)
        mask = (rgb.max(-1) - rgb.min(-1)) > 120
        ys, xs = np.nonzero(mask)
        track.append((xs.mean(), ys.mean(), mask.sum()))
    return video, np.array(track)


def test_videos_decode_and_move_as_their_label_says(synth_root):
    labels = load_labels(synth_root / "labels" / "labels.json")
    entries = load_split(synth_root / "labels" / "train.json", labels)
    assert len(labels) == 174 and entries
    seen = set()
    for entry in entries:
        video, track = _object_track(synth_root, entry.id)
        assert video.height == synthetic.HEIGHT and video.fps == synthetic.FPS
        assert 24 <= len(video.jpegs) <= 40
        dx, dy, darea = track[-1] - track[0]
        expected = {
            "Pushing something from left to right": dx > 50,
            "Pushing something from right to left": dx < -50,
            "Moving something up": dy < -50,  # image rows grow downwards
            "Moving something down": dy > 50,
        }[entry.template]
        assert expected, (entry, dx, dy, darea)
        seen.add(entry.template)
    assert len(seen) == 4


def test_layout_and_splits_match_the_real_download(synth_root):
    test_items = read_annotations(synth_root, "test")
    assert test_items and all(set(item) == {"id"} for item in test_items)
    for split in ("train", "validation"):
        for item in read_annotations(synth_root, split):
            assert "[something]" in item["template"]
            assert (synth_root / "20bn-something-something-v2" / f"{item['id']}.webm").stat().st_size > 0
    ids = [i["id"] for s in ("train", "validation", "test") for i in read_annotations(synth_root, s)]
    assert len(ids) == len(set(ids)) == config.SyntheticConfig().num_videos


@pytest.mark.unit
def test_twins_have_the_same_frames_in_reverse_order():
    cfg = config.SyntheticConfig()
    video = synthetic.plan(cfg)[0]
    twin = synthetic.SyntheticVideo(video.id, "twin", video.split, video.seed, video.motion, not video.forward)
    a = synthetic.render(video, cfg.min_frames, cfg.max_frames)
    b = synthetic.render(twin, cfg.min_frames, cfg.max_frames)
    np.testing.assert_array_equal(a, b[::-1])
    assert not np.array_equal(a, b)


@pytest.mark.unit
def test_plan_is_deterministic_and_class_balanced():
    cfg = config.SyntheticConfig(num_videos=24, class_pairs=3)
    assert synthetic.plan(cfg) == synthetic.plan(cfg)
    counts = {}
    for v in synthetic.plan(cfg):
        counts[v.template] = counts.get(v.template, 0) + 1
    assert len(counts) == 6 and set(counts.values()) == {4}
    assert synthetic.plan(cfg) != synthetic.plan(config.SyntheticConfig(num_videos=24, class_pairs=3, seed=1))
