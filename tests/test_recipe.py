"""The training recipe: parameter groups, the lr and its schedule, the loss's feature term, the head,
pretrained weights from a cache file or a clear error offline, and the recipe files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline import config
from pipeline.config import LossConfig, StudentConfig, TrainConfig
from pipeline.models import build_student
from pipeline.models.base import WeightsError
from pipeline.ssv2.frames import IMAGENET_MEAN
from pipeline.student.loss import distill_loss
from pipeline.student.optim import effective_lr, lr_factor, make_optimizer

REPO = Path(__file__).resolve().parents[1]


def _groups_by_name(model: torch.nn.Module, train: TrainConfig) -> dict[str, tuple[float, float]]:
    """parameter name -> (lr multiplier, weight decay) in the optimiser the trainer builds."""
    optimizer = make_optimizer(train, model, world_size=1)
    where = {
        id(p): (g["lr"] / effective_lr(train, world_size=1), g["weight_decay"])
        for g in optimizer.param_groups
        for p in g["params"]
    }
    return {name: where[id(p)] for name, p in model.named_parameters()}


@pytest.mark.unit
def test_norms_and_biases_get_no_weight_decay_and_tsm_multipliers_follow_the_reference():
    model = build_student(StudentConfig(arch="tsm_tiny"), 174)
    plain = _groups_by_name(model, TrainConfig(weight_decay=5e-4))
    assert plain["backbone.conv1.weight"] == (1.0, 5e-4)
    assert plain["backbone.bn1.weight"] == (1.0, 0.0)
    assert plain["backbone.bn1.bias"] == (1.0, 0.0)
    assert plain["fc.bias"] == (1.0, 0.0)
    assert plain["fc.weight"] == (1.0, 5e-4)
    tsm = _groups_by_name(model, TrainConfig(weight_decay=5e-4, lr_multipliers=True))
    assert tsm["backbone.conv1.weight"] == (1.0, 5e-4)
    assert tsm["backbone.layer1.0.bn1.weight"] == (1.0, 0.0)  # norms stay at 1x
    assert tsm["fc.weight"] == (5.0, 5e-4) and tsm["fc.bias"] == (10.0, 0.0)
    assert tsm["proj.weight"] == (5.0, 5e-4) and tsm["proj.bias"] == (10.0, 0.0)
    everything = _groups_by_name(model, TrainConfig(weight_decay=5e-4, decay_norms_and_biases=True))
    assert set(everything.values()) == {(1.0, 5e-4)}


@pytest.mark.unit
def test_mobilevit_biases_get_twice_the_lr_with_multipliers():
    model = build_student(StudentConfig(arch="mobilevit_xxs", image_size=64), 174)
    groups = _groups_by_name(model, TrainConfig(lr_multipliers=True))
    assert groups["head.score.bias"] == (2.0, 0.0)  # a bias outside the new layers and the norms
    assert groups["head.fc.weight"] == (5.0, TrainConfig().weight_decay)
    norm = next(n for n in groups if ".bn." in n and n.endswith(".weight"))
    assert groups[norm] == (1.0, 0.0)


@pytest.mark.unit
@pytest.mark.parametrize(("world", "batch", "lr_batch", "expected"), [(8, 8, 64, 0.01), (1, 4, 64, 0.01 / 16), (2, 16, 0, 0.01)])
def test_lr_is_per_lr_batch_clips_scaled_by_the_global_batch(world, batch, lr_batch, expected):
    train = TrainConfig(lr=0.01, batch_size=batch, lr_batch=lr_batch)
    assert effective_lr(train, world_size=world) == pytest.approx(expected)


@pytest.mark.unit
def test_warmup_then_steps_or_cosine():
    step = lr_factor(TrainConfig(warmup_epochs=2, schedule="step", lr_milestones=[3, 5]), steps_per_epoch=10, total_steps=80)
    assert step(0) == pytest.approx(1 / 20) and step(19) == pytest.approx(1.0)
    assert step(29) == 1.0 and step(30) == pytest.approx(0.1) and step(50) == pytest.approx(0.01)
    cosine = lr_factor(TrainConfig(warmup_epochs=1), steps_per_epoch=10, total_steps=110)
    assert cosine(9) == pytest.approx(1.0) and cosine(60) == pytest.approx(0.5) and cosine(110) == pytest.approx(0.0)
    assert math.isclose(lr_factor(TrainConfig(warmup_epochs=0), steps_per_epoch=10, total_steps=100)(0), 1.0)


@pytest.mark.unit
def test_feature_term_sum_is_the_mean_times_the_dimensions():
    torch.manual_seed(0)
    feature, teacher = torch.randn(4, 512), torch.randn(4, 512)
    logits, labels = torch.randn(4, 10), torch.randint(0, 10, (4,))
    mean = distill_loss(LossConfig(), logits, feature, labels, torch.randn(4, 10), teacher).feature
    total = distill_loss(LossConfig(feature_reduction="sum"), logits, feature, labels, torch.randn(4, 10), teacher).feature
    assert total.item() == pytest.approx(mean.item() * 512, rel=1e-5)


def _fc_input(model: torch.nn.Module, fc: torch.nn.Module, clips: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = fc.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    with torch.no_grad():
        model(clips)
    handle.remove()
    return seen[0]


@pytest.mark.unit
@pytest.mark.parametrize("arch", ["tsm_tiny", "mobilevit_xxs"])
def test_dropout_per_frame_drops_each_frame_on_its_own(arch):
    torch.manual_seed(0)
    clips = torch.randn(2, 1, 3, 64, 64).expand(2, 8, 3, 64, 64).contiguous()  # eight identical images
    kept = {}
    for at in ("clip", "frame"):
        model = build_student(StudentConfig(arch=arch, image_size=64, dropout=0.5, dropout_at=at), 10).eval()
        fc = model.fc if arch == "tsm_tiny" else model.head.fc
        clean = _fc_input(model, fc, clips)
        for m in model.modules():  # norms keep their eval statistics; only dropout is on
            if isinstance(m, torch.nn.Dropout):
                m.train()
        dropped = _fc_input(model, fc, clips)
        nonzero = clean.abs() > 1e-4
        kept[at] = (dropped[nonzero] / clean[nonzero] / 2).flatten()  # the share of frames that kept a unit
    # clip: a unit is kept whole or dropped; frame: in between for some units (k of 8 frames kept it)
    clip = kept["clip"]
    assert torch.all((clip.abs() < 1e-3) | ((clip - 1).abs() < 1e-3))
    frame = kept["frame"]
    assert ((frame > 0.05) & (frame < 0.95)).float().mean() > 0.5


@pytest.mark.unit
def test_classifier_init_std():
    model = build_student(StudentConfig(arch="tsm_tiny", fc_init_std=0.001), 174)
    assert model.fc.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert torch.count_nonzero(model.fc.bias) == 0
    default = build_student(StudentConfig(arch="tsm_tiny"), 174)
    assert default.fc.weight.std().item() > 0.005  # PyTorch's uniform(+-1/sqrt(512))


@pytest.mark.unit
def test_input_normalisation_follows_the_pretrained_config():
    assert build_student(StudentConfig(arch="tsm_tiny"), 10).input_mean == IMAGENET_MEAN
    mobile = build_student(StudentConfig(arch="mobilevit_xxs", image_size=64), 10)
    assert mobile.input_mean == (0.0, 0.0, 0.0) and mobile.input_std == (1.0, 1.0, 1.0)


@pytest.mark.unit
def test_imagenet_weights_come_from_the_torch_cache_file_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = StudentConfig(arch="tsm_r50", pretrained="imagenet")
    with pytest.raises(WeightsError) as missing:
        build_student(cfg, 10)
    message = str(missing.value)
    assert "resnet50-0676ba61.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "\n" not in message
    fake = {"conv1.weight": torch.full((64, 3, 7, 7), 0.25), "layer4.2.conv3.weight": torch.full((2048, 512, 1, 1), -0.5)}
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(fake, tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth")
    model = build_student(cfg, 10)
    assert torch.equal(model.backbone.conv1.weight, fake["conv1.weight"])
    assert torch.equal(model.backbone.layer4[2].conv3.weight, fake["layer4.2.conv3.weight"])


@pytest.mark.unit
def test_mobilevit_weights_come_from_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = StudentConfig(arch="mobilevit_xxs", image_size=64, pretrained="imagenet")
    with pytest.raises(WeightsError) as missing:
        build_student(cfg, 10)
    assert "model.safetensors" in str(missing.value) and "timm/mobilevit_xxs.cvnets_in1k" in str(missing.value)
    # the hub's cache layout: refs/main names the snapshot that holds the file
    repo = tmp_path / "models--timm--mobilevit_xxs.cvnets_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    stem = {"stem.conv.weight": torch.full((16, 3, 3, 3), 0.125)}
    save_file(stem, repo / "snapshots" / "0123abcd" / "model.safetensors")
    model = build_student(cfg, 10)
    assert torch.equal(model.encoder.stem.conv.weight, stem["stem.conv.weight"])


@pytest.mark.unit
def test_a_local_state_dict_file_is_loaded_through_the_same_path(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"conv1.weight": torch.full((64, 3, 7, 7), 0.5)}}, path)
    model = build_student(StudentConfig(arch="tsm_r50", pretrained=str(path)), 10)
    assert torch.equal(model.backbone.conv1.weight, torch.full((64, 3, 7, 7), 0.5))


@pytest.mark.unit
@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_recipes_load_over_pipeline_yaml_and_say_where_each_value_comes_from(recipe):
    cfg = config.load([REPO / "pipeline.yaml", recipe])
    if recipe.name == "seeds_walkthrough.yaml":  # the walkthrough as written, whatever pipeline.yaml's defaults
        loss = cfg.loss
        assert (loss.alpha, loss.beta, loss.gamma, loss.temperature, loss.feature_reduction) == (0.5, 1.0, 0.1, 3.0, "mean")
        assert (loss.teacher_gate, loss.frame_alpha, loss.teacher_head, cfg.train.grad_clip) == ("all", 0.0, "linear", 1.0)
        assert (loss.fade, loss.unlabelled_weight, loss.gamma_with_unlabelled) == ("none", "uniform", 0.1)
        assert (cfg.student.arch, cfg.student.temporal, cfg.student.num_frames) == ("mobilevit_xxs", "attention", 8)
    else:  # the TSM recipe and the recipes built on it
        assert cfg.train.grad_clip == 20.0 and cfg.train.lr_multipliers and not cfg.train.decay_norms_and_biases
        assert cfg.student.pretrained == "imagenet" and cfg.student.fc_init_std == 0.001
    for line in recipe.read_text().splitlines():
        if line.startswith("  ") and ":" in line and not line.rstrip().endswith(":"):
            assert "#" in line, f"{recipe.name}: no source for {line.strip()!r}"
