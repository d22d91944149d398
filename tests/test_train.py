import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.accel import shift_kernel
from pipeline.cache.store import CacheMismatchError
from pipeline.config import LossConfig
from pipeline.models import checkpoint
from pipeline.models.tsm import pointwise_shift, temporal_shift
from pipeline.shards import build as shards
from pipeline.ssv2.annotations import LABELS_FILE, class_names, flip_pairs, load_labels
from pipeline.ssv2.records import read_shard
from pipeline.student import train
from pipeline.student.data import check_shards_feed
from pipeline.student.loss import distill_loss
from pipeline.teacher import run as teacher_run
from tests.helpers import REPO, TINY_TRAINING, make_config

SMALL = (*TINY_TRAINING, "train.checkpoint_every_steps=1000")


@pytest.fixture(scope="module")
def prepared(synth_root, tmp_path_factory):
    """Shards and a teacher cache of the synthetic set, shared by the training tests."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = make_config(synth_root, run_dir, *SMALL)
    shards.run(cfg)
    teacher_run.run(cfg)
    return run_dir


def _cfg(synth_root, prepared, tmp_path, *extra):
    """A run folder of its own that links to the prepared shards and cache."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)
    for name in ("shards", "teacher_cache.zarr"):
        (run_dir / name).symlink_to(prepared / name)
    return make_config(synth_root, run_dir, *SMALL, *extra)


@pytest.mark.unit
def test_temporal_shift_matches_a_plain_loop():
    n, t, c = 2, 5, 16
    x = torch.randn(n * t, c, 3, 3)
    out = temporal_shift(x, t).view(n, t, c, 3, 3)
    frames = x.view(n, t, c, 3, 3)
    fold = c // 8
    for b in range(n):
        for i in range(t):
            for ch in range(c):
                if ch < fold:
                    expected = frames[b, i + 1, ch] if i + 1 < t else torch.zeros(3, 3)
                elif ch < 2 * fold:
                    expected = frames[b, i - 1, ch] if i > 0 else torch.zeros(3, 3)
                else:
                    expected = frames[b, i, ch]
                assert torch.equal(out[b, i, ch], expected), (b, i, ch)
    assert x.data_ptr() != temporal_shift(x, t).data_ptr()


def _sliced_shift(x: torch.Tensor, t: int) -> torch.Tensor:
    """The reference's shift (mit-han-lab TSM, not in place), differentiated by autograd."""
    nt, c, h, w = x.shape
    v, fold = x.view(nt // t, t, c, h, w), c // 8
    out = torch.zeros_like(v)
    out[:, :-1, :fold] = v[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = v[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = v[:, :, 2 * fold :]
    return out.view(nt, c, h, w)


@pytest.mark.unit
@pytest.mark.parametrize("channels_last", [False, True])
def test_temporal_shift_forward_and_gradient_equal_the_reference(channels_last):
    torch.manual_seed(0)
    n, t, c = 3, 4, 24
    x = torch.randn(n * t, c, 5, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(n * t, c, 5, 6)  # a loss that weighs every output differently
    grads = []
    for shift in (temporal_shift, pointwise_shift, _sliced_shift):
        leaf = x.clone().requires_grad_(True)
        out = shift(leaf, t)
        (out * weight).sum().backward()
        grads.append((out.detach(), leaf.grad))
    for out, grad in grads[:2]:  # the eager shift and the one compiled graphs use
        assert torch.equal(out, grads[2][0])
        assert torch.equal(grad, grads[2][1])
    assert grads[0][0].is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.unit
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton shift runs on CUDA only")
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_triton_shift_equals_the_reference_on_cuda(channels_last, dtype):
    torch.manual_seed(0)
    x = torch.randn(5 * 8, 64, 7, 9, device="cuda", dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert shift_kernel.usable(x)
    weight = torch.randn_like(x)
    pairs = []
    for shift in (temporal_shift, _sliced_shift):
        leaf = x.clone().requires_grad_(True)
        out = shift(leaf, 8)
        (out * weight).sum().backward()
        pairs.append((out.detach(), leaf.grad))
    assert torch.equal(pairs[0][0], pairs[1][0])
    assert torch.equal(pairs[0][1], pairs[1][1])
    assert pairs[0][0].is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.unit
def test_loss_equals_the_formula_and_feature_term_vanishes_for_equal_features():
    torch.manual_seed(0)
    cfg = LossConfig(gamma=0.1)  # the seeds' weights
    logits, t_logits = torch.randn(6, 10), torch.randn(6, 10)
    feat, t_feat = torch.randn(6, 512), torch.randn(6, 512)
    labels = torch.randint(0, 10, (6,))
    parts = distill_loss(cfg, logits, feat, labels, t_logits, t_feat)
    s, t = feat / feat.norm(dim=1, keepdim=True), t_feat / t_feat.norm(dim=1, keepdim=True)
    mse = ((s - t) ** 2).mean()
    p_t = torch.softmax(t_logits / 3, dim=1)
    p_s = torch.softmax(logits / 3, dim=1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * 9
    ce = -torch.log_softmax(logits, 1)[torch.arange(6), labels].mean()
    expected = 0.5 * mse + 1.0 * kl + 0.1 * ce
    torch.testing.assert_close(parts.total, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts.feature, 0.5 * mse)
    torch.testing.assert_close(parts.response, kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts.task, 0.1 * ce)
    same = distill_loss(cfg, logits, 3.0 * t_feat, labels, t_logits, t_feat)  # same direction
    assert float(same.feature) < 1e-12
    vanilla = distill_loss(LossConfig(mode="vanilla"), logits, feat, labels)
    torch.testing.assert_close(vanilla.total, F.cross_entropy(logits, labels))


@pytest.mark.unit
def test_checkpoint_round_trip_restores_every_piece(tmp_path):
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched.step()
    rng = checkpoint.rng_state()
    checkpoint.save(
        tmp_path / "latest.pt",
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng},
    )
    expected_draw = torch.rand(3)
    loaded = checkpoint.load(tmp_path / "latest.pt")
    model2 = torch.nn.Linear(4, 3)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 0.5**s)
    model2.load_state_dict(loaded["model"])
    opt2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(loaded["scheduler"])
    checkpoint.set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected_draw)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
        assert torch.equal(opt.state[a]["momentum_buffer"], opt2.state[b]["momentum_buffer"])
    assert sched2.last_epoch == 1 and opt2.param_groups[0]["lr"] == pytest.approx(0.05)
    assert not list(tmp_path.glob(".*tmp*"))


def test_stopped_and_resumed_run_ends_with_the_same_weights(synth_root, prepared, tmp_path):
    full = train.run(_cfg(synth_root, prepared, tmp_path / "full"))
    cfg = _cfg(synth_root, prepared, tmp_path / "split")
    first = train.run(cfg, stop_after_steps=5)  # 8 steps per epoch: stopped mid-epoch 0
    assert first.stopped_early and first.progress.step == 5
    saved = checkpoint.load(cfg.paths.student_dir / "latest.pt")
    assert saved["state"]["step"] == 5 and saved["state"]["step_in_epoch"] == 5
    assert set(saved) >= {"model", "optimizer", "scheduler", "scaler", "rng", "config", "state"}
    second = train.run(cfg)
    assert second.resumed_from_step == 5 and second.progress.step == full.progress.step == 16
    for (name, a), b in zip(full.model.state_dict().items(), second.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert second.progress.best_top1 == pytest.approx(full.progress.best_top1)
    table = (cfg.paths.student_dir / "eval_frames.md").read_text()
    assert "| 4 (trained) |" in table and "| 2 |" in table
    records = [json.loads(x) for x in (cfg.paths.student_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"train", "val"} <= {r["kind"] for r in records}
    train_record = next(r for r in records if r["kind"] == "train")
    assert {"loss_feature", "loss_response", "loss_task", "clips_per_s", "lr", "grad_norm"} <= set(train_record)
    assert (cfg.paths.student_dir / "best.pt").exists()
    # where each start's code and machine came from: one line per start
    starts = [json.loads(x) for x in (cfg.paths.student_dir / "provenance.jsonl").read_text().splitlines()]
    assert [s["resumed_from_step"] for s in starts] == [0, 5]
    assert all(len(s["commit"]) == 40 and s["versions"]["torch"] and s["device"].startswith("CPU") for s in starts)


@pytest.mark.parametrize("frame_counts", [[], [2, 4]], ids=["plain", "ffn"])
def test_two_process_gloo_ddp_with_unequal_shards_agrees_on_weights(synth_root, tmp_path, frame_counts):
    run_dir = tmp_path / "run"
    overrides = [
        f"paths.ssv2_root={synth_root}",
        f"paths.run_dir={run_dir}",
        "shards.videos_per_shard=5",
        "data.splits=[train, validation]",
        "loss.mode=vanilla",
        *SMALL,
        "train.epochs=1",
        "train.num_workers=1",
        f"train.frame_counts={frame_counts}",  # FFN: every count's norms and alterations stay in step too
    ]
    cfg = make_config(synth_root, run_dir, *overrides[2:])
    shards.run(cfg)
    sizes = [m["num_videos"] for m in json.loads((cfg.paths.shards_dir / "train.index.json").read_text())["shards"]]
    assert len(set(sizes)) > 1, sizes  # unequal shards: 5, 5, 5, 5, 5, 5, 2
    evaluate = not frame_counts  # the evaluate stage too, on the plain run: every video gathered once
    env = {**os.environ, "MASTER_PORT": "29533", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "EVALUATE": str(int(evaluate))}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        str(REPO / "tests" / "ddp_worker.py"),
        str(tmp_path),
        *overrides,
    ]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 32 // (2 * 4) and ranks[0]["epoch"] == 1
    if evaluate:
        index = json.loads((cfg.paths.shards_dir / "validation.index.json").read_text())
        per_rank = [sum(s["num_videos"] for s in index["shards"][r::2]) for r in (0, 1)]
        assert per_rank[0] != per_rank[1], per_rank  # the ranks evaluate different numbers of videos
        ids = sorted(r["id"] for t in sorted(cfg.paths.shards_dir.glob("validation-*.tar")) for r, _ in read_shard(str(t)))
        for scores in sorted((cfg.paths.student_dir / "test").glob("scores-*.npz")):
            with np.load(scores) as z:
                assert sorted(z["ids"].tolist()) == ids, scores.name  # every video exactly once
                assert np.allclose(z["scores"].astype(np.float32).sum(1), 1.0, atol=1e-2)
        facts = json.loads((cfg.paths.student_dir / "test" / "test.json").read_text())
        assert {r["videos"] for r in facts["rows"]} == {len(ids)}


def test_tsm_learns_the_temporal_classes_on_cpu(tmp_path):
    from pipeline import config
    from pipeline.ssv2 import synthetic

    root = tmp_path / "ssv2"
    synthetic.generate(root, config.SyntheticConfig(num_videos=160))
    cfg = make_config(
        root,
        tmp_path / "run",
        "shards.videos_per_shard=16",
        "loss.mode=vanilla",
        "student.arch=tsm_tiny",
        "student.image_size=64",
        "student.num_frames=8",
        "student.dropout=0",
        "train.epochs=10",
        "train.batch_size=8",
        "train.num_workers=2",
        "train.optimizer=adamw",
        "train.lr=0.001",
        "train.lr_batch=0",  # the lr is for this batch of 8, as given
        "train.weight_decay=0.0001",
        "train.eval_frame_counts=[8]",
    )
    shards.run(cfg)
    summary = train.run(cfg)
    # 4 classes in 2 time-reversed pairs: chance is 0.25 and a model blind to frame order gets at most 0.5.
    assert summary.progress.best_top1 >= 0.7, summary.progress.history


def test_a_cache_from_another_teacher_config_is_refused(synth_root, prepared, tmp_path):
    cfg = _cfg(synth_root, prepared, tmp_path, "teacher.num_frames=2")
    with pytest.raises(CacheMismatchError, match="teacher.num_frames"):
        train.run(cfg)


def test_vanilla_mode_needs_no_cache_and_mobilevit_trains(synth_root, tmp_path):
    cfg = make_config(
        synth_root, tmp_path, *SMALL, "loss.mode=vanilla", "student.arch=mobilevit_xxs", "train.epochs=1", "student.image_size=64"
    )
    shards.run(cfg)
    summary = train.run(cfg)
    assert not cfg.paths.teacher_cache.exists()
    assert summary.progress.epoch == 1 and set(summary.frame_counts) == {2, 4}


@pytest.mark.unit
def test_too_few_shards_for_ranks_and_workers_is_a_clear_error():
    with pytest.raises(ValueError, match="3 train shards cannot feed 2 ranks x 2 loader workers"):
        check_shards_feed(3, 2, 2, "train")
    check_shards_feed(4, 2, 2, "train")


@pytest.mark.unit
def test_flip_swaps_left_and_right_classes():
    names = class_names(load_labels(LABELS_FILE))
    pairs = flip_pairs(names)
    a = names.index("Pushing something from left to right")
    b = names.index("Pushing something from right to left")
    assert pairs[a] == b and pairs[b] == a
    assert names.index("Moving something up") not in pairs
    assert all(pairs[pairs[i]] == i for i in pairs)


@pytest.mark.unit
def test_clips_are_cropped_like_plain_tensors_and_batched_channels_last():
    # the loader stacks decoded frames as they lie in memory ([H, W, 3]); the pixels must be those
    # of the plain [T, 3, H, W] crop and resize, and the batch must reach the model channels last
    import numpy as np
    import torchvision.transforms.v2.functional as TF

    from pipeline.ssv2.views import crop_box
    from pipeline.student.data import collate, multiscale_crop

    gen = torch.Generator().manual_seed(0)
    hwc = [torch.randint(0, 256, (60, 100, 3), dtype=torch.uint8, generator=gen) for _ in range(4)]
    frames = [f.permute(2, 0, 1) for f in hwc]  # how decode_jpeg returns them
    clips = []
    for seed in range(3):
        top, left, ch, cw = crop_box(60, 100, np.random.default_rng(seed))
        plain = TF.resize(torch.stack(frames).contiguous()[..., top : top + ch, left : left + cw], [32, 32], antialias=True)
        ours = multiscale_crop(frames, 32, np.random.default_rng(seed))
        assert torch.equal(ours, plain)
        clips.append(ours)
    batch = collate([(c, i, None, None, str(i)) for i, c in enumerate(clips)])
    assert torch.equal(batch.clips, torch.stack(clips))
    assert batch.clips.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.unit
def test_training_on_shards_without_videos_is_a_clear_error_not_a_hang(tmp_path):
    # every video of a shard can be rejected as broken; cycling over nothing used to spin for ever
    import tarfile

    from pipeline.student.data import ClipSource, ClipSpec, ShardClips

    empty = tmp_path / "train-000000.tar"
    tarfile.open(empty, "w").close()
    clips = ShardClips(ClipSource([str(empty)], ClipSpec(4, 32, 2, train=True), 0, 1, 3, None, {}))
    with pytest.raises(ValueError, match="hold no videos: .*train-000000.tar"):
        next(iter(clips))


class _RunsCode:
    """A pickle that would create a file when unpickled: what a checkpoint from elsewhere can hide."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.unit
def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_does_not_run(tmp_path):
    target = tmp_path / "pwned"
    torch.save({"model": {}, "state": _RunsCode(str(target))}, tmp_path / "latest.pt")
    with pytest.raises(checkpoint.CheckpointError) as refused:
        checkpoint.load(tmp_path / "latest.pt")
    assert not target.exists()
    assert "latest.pt" in str(refused.value) and "\n" not in str(refused.value)
    # what the trainer saves loads (tensors, plain values, every generator's state)
    checkpoint.save(tmp_path / "ok.pt", {"model": {"w": torch.ones(2)}, "rng": [checkpoint.rng_state()], "state": {"epoch": 1}})
    saved = checkpoint.load(tmp_path / "ok.pt")
    checkpoint.set_rng_state(saved["rng"][0])
    assert saved["state"]["epoch"] == 1
