"""Unlabelled videos and per-frame teacher targets in training (issue 35): the loss, the loader's
batches, exact resume and DDP with them, on the synthetic set's `test` split (ids, no labels)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr

from pipeline import config
from pipeline.cache.heads import beats_chance, choose_head
from pipeline.cache.store import head_records
from pipeline.config import LossConfig
from pipeline.shards import build as shards
from pipeline.shards.plan import row_labels
from pipeline.ssv2.sampling import segment_centres, segment_random
from pipeline.student import train
from pipeline.student.data import (
    ClipSource,
    ClipSpec,
    ShardClips,
    split_shards,
    teacher_frame_index,
    teacher_source,
    unlabelled_per_batch,
    unlabelled_ratio,
    unlabelled_source,
)
from pipeline.student.loss import distill_loss, fade_weight, run_loss, student_level
from pipeline.teacher import head_run
from pipeline.teacher import run as teacher_run
from tests.helpers import REPO, TINY_TRAINING, make_config

UNLABELLED = (
    *TINY_TRAINING,
    "teacher.model=clip-tiny",
    "teacher.pretrained=random",
    "teacher.batch_videos=2",
    "teacher_head.heads=[linear]",
    "data.splits=[train, validation, test]",
    "train.unlabelled_splits=[test]",
    "train.unlabelled_ratio=1",  # as many unlabelled clips as labelled ones in a batch: the mechanics at full size
    "loss.frame_alpha=1.0",
    "loss.teacher_gate=correct",
    "loss.fade=none",  # the random tiny teacher is at chance: the fade would leave the unlabelled clips out (tested below)
    "train.num_workers=1",
    "shards.videos_per_shard=2",  # two test shards: one per rank in the DDP test
)


@pytest.mark.unit
def test_unlabelled_clips_get_the_teachers_terms_alone_weighted_by_its_confidence():
    g = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g) * 3
    feature, teacher_feature = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    frames, teacher_frames = torch.randn(6, 4, 8, generator=g), torch.randn(6, 4, 8, generator=g)
    labels = torch.tensor([0, 1, 2, 3, -1, -1])
    cfg = LossConfig(frame_alpha=0.5, gamma=1.0, unlabelled_weight="confidence")
    parts = distill_loss(cfg, logits, feature, labels, teacher, teacher_feature, frames=frames, teacher_frames=teacher_frames)
    weight = torch.ones(6)
    weight[4:] = teacher[4:].softmax(-1).amax(-1)
    kl = F.kl_div(F.log_softmax(logits / 3, -1), F.log_softmax(teacher / 3, -1), reduction="none", log_target=True).sum(-1) * 9
    cos = (1 - F.cosine_similarity(frames, teacher_frames, dim=-1)).mean(1)
    torch.testing.assert_close(parts.task, F.cross_entropy(logits[:4], labels[:4]))  # over the labelled clips only
    torch.testing.assert_close(parts.response, (kl * weight).mean())
    torch.testing.assert_close(parts.frame, 0.5 * (cos * weight).mean())
    mse = (F.normalize(feature, dim=-1) - F.normalize(teacher_feature, dim=-1)).pow(2).mean(-1)
    torch.testing.assert_close(parts.feature, 0.5 * (mse * weight).mean())
    uniform = distill_loss(LossConfig(unlabelled_weight="uniform"), logits, feature, labels, teacher, teacher_feature)
    torch.testing.assert_close(uniform.response, kl.mean())
    with pytest.raises(ValueError, match="frame_alpha"):
        distill_loss(cfg, logits, feature, labels, teacher, teacher_feature)


@pytest.mark.unit
def test_the_teacher_fades_out_as_the_student_catches_up_and_the_label_takes_its_place():
    cfg = LossConfig(fade="crossover", fade_margin=0.05)
    fade = lambda best: fade_weight(cfg, teacher_top1=0.5, student_level=best, chance=0.04)  # noqa: E731
    assert fade(None) == 1.0 and fade(0.3) == 1.0 and fade(0.44) == 1.0  # far behind (or not yet validated)
    assert fade(0.475) == pytest.approx(0.5) and fade(0.5) == 0.0 and fade(0.9) == 0.0  # catching up, level, past
    # a teacher no better than chance teaches nothing from the start; no fade, or no head accuracy: always on
    assert fade_weight(cfg, teacher_top1=0.033, student_level=None, chance=1 / 28) == 0.0
    assert fade_weight(LossConfig(fade="none"), teacher_top1=0.5, student_level=0.9, chance=0.04) == 1.0
    assert fade_weight(cfg, teacher_top1=None, student_level=0.9, chance=0.04) == 1.0
    # a head's lead over chance counts beyond its noise: 0.048 over 420 videos at chance 1/28 is 1.3
    # standard errors (no weight); 0.148 is 12 (full weight while the student is far behind)
    assert fade_weight(cfg, teacher_top1=0.048, student_level=None, chance=1 / 28, val_videos=420) == 0.0
    assert fade_weight(cfg, teacher_top1=0.048, student_level=None, chance=1 / 28) == pytest.approx((0.048 - 1 / 28) / 0.05)
    assert fade_weight(cfg, teacher_top1=0.148, student_level=None, chance=1 / 28, val_videos=420) == 1.0
    assert beats_chance(0.01, chance=1 / 174, videos=24777) and not beats_chance(0.01, chance=1 / 174, videos=300)
    g = torch.Generator().manual_seed(2)
    logits, teacher = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    feature, labels = torch.randn(4, 8, generator=g), torch.tensor([0, 1, 2, 3])
    off = distill_loss(LossConfig(), logits, feature, labels, teacher, feature.flip(0), teacher_weight=0.0)
    torch.testing.assert_close(off.total, F.cross_entropy(logits, labels))  # faded out: vanilla's loss
    seeds = LossConfig(gamma=0.1)
    half = distill_loss(seeds, logits, feature, labels, teacher, feature.flip(0), teacher_weight=0.5)
    full = distill_loss(seeds, logits, feature, labels, teacher, feature.flip(0))
    torch.testing.assert_close(half.response, 0.5 * full.response)
    torch.testing.assert_close(half.task, (0.5 * 0.1 + 0.5) * F.cross_entropy(logits, labels))


@pytest.mark.unit
def test_the_fade_reads_the_students_level_over_a_window_of_validations():
    """The best single validation of a noisy curve runs ahead of the student: with a window the fade reads
    the best mean of that many in a row, and the level never falls (a teacher faded out stays out)."""
    curve = [0.10, 0.20, 0.36, 0.30, 0.30, 0.31, 0.29]  # one lucky epoch at 0.36
    assert student_level([], window=5) is None
    assert student_level(curve, window=1) == 0.36
    assert student_level(curve[:2], window=5) == pytest.approx(0.15)  # fewer than the window at the start
    assert student_level(curve, window=5) == pytest.approx((0.36 + 0.30 + 0.30 + 0.31 + 0.29) / 5)
    levels = [student_level(curve[: i + 1], window=3) for i in range(len(curve))]
    assert levels == sorted(levels)
    cfg = LossConfig(fade="crossover", fade_margin=0.05)
    head = 0.369  # the proxy's temporal head at 10 labelled per class: the lucky epoch alone fades the teacher by 80%
    assert fade_weight(cfg, teacher_top1=head, student_level=student_level(curve, window=1), chance=0.04) == pytest.approx(0.18)
    assert fade_weight(cfg, teacher_top1=head, student_level=student_level(curve, window=5), chance=0.04) == 1.0
    with pytest.raises(ValueError, match="fade_window"):
        student_level(curve, window=0)
    with pytest.raises(config.ConfigError, match="loss.fade_window"):
        config.load(overrides=["loss.fade_window=0"])  # refused as the config loads, not epochs into a run


@pytest.mark.unit
def test_with_unlabelled_splits_the_label_takes_its_own_weight():
    """The label at full weight by default, the seeds' 0.1 when unlabelled clips train too (docs/training.md)."""
    labelled_only = config.load(overrides=["loss.gamma=1.0", "loss.gamma_with_unlabelled=0.1"])
    with_unlabelled = config.load(
        overrides=[
            "loss.gamma=1.0",
            "loss.gamma_with_unlabelled=0.1",
            "data.splits=[train, validation, test]",
            "train.unlabelled_splits=[test]",
        ]
    )
    assert labelled_only.task_weight == 1.0 and run_loss(labelled_only).gamma == 1.0
    assert with_unlabelled.task_weight == 0.1 and run_loss(with_unlabelled).gamma == 0.1
    assert run_loss(with_unlabelled).alpha == with_unlabelled.loss.alpha  # the rest as configured
    g = torch.Generator().manual_seed(3)
    logits, labels = torch.randn(4, 5, generator=g), torch.tensor([0, 1, -1, -1])
    parts = distill_loss(run_loss(with_unlabelled), logits, logits, labels, logits, logits)
    torch.testing.assert_close(parts.task, 0.1 * F.cross_entropy(logits[:2], labels[:2]))


@pytest.mark.unit
def test_label_prob_weights_a_labelled_clips_kl_by_the_teachers_belief_in_the_label():
    g = torch.Generator().manual_seed(1)
    logits, teacher = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    labels = torch.tensor([0, 1, 2, -1])
    parts = distill_loss(
        LossConfig(teacher_gate="label_prob", unlabelled_weight="uniform"), logits, logits[:, :3], labels, teacher, logits[:, :3]
    )
    kl = F.kl_div(F.log_softmax(logits / 3, -1), F.log_softmax(teacher / 3, -1), reduction="none", log_target=True).sum(-1) * 9
    belief = teacher.softmax(-1)[torch.arange(4), labels.clamp(min=0)]
    belief[3] = 1.0  # an unlabelled clip keeps its whole KL (weighted by confidence only)
    torch.testing.assert_close(parts.response, (kl * belief).mean())


@pytest.mark.unit
def test_auto_ratio_is_the_unlabelled_videos_per_labelled_one_up_to_three():
    assert unlabelled_ratio("auto", labelled=280, unlabelled=840) == 3.0  # the proxy's 10 + 30 per class
    assert unlabelled_ratio("auto", labelled=168_913, unlabelled=27_157) == pytest.approx(0.1608, abs=1e-4)  # SSv2
    assert unlabelled_ratio("auto", labelled=100, unlabelled=10_000) == 3.0  # a big unlabelled pool: capped
    assert unlabelled_ratio(1.5, labelled=100, unlabelled=10_000) == 1.5  # a number is taken as it is


@pytest.mark.unit
def test_each_student_frame_maps_to_the_teacher_frame_of_the_segment_it_was_drawn_in():
    assert teacher_frame_index(8, 8) == list(range(8))
    assert teacher_frame_index(16, 8) == [k // 2 for k in range(16)]
    assert teacher_frame_index(4, 8) == [0, 2, 4, 6]
    rng = np.random.default_rng(0)
    for total in (10, 24, 37, 40, 61):  # SSv2-like lengths; 10: the reviewer's example of crossed edges
        for count, teacher in ((4, 4), (8, 8), (16, 8), (8, 4)):
            centres = segment_centres(total, teacher)
            picks = segment_random(total, count, rng)
            # the teacher frame a student frame is set against lies within a teacher segment (and rounding) of it
            assert all(abs(centres[k] - p) <= total / teacher + 1 for k, p in zip(teacher_frame_index(count, teacher), picks))


@pytest.fixture(scope="module")
def cached(synth_root, tmp_path_factory):
    """Shards of all three splits, the teacher cache over them and a fitted linear head."""
    run_dir = tmp_path_factory.mktemp("unlabelled")
    cfg = make_config(synth_root, run_dir, *UNLABELLED)
    shards.run(cfg)
    teacher_run.run(cfg)
    head_run.run(cfg)
    return run_dir


def _cfg(synth_root, cached, tmp_path, *extra):
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)
    for name in ("shards", "teacher_cache.zarr", "teacher_heads"):
        (run_dir / name).symlink_to(cached / name)
    return make_config(synth_root, run_dir, *UNLABELLED, *extra)


def test_a_training_batch_holds_its_labelled_clips_then_unlabelled_ones_with_their_teacher_frames(synth_root, cached, tmp_path):
    cfg = _cfg(synth_root, cached, tmp_path)
    root = zarr.open_group(str(cfg.paths.teacher_cache), mode="r")
    head = choose_head("linear", records=head_records(root), cache_fingerprint=root.attrs["fingerprint"], cfg=cfg.teacher_head)
    extra = unlabelled_source(cfg, head)
    assert extra.per_batch == cfg.train.batch_size  # unlabelled_ratio 1
    spec = ClipSpec(cfg.student.num_frames, cfg.student.image_size, cfg.train.batch_size, train=True)
    shards_, _ = split_shards(cfg, "train")
    source = ClipSource(shards_, spec, 0, 1, 3, teacher_source(cfg, "train", head), {}, unlabelled=extra)
    test_ids = set(root["test/ids"][:][root["test/valid"][:]].tolist())
    batches = list(ShardClips(source))
    assert len(batches) == 3
    for batch in batches:
        b, u = cfg.train.batch_size, extra.per_batch
        assert batch.clips.shape[0] == b + u and batch.teacher_frames.shape == (b + u, cfg.student.num_frames, 512)
        assert (batch.labels[:b] >= 0).all() and (batch.labels[b:] == -1).all()
        assert set(batch.ids[b:]) <= test_ids and not set(batch.ids[:b]) & test_ids
        for i, vid in enumerate(batch.ids):  # each student frame's target: a cached frame of its own video's view
            split = "test" if i >= b else "train"
            row = root[f"{split}/ids"][:].tolist().index(vid)
            views = torch.from_numpy(root[f"{split}/frame_features"][row].astype(np.float32))  # [V, F, D]
            got = batch.teacher_frames[i].float()
            view = int(torch.argmin(torch.stack([(v[: len(got)] - got).abs().sum() for v in views])))
            match = [int(torch.argmin((views[view] - f).abs().sum(-1))) for f in got]
            torch.testing.assert_close(got, views[view][match])
            assert match == sorted(match)  # in temporal order


def test_auto_ratio_reads_the_splits_video_counts_from_the_shards(synth_root, cached, tmp_path):
    def per_batch(name: str, *extra: str) -> int:
        return unlabelled_per_batch(_cfg(synth_root, cached, tmp_path / name, *extra))

    # 32 labelled and 4 unlabelled videos: at 8 a batch, one unlabelled clip a step, 4 steps an epoch
    assert per_batch("a", "train.unlabelled_ratio=auto", "train.batch_size=8") == 1
    assert per_batch("b", "train.unlabelled_ratio=auto", "train.batch_size=32") == 4
    assert per_batch("c", "train.unlabelled_ratio=2", "train.batch_size=8") == 16
    assert per_batch("d", "train.unlabelled_splits=[]") == 0


def test_stopped_and_resumed_with_unlabelled_clips_ends_with_the_same_weights(synth_root, cached, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.student.train"):
        full = train.run(_cfg(synth_root, cached, tmp_path / "full"))
    assert "each epoch 32 labelled and up to 32 unlabelled clips (test; 64 in all over 2 epochs)" in caplog.text
    assert "the epoch trained 32 labelled and 32 unlabelled clips" in caplog.text
    cfg = _cfg(synth_root, cached, tmp_path / "split")
    first = train.run(cfg, stop_after_steps=5)  # mid-epoch: the unlabelled stream is cut there too
    assert first.stopped_early and first.progress.step == 5
    second = train.run(cfg)
    assert second.resumed_from_step == 5 and second.progress.step == full.progress.step
    for (name, a), b in zip(full.model.state_dict().items(), second.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    records = [json.loads(x) for x in (cfg.paths.student_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("loss_frame", 0) > 0 for r in records if r["kind"] == "train")


def test_separate_batch_statistics_change_what_a_step_learns(synth_root, cached, tmp_path):
    """The trainer applies `train.unlabelled_norm`: one step from the same start (a batch 4 labelled +
    2 unlabelled clips) lands its weights elsewhere."""
    models = [
        train.run(
            _cfg(
                synth_root,
                cached,
                tmp_path / norm,
                f"train.unlabelled_norm={norm}",
                "train.unlabelled_ratio=0.5",
                "train.max_steps=1",
            )
        ).model
        for norm in ("shared", "separate")
    ]
    pairs = zip(models[0].parameters(), models[1].parameters())
    assert any(not torch.equal(a, b) for a, b in pairs)


def test_two_process_gloo_ddp_with_unlabelled_clips_agrees_on_weights(synth_root, cached, tmp_path):
    """With the labelled clips' batch statistics apart (`train.unlabelled_norm: separate`) too."""
    extra = ["train.epochs=1", "train.unlabelled_norm=separate"]
    cfg = _cfg(synth_root, cached, tmp_path, *extra)
    overrides = [f"paths.ssv2_root={synth_root}", f"paths.run_dir={cfg.paths.run_dir}", *UNLABELLED, *extra]
    env = {**os.environ, "MASTER_PORT": "29541", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541"]
    cmd += [str(REPO / "tests" / "ddp_worker.py"), str(tmp_path), *overrides]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # 32 labelled videos, 2 ranks x 4 labelled (and 4 unlabelled) clips a step
    assert ranks[0]["digest"] == ranks[1]["digest"] and ranks[0]["steps"] == ranks[1]["steps"] == 4


def test_a_head_at_chance_gets_no_weight_and_its_unlabelled_clips_leave_the_batches(
    synth_root, cached, tmp_path, caplog, monkeypatch
):
    step, sizes = train.train_step, []

    def counting_step(state, batch, **kwargs):
        sizes.append(len(batch.labels))
        return step(state, batch, **kwargs)

    monkeypatch.setattr(train, "train_step", counting_step)
    cfg = _cfg(synth_root, cached, tmp_path / "with", "loss.fade=crossover")
    root = zarr.open_group(str(cfg.paths.teacher_cache), mode="r")
    head = choose_head("linear", records=head_records(root), cache_fingerprint=root.attrs["fingerprint"], cfg=cfg.teacher_head)
    train_labels = row_labels(cfg.paths.shards_dir, "train")
    classes, videos = (
        len(set(train_labels[train_labels >= 0].tolist())),
        int((row_labels(cfg.paths.shards_dir, "validation") >= 0).sum()),
    )
    assert not beats_chance(head.val_top1, chance=1 / classes, videos=videos)  # the random tiny teacher
    with caplog.at_level(logging.INFO, logger="pipeline.student.train"):
        summary = train.run(cfg)
    assert "within noise of chance" in caplog.text and "the unlabelled clips (test) leave the batches" in caplog.text
    assert "the epoch trained 32 labelled and 0 unlabelled clips" in caplog.text
    assert "up to 32 unlabelled clips (test; 0 in all over 2 epochs)" in caplog.text
    assert [h["unlabelled_clips"] for h in summary.progress.history] == [0, 0]
    records = [json.loads(x) for x in (cfg.paths.student_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["teacher_weight"] for r in records if r["kind"] == "train"} == {0.0}
    assert sizes and set(sizes) == {cfg.train.batch_size}  # no unlabelled clip reached a step


def test_unlabelled_splits_that_cannot_be_trained_on_are_refused(synth_root, cached, tmp_path):
    for bad, message in (
        (("train.unlabelled_splits=[validation]",), "labelled or evaluation split"),
        (("data.splits=[train, validation]",), "not in data.splits"),
        (("loss.mode=vanilla",), "needs loss.mode=distill"),
    ):
        cfg = _cfg(synth_root, cached, tmp_path / bad[0].split("=")[0].replace(".", "_"), *bad)
        with pytest.raises(ValueError, match=message):
            train.run(cfg)


@pytest.mark.slow
def test_the_make_targets_train_on_the_unlabelled_split_end_to_end(synth_root, tmp_path):
    """What a user types: the four stage targets with SSv2's unlabelled test split in data.splits and in training."""
    args = " ".join(
        [
            f"paths.ssv2_root={synth_root}",
            f"paths.run_dir={tmp_path}",
            "data.splits=[train,validation,test]",
            "train.unlabelled_splits=[test]",
            "loss.frame_alpha=1.0",
            "loss.fade=none",  # the random tiny teacher is at chance: the fade would leave the unlabelled clips out
            "shards.videos_per_shard=2",
            "train.num_workers=1",
            "train.epochs=1",
            "teacher.num_workers=1",
        ]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = ""
    for target in ("shards", "teacher-cache", "teacher-head", "train-student"):
        proc = subprocess.run(
            ["make", "-s", target, "RECIPE=configs/smoke.yaml", f"ARGS={args}"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, f"make {target}: {proc.stderr[-3000:]}"
        logs += proc.stderr
    root = zarr.open_group(str(tmp_path / "teacher_cache.zarr"), mode="r")
    assert root["test/done"][:].all() and root["test/heads/temporal/logits"].shape[0] == root["test/valid"].shape[0]
    task_log = "".join(p.read_text() for p in (tmp_path / "slurm" / "train_student").rglob("*_log.err"))
    # the default ratio (auto): 4 unlabelled videos per 32 labelled, at least one a step (8 steps of 4)
    assert "the epoch trained 32 labelled and 8 unlabelled clips" in task_log
    assert "each epoch 32 labelled and up to 8 unlabelled clips (test; 8 in all over 1 epochs)" in task_log
    assert (tmp_path / "student" / "best.pt").exists()
