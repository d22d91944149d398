"""Teacher heads fitted on the cached features, on a synthetic set large enough to learn direction.

The cache is filled by the stand-in teacher (pipeline/teacher/stand_in.py): a random-weight CLIP's
features say almost nothing about where the synthetic object is, so they could not show a head
learning direction; the stand-in's do. The teacher stage runs it like CLIP, views included.
"""

import json

import numpy as np
import pytest
import torch
import zarr

from pipeline import config
from pipeline.cache.heads import choose_head
from pipeline.cache.store import CacheMismatchError, head_array, head_records
from pipeline.shards import build as shards
from pipeline.shards.plan import row_labels
from pipeline.ssv2 import synthetic
from pipeline.ssv2.annotations import class_names, flip_pairs, labels_path, load_labels
from pipeline.ssv2.frames import normalizer, resize
from pipeline.ssv2.records import read_shard
from pipeline.ssv2.sampling import segment_centres
from pipeline.student import train
from pipeline.student.data import CacheSource, ClipSource, ClipSpec, ShardClips
from pipeline.teacher import head_run
from pipeline.teacher import heads as H
from pipeline.teacher import run as teacher_run
from pipeline.teacher.stand_in import SIZE, SaturationTower
from tests.helpers import make_config

FAST = (
    "teacher.model=stand-in",
    "teacher.views=1",  # the centre view; `fitted_views` below stores two flipped-or-not training views per video
    "shards.videos_per_shard=16",
    "teacher_head.folds=3",
    "teacher_head.weight_decays=[0.0001, 0.01]",
    "teacher_head.min_steps=200",
    "teacher_head.temporal_width=64",
)


@pytest.fixture(scope="module")
def reversed_pairs(tmp_path_factory):
    """240 videos in two time-reversed pairs of classes, sharded once."""
    root = tmp_path_factory.mktemp("ssv2_240")
    synthetic.generate(root, config.SyntheticConfig(num_videos=240))
    run_dir = tmp_path_factory.mktemp("shards")
    shards.run(make_config(root, run_dir, *FAST))
    return root, run_dir


def _cfg(data, run_dir, *extra):
    root, shards_run = data
    cfg = make_config(root, run_dir, *FAST, *extra)
    if not cfg.paths.shards_dir.exists():
        cfg.paths.shards_dir.parent.mkdir(parents=True, exist_ok=True)
        cfg.paths.shards_dir.symlink_to(shards_run / "shards")
    if not cfg.paths.teacher_cache.exists():
        teacher_run.run(cfg)
    return cfg


@pytest.fixture(scope="module")
def fitted(reversed_pairs, tmp_path_factory):
    cfg = _cfg(reversed_pairs, tmp_path_factory.mktemp("run"))
    return cfg, head_run.run(cfg)


@pytest.fixture(scope="module")
def fitted_views(reversed_pairs, tmp_path_factory):
    cfg = _cfg(reversed_pairs, tmp_path_factory.mktemp("run_views"), "teacher.views=2", "train.flip=true")
    return cfg, head_run.run(cfg)


def test_the_temporal_head_learns_direction_where_the_linear_head_cannot(fitted):
    _, summary = fitted
    linear, temporal = summary.records["linear"], summary.records["temporal"]
    # two pairs of reversed classes: a function of the mean frame can at best tell the pair (50%)
    assert linear["val_top1"] <= 0.6, linear
    assert temporal["val_top1"] >= 0.75, temporal
    assert summary.fitted == ["linear", "temporal"]
    for name in ("zero_shot", "linear", "temporal"):
        assert {"fingerprint", "temperature", "fit_seconds", "val_top1", "val_top5"} <= set(summary.records[name])


def test_no_training_row_gets_logits_from_a_head_that_saw_it(fitted_views):
    # the recorded folds say which head predicted each row; refitting that head without the row's
    # fold must give the stored logits, so the stored ones cannot have seen the row
    cfg, summary = fitted_views
    root = zarr.open_group(cfg.paths.teacher_cache, mode="r")
    group = root["train"]
    valid, folds = group["valid"][:], group["fold"][:]
    assert (folds[valid] >= 0).all() and (folds[~valid] == -1).all()
    rows = np.flatnonzero(valid)
    frames = group["frame_features"][:][rows]  # [n, K views, F, D]
    views = frames.shape[1]
    assert views == cfg.teacher.views > 1
    features = torch.from_numpy(frames.reshape(-1, *frames.shape[2:]))
    labels = np.repeat(row_labels(cfg.paths.shards_dir, "train")[rows], views)
    pairs = flip_pairs(class_names(load_labels(labels_path(cfg))))
    flipped = group["view_flip"][:][rows].reshape(-1)
    assert flipped.any() and not flipped.all()
    labels[flipped] = [pairs.get(int(y), int(y)) for y in labels[flipped]]  # a flipped view shows the flipped class
    stored = group[head_array("linear")][:][rows].reshape(len(labels), -1)
    record = summary.records["linear"]
    for k in range(cfg.teacher_head.folds):
        mine = np.repeat(folds[rows], views) == k  # every view of a video in its video's fold
        head = H.fit(
            "linear",
            H.FitData(features[~mine], torch.from_numpy(labels[~mine])),
            num_classes=stored.shape[1],
            cfg=cfg.teacher_head,
            weight_decay=record["weight_decay"],
            seed=cfg.teacher_head.seed + 1 + k,
            device=torch.device("cpu"),
        )
        np.testing.assert_allclose(H.predict(head, features[mine], device=torch.device("cpu")), stored[mine], atol=1e-5)


def test_a_flipped_view_gets_the_flipped_class_from_the_teacher(fitted, fitted_views):
    # The teacher's outputs of a flipped view are computed on the flipped frames, so a head that
    # knows direction calls a flipped "left to right" video "right to left"; were they the
    # unflipped view's outputs, it would say "left to right". The head is the temporal head fitted
    # on centre views (`fitted`), which tells direction on validation; the views' own heads learn
    # direction poorly from 156 videos of random crops, many of which miss the object (docs/views.md).
    centre_cfg, _ = fitted
    cfg, _ = fitted_views
    group = zarr.open_group(cfg.paths.teacher_cache, mode="r")["train"]
    rows = np.flatnonzero(group["valid"][:])
    pairs = flip_pairs(class_names(load_labels(labels_path(cfg))))
    labels = row_labels(cfg.paths.shards_dir, "train")[rows]
    frames = torch.from_numpy(group["frame_features"][:][rows])  # [n, K, F, D]
    head = H.build_head("temporal", dim=frames.shape[-1], num_classes=174, frames=frames.shape[2], cfg=cfg.teacher_head)
    head.load_state_dict(torch.load(centre_cfg.paths.teacher_heads_dir / "temporal.pt", weights_only=True))
    guess = H.predict(head.eval(), frames.flatten(0, 1), device=torch.device("cpu")).argmax(-1).reshape(frames.shape[:2])
    flipped = group["view_flip"][:][rows]
    horizontal = np.isin(labels, list(pairs))[:, None]  # views of left/right videos
    original = np.repeat(labels[:, None], flipped.shape[1], 1)
    swapped = np.vectorize(lambda y: pairs.get(int(y), int(y)))(original)
    said = {}
    for flip in (False, True):
        views = horizontal & (flipped == flip)
        assert views.sum() >= 20
        said[flip] = ((guess == original)[views].mean(), (guess == swapped)[views].mean())
    # unflipped views: the head prefers the video's class; flipped views: the flipped class
    assert said[False][0] > said[False][1] and said[True][1] > said[True][0], said


def test_a_flipped_views_stored_features_are_the_teachers_on_its_flipped_crop(fitted_views):
    # recompute the stand-in on the student's own crop of each view (replayed_crop), resized as
    # the teacher resizes, flipped where the view is: the stored per-frame features must match
    cfg, _ = fitted_views
    root = zarr.open_group(cfg.paths.teacher_cache, mode="r")
    group = root["train"]
    tower, norm = SaturationTower(), normalizer((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    cache = CacheSource(cfg.paths.teacher_cache, "train")
    source = ClipSource([], ClipSpec(cfg.student.num_frames, 32, 1, train=True), 0, 1, None, cache, {})
    clips = ShardClips(source)
    checked = {True: 0.0, False: 0.0}  # per flip, the largest difference from the other orientation
    for record, blob in read_shard(str(cfg.paths.shards_dir / "train-000000.tar")):
        for k in range(cfg.teacher.views):
            crop, flip = clips.replayed_crop({"jpgs": blob}, record, k)
            crop = crop[list(segment_centres(len(crop), cfg.teacher.num_frames))]  # the teacher's even subset
            x = resize(crop, SIZE)
            mine = tower.encode_image(norm(x.flip(-1) if flip else x)).numpy()
            other = tower.encode_image(norm(x if flip else x.flip(-1))).numpy()
            stored = group["frame_features"][record["row"], k].astype(np.float32)
            np.testing.assert_allclose(stored, mine, atol=2e-3)
            checked[flip] = max(checked[flip], float(np.abs(stored - other).max()))
    # the flip is seen: the other orientation differs (in views that hold the object; some crops miss it)
    assert checked[True] > 0.05 and checked[False] > 0.05, checked


def test_a_rerun_with_the_same_settings_writes_identical_logits(fitted, reversed_pairs, tmp_path):
    cfg, _ = fitted
    again = _cfg(reversed_pairs, tmp_path)
    head_run.run(again)
    a = zarr.open_group(cfg.paths.teacher_cache, mode="r")
    b = zarr.open_group(again.paths.teacher_cache, mode="r")
    for split in ("train", "validation"):
        for name in ("linear", "temporal"):
            np.testing.assert_array_equal(a[split][head_array(name)][:], b[split][head_array(name)][:])
    assert head_run.run(again).skipped == ["linear", "temporal"]  # a third run has nothing to do


def test_a_killed_fit_leaves_a_usable_store_and_the_rerun_completes(fitted, reversed_pairs, tmp_path, monkeypatch):
    cfg, _ = fitted
    run_cfg = _cfg(reversed_pairs, tmp_path)
    real_fit = H.fit

    def dies_on_temporal(name, *args, **kwargs):
        if name == "temporal":
            raise KeyboardInterrupt("killed mid-fit")
        return real_fit(name, *args, **kwargs)

    monkeypatch.setattr(H, "fit", dies_on_temporal)
    with pytest.raises(KeyboardInterrupt):
        head_run.run(run_cfg)
    root = zarr.open_group(run_cfg.paths.teacher_cache, mode="r")
    assert set(head_records(root)) == {"zero_shot", "linear"}  # temporal never counted
    with pytest.raises(CacheMismatchError, match="make teacher-head"):
        choose_head("temporal", records=head_records(root), cache_fingerprint=root.attrs["fingerprint"], cfg=run_cfg.teacher_head)
    monkeypatch.setattr(H, "fit", real_fit)
    summary = head_run.run(run_cfg)
    assert summary.fitted == ["temporal"] and summary.skipped == ["linear"]
    full = zarr.open_group(cfg.paths.teacher_cache, mode="r")
    np.testing.assert_array_equal(root["validation"][head_array("temporal")][:], full["validation"][head_array("temporal")][:])


def test_training_takes_the_best_head_and_refuses_a_stale_one(fitted):
    cfg, _ = fitted
    small = (
        "student.image_size=32",
        "student.num_frames=4",
        "train.epochs=1",
        "train.max_steps=2",
        "train.eval_frame_counts=[4]",
    )
    ok = make_config(cfg.paths.ssv2_root, cfg.paths.run_dir, *FAST, *small)
    train.run(ok)
    chosen = json.loads((ok.paths.student_dir / "teacher_head.json").read_text())
    assert chosen["asked"] == "best" and chosen["name"] == "temporal"  # the highest validation top-1
    # other head settings than the fitted heads': the heads are stale for this config
    stale = make_config(cfg.paths.ssv2_root, cfg.paths.run_dir, *FAST, *small, "teacher_head.min_steps=300")
    with pytest.raises(CacheMismatchError, match="make teacher-head"):
        train.run(stale)


@pytest.mark.unit
def test_folds_are_seeded_balanced_and_cover_every_row():
    a, b = H.assign_folds(103, 5, seed=3), H.assign_folds(103, 5, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, H.assign_folds(103, 5, seed=4))
    counts = np.bincount(a, minlength=5)
    assert counts.sum() == 103 and counts.max() - counts.min() <= 1


@pytest.mark.unit
def test_the_temperature_fit_undoes_a_known_scaling():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (4000,), generator=gen)
    calibrated = torch.randn(4000, 10, generator=gen) + 3 * torch.nn.functional.one_hot(labels, 10)
    sampled = torch.distributions.Categorical(logits=calibrated).sample()  # labels drawn from the calibrated model
    t = H.fit_temperature((calibrated * 2.5).numpy(), sampled.numpy())
    assert t == pytest.approx(2.5, rel=0.1)


@pytest.mark.unit
def test_the_linear_head_is_blind_to_order_and_the_temporal_head_is_not():
    cfg = config.TeacherHeadConfig(temporal_width=32)
    x = torch.randn(3, 8, 16)
    for name, blind in (("linear", True), ("temporal", False)):
        head = H.build_head(name, dim=16, num_classes=5, frames=8, cfg=cfg).eval()
        same = torch.allclose(head(x), head(x.flip(1)), atol=1e-6)
        assert same == blind, name


@pytest.mark.parametrize("positions", [False, True])
def test_the_students_position_head_learns_direction_where_the_seeds_head_cannot(fitted, positions):
    # MobileViT-XXS's two heads (student.temporal attention / attention_pos) trained on the same
    # per-frame features of the synthetic set's time-reversed pairs: the stand-in teacher's (a
    # from-scratch MobileViT learns too slowly on a CPU for a test; docs/frame_flexible.md)
    from pipeline.config import StudentConfig
    from pipeline.models.mobilevit import TemporalAttentionHead

    cfg, _ = fitted
    group = zarr.open_group(cfg.paths.teacher_cache, mode="r")
    data = {}
    for split in ("train", "validation"):
        rows = np.flatnonzero(group[split]["valid"][:])
        x = torch.from_numpy(group[split]["frame_features"][:][rows, 0]).float()  # [n, F, D]: the centre view
        y = torch.from_numpy(row_labels(cfg.paths.shards_dir, split)[rows]).long()
        data[split] = (x, y)
    torch.manual_seed(0)
    student = StudentConfig(feature_dim=64, dropout=0.0, temporal="attention_pos" if positions else "attention")
    head = TemporalAttentionHead(x.shape[-1], student, 174)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    x, y = data["train"]
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head(x).logits, y).backward()
        optimizer.step()
    x, y = data["validation"]
    with torch.no_grad():
        top1 = (head(x).logits.argmax(1) == y).float().mean().item()
    # two pairs of reversed classes: a head blind to order is at best 0.5
    assert (top1 >= 0.75) if positions else (top1 <= 0.6), top1


@pytest.mark.unit
def test_the_head_stage_says_what_distilling_from_the_head_is_expected_to_do():
    from pipeline.cache.heads import expectation

    text = expectation("temporal", 0.505, num_classes=28)
    assert "validation top-1 0.505 (chance 0.036)" in text and "never fell below labels alone" in text and "VANILLA" in text
    light = expectation("temporal", 0.505, num_classes=28, task_weight=0.1)
    assert "a weak head still ahead" in light and "VANILLA" in light
    unlabelled = expectation("temporal", 0.329, num_classes=28, task_weight=0.1, unlabelled=True)
    assert "loss.gamma_with_unlabelled" in unlabelled and "never fell below" not in unlabelled
    assert "will cost accuracy" in expectation("linear", 0.05, num_classes=28, fade="none")
    assert "no validation top-1" in expectation("zero_shot", None, num_classes=28)
    # a head within noise of chance (1.3 standard errors over 420 videos) gets no weight: labels alone
    chance = expectation("linear", 0.048, num_classes=28, unlabelled=True, val_videos=420)
    assert "within the noise of 420 validation videos" in chance and "leaves the unlabelled clips out" in chance
    assert "within the noise" not in expectation("linear", 0.148, num_classes=28, unlabelled=True, val_videos=420)
