"""The proxy benchmark's data set, its teacher and a quick variant of one of its tables."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline import config
from pipeline.ssv2 import proxy, synthetic
from pipeline.ssv2.annotations import LABELS_FILE, load_labels
from tests.helpers import REPO, TINY_PROXY

TOY_PAIRS = [(a, b) for a, b, _ in synthetic.PAIRS]


@pytest.mark.unit
def test_classes_are_real_ssv2_templates_with_the_toys_pairs_and_event_classes():
    labels = load_labels(LABELS_FILE)
    assert len(proxy.TEMPLATES) >= 24 and len(set(proxy.TEMPLATES)) == len(proxy.TEMPLATES)
    assert all(t in labels for t in proxy.TEMPLATES)
    twins = {frozenset(p) for p in proxy.TWINS.items()}
    assert all(frozenset(p) in twins for p in TOY_PAIRS)
    for needed in ("Dropping", "Lifting something up completely, then", "Covering", "behind", "in front of", "upside down"):
        assert any(needed in t for t in proxy.TEMPLATES), needed
    assert any(t.startswith("Pretending") for t in proxy.TEMPLATES)
    assert any(t.startswith("Turning the camera left") for t in proxy.TEMPLATES)


@pytest.mark.unit
def test_a_twin_is_its_forward_class_played_backwards():
    for twin, forward in proxy.TWINS.items():
        backwards = proxy.render_scene(proxy.scene(twin, 5, 24, 40))
        played = proxy.render_scene(proxy.scene(forward, 5, 24, 40))[::-1]
        assert np.array_equal(backwards, played), twin


@pytest.mark.unit
def test_short_events_take_a_few_frames_and_the_scene_is_still_around_them():
    for template in ("Dropping something onto something", "Turning something upside down", "Squeezing something"):
        moving = []
        for seed in range(8):
            s = proxy.scene(template, seed, 24, 40)
            state = np.stack([s.main.cx, s.main.cy, s.main.sx, s.main.sy], 1)
            moving.append(np.any(np.abs(np.diff(state, axis=0)) > 1e-6, axis=1).mean())
        assert 0 < np.mean(moving) < 0.25, (template, moving)


@pytest.mark.unit
def test_captions_describe_a_frame_never_what_happens():
    rng = np.random.default_rng(0)
    verbs = ("push", "moving", "drop", "lift", "cover", "turning", "pretend", "squeez", "pulling", "falling", "closer", "towards")
    seen = set()
    for i, template in enumerate(proxy.TEMPLATES):
        s = proxy.scene(template, i, 24, 40)
        for k in (0, s.t // 2, s.t - 1):
            text = proxy.captions(s, k, rng)
            assert s.colour in text and not any(v in text for v in verbs), text
            seen.add(text)
    assert len(seen) > 40  # positions, relations and states vary


@pytest.mark.unit
def test_training_sets_are_nested_and_validation_does_not_change():
    small = synthetic.plan(config.SyntheticConfig(preset="proxy", train_per_class=10, validation_per_class=3, test_per_class=1))
    large = synthetic.plan(config.SyntheticConfig(preset="proxy", train_per_class=40, validation_per_class=3, test_per_class=1))
    by_split = lambda videos, split: {(v.id, v.seed, v.template) for v in videos if v.split == split}
    assert by_split(small, "train") < by_split(large, "train")
    assert by_split(small, "validation") == by_split(large, "validation")
    counts = {t: sum(v.template == t for v in large if v.split == "train") for t in proxy.TEMPLATES}
    assert set(counts.values()) == {40}


@pytest.mark.slow
def test_quick_heads_table_through_the_real_stages(tmp_path):
    """The heads table on a tiny proxy set: data (ffmpeg), pretrained teacher, cache, heads, four students."""
    settings = [*TINY_PROXY, "synthetic.train_per_class=3"]  # three per class: two folds of the heads have rows
    command = [sys.executable, "-m", "experiments.proxy_benchmark", "heads", "--work", str(tmp_path), "--seeds", "0"]
    command += ["--epochs", "1", *(f"--set={s}" for s in settings)]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env=os.environ)
    assert out.returncode == 0, out.stderr[-2000:]
    results = [json.loads(f.read_text()) for f in (tmp_path / "results").glob("*.json")]
    distilled = {f"distilled from {h}" for h in ("zero_shot", "linear", "temporal")}
    assert {r["name"] for r in results} == {"vanilla (CE only)", *distilled}
    assert all(len(r["curve"]) == 1 and r["provenance"]["commit"] for r in results)
    assert all(0 <= r["counts"]["8"] <= 1 for r in results)
    heads = {r["teacher_head"]["name"] for r in results if r["teacher_head"]}
    assert heads == {"zero_shot", "linear", "temporal"}
    assert "| vanilla (CE only) |" in out.stdout and "| temporal |" in out.stdout
    record = json.loads((tmp_path / "teacher_pretrain" / "proxy-clip.json").read_text())
    assert record["summary"]["pairs"] == 40 * 4 and record["summary"]["steps"] == 3
    import zarr

    cache = zarr.open_group(str(tmp_path / "base-l40-u0-s96-v1-pretrained" / "teacher_cache.zarr"), mode="r")
    assert cache.attrs["teacher"]["model"] == "proxy-clip" and cache.attrs["teacher"]["pretrained"].endswith("proxy-clip.pt")


@pytest.mark.unit
def test_report_sets_teacher_and_student_side_by_side_per_class():
    from pipeline.report.facts import per_class_with_teacher

    one_hot = lambda c: np.eye(4, dtype=np.float32)[c]
    pred = {"ids": ["a", "b", "c", "d"], "labels": np.array([0, 0, 1, 1]), "logits": np.stack([one_hot(c) for c in (0, 2, 3, 1)])}
    teacher = {10: one_hot(0), 11: one_hot(2), 12: one_hot(1), 13: one_hot(2)}
    rows = {"a": 10, "b": 11, "c": 12, "d": 13}
    out = per_class_with_teacher(pred, teacher, rows)
    assert out[0] == {"videos": 2, "teacher": 1, "student": 1, "copied": 1, "student_wrong": 1}
    assert out[1] == {"videos": 2, "teacher": 1, "student": 1, "copied": 0, "student_wrong": 1}


@pytest.mark.unit
def test_teacher_gate_replaces_a_wrong_targets_kl_by_the_labels_cross_entropy():
    import torch
    import torch.nn.functional as F

    from pipeline.config import LossConfig
    from pipeline.student.loss import distill_loss

    g = torch.Generator().manual_seed(0)
    logits, feature, teacher_feature = (
        torch.randn(4, 5, generator=g),
        torch.randn(4, 8, generator=g),
        torch.randn(4, 8, generator=g),
    )
    labels = torch.tensor([0, 1, 2, 3])
    teacher = torch.randn(4, 5, generator=g)
    teacher[torch.arange(4), labels] += 10  # right on every clip
    plain = distill_loss(LossConfig(), logits, feature, labels, teacher, teacher_feature)
    gated = distill_loss(LossConfig(teacher_gate="correct"), logits, feature, labels, teacher, teacher_feature)
    assert torch.allclose(plain.response, gated.response)
    teacher[1] = 0
    teacher[1, 4] = 10  # wrong on clip 1
    gated = distill_loss(LossConfig(teacher_gate="correct"), logits, feature, labels, teacher, teacher_feature)
    kl = F.kl_div(F.log_softmax(logits / 3, -1), F.log_softmax(teacher / 3, -1), reduction="none", log_target=True).sum(-1) * 9
    kl[1] = F.cross_entropy(logits[1:2], labels[1:2])
    assert torch.allclose(gated.response, kl.mean())


@pytest.mark.unit
def test_a_random_weight_base_keeps_random_weights_when_a_command_sets_the_pretrained_file(tmp_path):
    from experiments import proxy_world

    elsewhere = ("teacher.pretrained=/elsewhere/proxy-clip.pt",)
    base = {**proxy_world.BASE, "teacher": "random"}
    cfg = proxy_world.make_config(tmp_path, tmp_path / "run", base, elsewhere)
    assert cfg.teacher.pretrained == "random"
    pretrained = proxy_world.make_config(tmp_path, tmp_path / "run", proxy_world.BASE, elsewhere)
    assert pretrained.teacher.pretrained == "/elsewhere/proxy-clip.pt"
