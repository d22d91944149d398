"""`teacher.model=student:<checkpoint>`: a TSM student of this project fills the teacher cache with
its own logits and pooled feature, as its own forward gives them on the same clips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr

from pipeline.cache.store import CacheReader, open_checked
from pipeline.models import build_student, checkpoint
from pipeline.shards import build as shards
from pipeline.ssv2.frames import decode, normalize, resize_crop
from pipeline.ssv2.records import read_shard, select_frames
from pipeline.ssv2.sampling import segment_centres
from pipeline.student import train
from pipeline.student.data import teacher_source
from pipeline.student.import_weights import expected_classes, import_checkpoint
from pipeline.teacher import head_run
from pipeline.teacher import run as teacher_run
from pipeline.teacher.clip import load_teacher
from pipeline.teacher.video_student import StudentTeacherError
from tests import published_tsm
from tests.fixtures.make_mmaction2_fixture import seeded_state
from tests.helpers import make_config

FRAMES = 4


def _student_checkpoint(cfg, tmp_path):
    """A TSM student checkpoint with every tensor drawn (an import of a mit-han-lab layout file)."""
    reference = published_tsm.mit_han_lab_tsm(expected_classes(cfg), frames=FRAMES)
    shapes = {k: list(v.shape) for k, v in reference.state_dict().items()}
    src = tmp_path / "TSM_synthetic_RGB_tiny_shift8_blockres_avg_segment4_e1.pth"
    state = {k: v.float() if v.is_floating_point() else v for k, v in seeded_state(shapes, seed=4).items()}
    torch.save({"state_dict": state}, src)
    return import_checkpoint(cfg, src, "mit-han-lab", tmp_path / "teacher.pt")


def test_a_student_checkpoint_fills_the_cache_with_its_own_outputs(synth_root, tmp_path):
    base = ("student.num_frames=4", "student.image_size=48", "teacher.num_workers=0", "teacher.batch_videos=3")
    student_cfg = make_config(synth_root, tmp_path / "student-run", *base)
    path = _student_checkpoint(student_cfg, tmp_path)
    cfg = make_config(synth_root, tmp_path / "run", *base, f"teacher.model=student:{path}", f"teacher.num_frames={FRAMES}")
    shards.run(cfg)
    teacher_run.run(cfg)
    saved = checkpoint.load(path)
    student = build_student(student_cfg.student, expected_classes(cfg), [FRAMES])
    student.load_state_dict(saved["model"])
    student.eval()
    reader = CacheReader(open_checked(cfg), "validation")
    checked = 0
    for tar in sorted(cfg.paths.shards_dir.glob("validation-*.tar")):
        for record, blob in read_shard(str(tar)):
            jpegs = select_frames(record, blob, segment_centres(record["num_frames"], FRAMES))
            clip = normalize(resize_crop(torch.stack(decode(jpegs)), 48), student.input_mean, student.input_std)
            with torch.no_grad():
                logits = student(clip[None]).logits[0]
                pooled = student.backbone(clip).mean(0)
            cached_feature, cached_logits = reader.get(record["row"], record["id"])
            np.testing.assert_allclose(cached_logits, logits.numpy(), rtol=1e-3, atol=1e-3)
            np.testing.assert_allclose(cached_feature, pooled.numpy(), rtol=1e-3, atol=1e-3)
            checked += 1
    assert checked > 0 and logits.std() > 0.01
    # ... and serves as a teacher end to end: heads fitted on its cache, a student distilled from one.
    head_run.run(cfg)
    width = open_checked(cfg)["train/features"].shape[-1]
    more = (f"teacher.model=student:{path}", f"teacher.num_frames={FRAMES}", f"student.feature_dim={width}")
    distil = make_config(synth_root, tmp_path / "run", *base, *more, "loss.teacher_head=temporal", "train.epochs=1")
    summary = train.run(distil)
    assert summary.progress.step > 0 and summary.val is not None
    assert json.loads((distil.paths.student_dir / "teacher_head.json").read_text())["name"] == "temporal"


@pytest.mark.unit
def test_a_student_that_does_not_average_its_frames_is_refused(tmp_path):
    path = tmp_path / "mobilevit.pt"
    cfg = make_config(tmp_path, tmp_path / "run", "student.arch=mobilevit_xxs", f"teacher.model=student:{path}")
    checkpoint.save(path, {"model": {"fc.weight": torch.zeros(3, 4)}, "config": {"student": {"arch": "mobilevit_xxs"}}})
    with pytest.raises(StudentTeacherError, match="pools its frames by attention"):
        load_teacher(cfg.teacher, ["a", "b", "c"], torch.device("cpu"))


@pytest.mark.unit
def test_a_cache_of_another_feature_width_is_refused_with_the_setting_to_change(tmp_path):
    cfg = make_config(tmp_path, tmp_path / "run", "student.feature_dim=512")
    zarr.open_group(cfg.paths.teacher_cache, mode="w").create_group("train").create_array(
        "features", shape=(4, 1, 2048), dtype="f4"
    )
    with pytest.raises(ValueError, match="holds 2048-d features.*set student.feature_dim=2048"):
        teacher_source(cfg, "train", None)
    assert teacher_source(make_config(tmp_path, tmp_path / "run", "student.feature_dim=2048"), "train", None) is not None
