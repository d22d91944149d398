"""Frame-flexible students (FFN) and the order-aware MobileViT-XXS."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import StudentConfig
from pipeline.models import build_student, checkpoint
from pipeline.models.flexible import Alteration, Altered, CountSwitch, nearest_count
from pipeline.student import data as student_data
from pipeline.student import train
from pipeline.student.ffn import consistency_loss, trained_counts
from tests.helpers import make_config
from tests.test_train import SMALL, _cfg, prepared  # noqa: F401 (the shared shards and cache)

FFN = ("train.frame_counts=[2, 4]",)


@pytest.mark.unit
def test_an_untrained_count_uses_the_nearest_trained_one_ties_to_the_larger():
    counts = [4, 8, 16]
    assert [counts[nearest_count(counts, t)] for t in (1, 4, 5, 6, 7, 8, 12, 13, 16, 32)] == [4, 4, 4, 8, 8, 8, 16, 16, 16, 16]


@pytest.mark.unit
def test_each_count_normalises_with_its_own_batchnorm_and_alteration():
    torch.manual_seed(0)
    model = build_student(StudentConfig(arch="tsm_tiny", dropout=0.0), 5, [2, 4]).train()
    norms = [m for m in model.modules() if isinstance(m, CountSwitch)]
    alterations = [m for m in model.modules() if isinstance(m, Alteration)]
    assert norms and alterations and all(len(m.copies) == 2 for m in norms)
    before = [[c.running_mean.clone() for c in m.copies] for m in norms]
    model(torch.randn(2, 2, 3, 32, 32))  # a 2-frame clip: only the 2-frame norms learn its statistics
    for m, (two, four) in zip(norms, before):
        assert not torch.equal(m.copies[0].running_mean, two)
        assert torch.equal(m.copies[1].running_mean, four)
    model(torch.randn(2, 3, 3, 32, 32))  # 3 frames: tie between 2 and 4, the larger's norms
    assert all(m.active == 1 for m in norms + alterations)
    assert all(m.convs[0].weight.abs().max() < 0.01 for m in alterations)  # near zero at the start


@pytest.mark.unit
@pytest.mark.parametrize("stride", [1, 2])
def test_the_alteration_folded_into_the_conv_equals_it_applied_to_the_input(stride):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 8, 3, stride=stride, padding=1, bias=False).double()
    altered = Altered(Alteration(16, [4, 8]), conv).double()
    for m in altered[0].convs:
        torch.nn.init.normal_(m.weight, std=0.3)  # far from zero, so a missing scale would show
    altered[0].set_frames(4)
    reference = torch.nn.Sequential(altered[0], conv)  # the unfolded order: x + dwconv(x), then the conv
    x = torch.randn(3, 16, 9, 9, dtype=torch.float64)
    grads = []
    for model in (altered, reference):
        model.zero_grad()
        leaf = x.clone().requires_grad_(True)
        out = model(leaf)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        grads.append((out.detach(), leaf.grad, conv.weight.grad.clone(), altered[0].convs[0].weight.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert altered[0].convs[1].weight.grad is None  # the other count's alteration is not used


@pytest.mark.unit
def test_the_consistency_term_is_the_references_kl_from_the_highest_count():
    gen = torch.Generator().manual_seed(0)
    high = torch.randn(6, 10, generator=gen, requires_grad=True)
    lows = [torch.randn(6, 10, generator=gen, requires_grad=True) for _ in range(2)]
    got = consistency_loss(high, lows, 0.7)
    p = F.softmax(high.detach(), -1)
    want = 0.7 * sum((p * (p.log() - F.log_softmax(low, -1))).sum(-1).mean() for low in lows)
    torch.testing.assert_close(got, want)
    got.backward()
    assert high.grad is None  # the highest count is the target: no gradient through it
    assert consistency_loss(high, [high.detach().clone()], 1.0).abs() < 1e-6


@pytest.mark.unit
def test_frame_counts_must_end_at_the_students_count():
    cfg = make_config("data", "run", "student.num_frames=16", "train.frame_counts=[16, 4, 8]")
    assert trained_counts(cfg) == [4, 8, 16]
    assert trained_counts(make_config("data", "run", "student.num_frames=16")) == [16]
    with pytest.raises(ValueError, match="set student.num_frames=8"):
        trained_counts(make_config("data", "run", "student.num_frames=16", "train.frame_counts=[4, 8]"))


@pytest.mark.unit
@pytest.mark.parametrize("temporal, blind", [("attention", True), ("attention_pos", False), ("shift", False)])
def test_reversing_the_frames_changes_the_order_aware_mobilevits_logits(temporal, blind):
    torch.manual_seed(0)
    model = build_student(StudentConfig(arch="mobilevit_xxs", temporal=temporal, dropout=0.0), 6).eval()
    # timm starts each residual branch's last norm at zero, which hides the shifted branch until it
    # has trained; give every norm a non-zero scale, as training would
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    clips = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        a, b = model(clips).logits, model(clips.flip(1)).logits
    assert torch.allclose(a, b, atol=1e-5) == blind, (a - b).abs().max()


def test_ffn_batches_carry_every_count_of_the_same_crop_each_frame_decoded_once(synth_root, prepared, monkeypatch):  # noqa: F811
    import torchvision.transforms.v2.functional as TF
    import webdataset as wds

    cfg = make_config(synth_root, prepared, *SMALL)
    shard = student_data.split_shards(cfg, "train")[0][:1]
    spec = student_data.ClipSpec(4, 32, 3, train=True, lower_counts=(2,), seed=5, flip=True)
    clips = student_data.ShardClips(student_data.ClipSource(shard, spec, 0, 1, 1, None, {}))
    decoded = []
    real_decode = student_data.decode
    monkeypatch.setattr(student_data, "decode", lambda jpegs: decoded.append(len(jpegs)) or real_decode(jpegs))
    batch = next(iter(clips))
    assert batch.clips.shape == (3, 4, 3, 32, 32) and [t.shape for t in batch.lower] == [(3, 2, 3, 32, 32)]
    assert len(decoded) == 3  # one decode per video, whatever its counts
    # the batch's first clip (sample index 0) redone by hand: its draws, cut and resized
    samples = {json.loads(s["json"])["id"]: s for s in wds.DataPipeline(wds.SimpleShardList(shard), wds.tarfile_to_samples())}
    sample = samples[batch.ids[0]]
    record = json.loads(sample["json"])
    picks, box, flipped = clips._drawn(record, 0, 0)
    assert [len(p) for p in picks] == [4, 2]
    assert decoded[0] == len(set(picks[0]) | set(picks[1]))  # the union of both counts' frames, once
    for got, frames in zip((batch.clips[0], batch.lower[0][0]), picks):
        crop = student_data.cut_clips({"jpgs": sample["jpgs"]}, record, [frames], box)[0]
        want = TF.resize(crop, [32, 32], antialias=True)
        assert torch.equal(got, want.flip(-1) if flipped else want)  # one box and one flip for every count


def test_ffn_training_stops_and_resumes_to_the_same_weights(synth_root, prepared, tmp_path):  # noqa: F811
    # the cache has two views per video: FFN's lower count replays an even subset of each view's frames
    full = train.run(_cfg(synth_root, prepared, tmp_path / "full", *FFN))
    cfg = _cfg(synth_root, prepared, tmp_path / "split", *FFN)
    assert train.run(cfg, stop_after_steps=5).progress.step == 5
    second = train.run(cfg)
    assert second.resumed_from_step == 5 and second.progress.step == full.progress.step
    for (name, a), b in zip(full.model.state_dict().items(), second.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert any(".copies.1." in name for name in checkpoint.load(cfg.paths.student_dir / "latest.pt")["model"])
    counts = json.loads((cfg.paths.student_dir / "eval_frames.json").read_text())
    assert counts["trained_counts"] == [2, 4] and set(counts["results"]) == {"2", "4"}
    assert "| 2 (trained) |" in (cfg.paths.student_dir / "eval_frames.md").read_text()


def test_an_ffn_step_adds_the_consistency_term_to_the_distillation_loss(synth_root, prepared, tmp_path):  # noqa: F811
    cfg = _cfg(synth_root, prepared, tmp_path, *FFN, "student.dropout=0", "train.ffn_lambda=0.5")
    state = train.build_state(cfg, torch.device("cpu"), num_classes=174, total_steps=4)
    gen = torch.Generator().manual_seed(0)
    batch = student_data.ClipBatch(
        clips=torch.randint(0, 255, (2, 4, 3, 48, 48), dtype=torch.uint8, generator=gen),
        labels=torch.tensor([3, 7]),
        teacher_feature=torch.randn(2, 512, generator=gen),
        teacher_logits=torch.randn(2, 174, generator=gen),
        ids=["a", "b"],
        lower=(torch.randint(0, 255, (2, 2, 3, 48, 48), dtype=torch.uint8, generator=gen),),
    )
    norm = lambda c: c.float() / 255  # noqa: E731
    twin = copy.deepcopy(state.model)
    high, low = twin(norm(batch.clips), norm(batch.lower[0]))
    from pipeline.student.loss import distill_loss

    want = distill_loss(cfg.loss, high.logits, high.feature, batch.labels, batch.teacher_logits, batch.teacher_feature).total
    want = want + consistency_loss(high.logits, [low.logits], 0.5)
    parts, _ = train.train_step(state, batch, cfg=cfg, norm=norm, dtype=None)
    torch.testing.assert_close(parts[0], want.detach())


@pytest.mark.unit
@pytest.mark.parametrize("arch", ["tsm_tiny", "mobilevit_xxs"])
@pytest.mark.parametrize("counts", [None, [2, 4]], ids=["plain", "ffn"])
def test_a_compiled_student_compiles_once_plain_and_ffn(arch, counts):
    """Three training steps of the compiled student (the trainer's static shapes): one graph, no recompile."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_student(StudentConfig(arch=arch, image_size=32, num_frames=4), 10, counts)
    compiles = CompileCounter()
    compiled = torch.compile(model, backend=compiles, dynamic=False)
    for _ in range(3):
        clips = [torch.randn(2, t, 3, 32, 32) for t in (counts or [4])[::-1]]  # the highest count first
        outs = compiled(*clips)
        (outs[0] if counts else outs).logits.sum().backward()
    assert compiles.frame_count == 1
