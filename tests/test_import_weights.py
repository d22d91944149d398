"""`make import-weights`: published TSM checkpoints become this project's students with the same
logits, and every file that cannot is refused with one line that says why.

mmaction2: its own recognizer's weights (names, shapes and a seed) and logits, made by
tests/fixtures/make_mmaction2_fixture.py with mmaction2 1.2.0 (not needed here). mit-han-lab and
FFN: stand-ins built from their published model definitions (tests/published_tsm.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from pipeline.config import StudentConfig
from pipeline.models import build_student, checkpoint
from pipeline.runtime.errors import UserError, guarded
from pipeline.shards import build as shards
from pipeline.student import evaluate_run
from pipeline.student.ffn import trained_counts
from pipeline.student.import_weights import Source, check_settings, convert, expected_classes, import_checkpoint
from stages import import_weights as stage
from tests import published_tsm
from tests.fixtures.make_mmaction2_fixture import fixed_input, seeded_state, state_sha256
from tests.helpers import TINY_TRAINING, config_args, make_config

FIXTURE = Path(__file__).parent / "fixtures" / "mmaction2_tsm_r10.json"
CLASSES = 5
TOLERANCE = 1e-9  # float64 on both sides from the same float32-exact weights: only summation order differs


def _labels(root: Path, classes: int = CLASSES) -> Path:
    """A labels.json of `classes` classes: the class count an import is checked against."""
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "labels.json").write_text(json.dumps({f"class {i}": str(i) for i in range(classes)}))
    return root


def _cfg(tmp_path: Path, *overrides: str, classes: int = CLASSES):
    return make_config(_labels(tmp_path / "ssv2", classes), tmp_path / "run", "student.num_frames=4", *overrides)


def _imported(out: Path, cfg) -> torch.nn.Module:
    """The student the evaluate stage would build from the imported file, in float64, eval mode."""
    saved = checkpoint.load(out)
    model = build_student(cfg.student, CLASSES, trained_counts(cfg))
    model.load_state_dict(saved["model"])
    return model.double().eval()


def _seeded(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with every tensor drawn (float32-exact), norms' statistics included, so a tensor
    loaded into the wrong place changes the output."""
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    model.double().load_state_dict(seeded_state(shapes, seed=3))
    return model.eval()


def _mit_han_lab_file(tmp_path: Path, name: str = "TSM_something_RGB_tiny_shift8_blockres_avg_segment4_e45.pth"):
    """A checkpoint as mit-han-lab's training saves it, and its reference model."""
    reference = _seeded(published_tsm.mit_han_lab_tsm(CLASSES, frames=4))
    path = tmp_path / name
    torch.save({"epoch": 45, "arch": "resnet50", "state_dict": reference.state_dict(), "best_prec1": 61.2}, path)
    return path, reference


@pytest.mark.unit
def test_mmaction2s_tsm_gives_its_own_logits_after_import(tmp_path):
    fixture = json.loads(FIXTURE.read_text())
    state = seeded_state(fixture["shapes"], fixture["seed"])
    assert state_sha256(state) == fixture["sha256"], "the seeded weights are not the ones mmaction2 ran"
    src = tmp_path / "tsm_r10_mmaction2.pth"
    torch.save({"meta": {"cfg": fixture["cfg"]}, "state_dict": state}, src)
    cfg = _cfg(tmp_path)
    out = import_checkpoint(cfg, src, "mmaction2", tmp_path / "best.pt")
    with torch.no_grad():
        logits = _imported(out, cfg)(fixed_input()).logits
    expected = torch.tensor(fixture["logits"], dtype=torch.float64)
    assert logits.shape == expected.shape and expected.std() > 0.1
    assert torch.allclose(logits, expected, rtol=0, atol=TOLERANCE), (logits - expected).abs().max()


@pytest.mark.unit
def test_a_mit_han_lab_checkpoint_gives_its_models_logits_after_import(tmp_path):
    src, reference = _mit_han_lab_file(tmp_path)
    assert "module.base_model.layer1.0.conv1.net.weight" in reference.state_dict()
    cfg = _cfg(tmp_path)
    out = import_checkpoint(cfg, src, "mit-han-lab", tmp_path / "best.pt")
    clips = fixed_input()
    with torch.no_grad():
        expected, logits = reference(clips), _imported(out, cfg)(clips).logits
    assert torch.allclose(logits, expected, rtol=0, atol=TOLERANCE), (logits - expected).abs().max()
    saved = checkpoint.load(out)
    assert saved["state"]["epoch"] == 45 and saved["imported"]["from"] == "mit-han-lab"


@pytest.mark.unit
@pytest.mark.parametrize("frames", [4, 8, 16, 6])
def test_an_ffn_checkpoint_gives_its_models_logits_at_every_count(tmp_path, frames):
    counts = [4, 8, 16]
    torch.manual_seed(0)
    reference = _seeded(published_tsm.ffn_tsm(CLASSES, counts, frames))
    src = tmp_path / "ffn_tsm.pth.tar"
    torch.save({"epoch": 50, "state_dict": reference.state_dict()}, src)
    cfg = _cfg(tmp_path, "student.num_frames=16", "train.frame_counts=[4,8,16]")
    out = import_checkpoint(cfg, src, "ffn", tmp_path / "best.pt")
    clips = torch.randn(2, frames, 3, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        expected, logits = reference(clips), _imported(out, cfg)(clips).logits
    assert torch.allclose(logits, expected, rtol=0, atol=TOLERANCE), (logits - expected).abs().max()


def _refusal(tmp_path: Path, case: str) -> str:
    """The one-line error the import gives for a damaged or mismatched file."""
    src, reference = _mit_han_lab_file(tmp_path)
    fmt, overrides, classes = "mit-han-lab", (), CLASSES
    if case == "format":
        fmt = "mmaction2"
    elif case == "classes":
        classes = 7
    elif case.startswith("truncated"):  # cut at several places, in both of torch's file formats
        legacy, fraction = case.split()[1] == "legacy", float(case.split()[2])
        torch.save({"state_dict": reference.state_dict()}, src, _use_new_zipfile_serialization=not legacy)
        src.write_bytes(src.read_bytes()[: max(1, int(src.stat().st_size * fraction))])
    elif case == "unmapped":
        state = reference.state_dict()
        del state["module.base_model.layer2.0.conv2.weight"]
        state["module.base_model.layer2.0.nl.weight"] = torch.zeros(1)
        torch.save({"state_dict": state}, src)
    elif case == "frames":
        src = src.rename(src.with_name("TSM_something_RGB_tiny_shift8_blockres_avg_segment8_e45.pth"))
    elif case == "ffn counts":
        fmt, overrides = "ffn", ("student.num_frames=8", "train.frame_counts=[2,8]")
        src = tmp_path / "ffn.pth"
        torch.save({"state_dict": published_tsm.ffn_tsm(CLASSES, [4, 8, 16], 8).state_dict()}, src)
    elif case == "project":
        src = import_checkpoint(_cfg(tmp_path), src, fmt, tmp_path / "imported.pt")
    elif case == "not a checkpoint":
        torch.save({"state_dict": {"weight": torch.zeros(2)}}, src)
    cfg = _cfg(tmp_path, *overrides, classes=classes)
    with pytest.raises(UserError) as e:
        import_checkpoint(cfg, src, fmt, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
    message = str(e.value)
    assert "\n" not in message
    return message


@pytest.mark.unit
@pytest.mark.parametrize(
    "case, says",
    [
        ("format", ["a mit-han-lab checkpoint, not mmaction2", "FROM=mit-han-lab"]),
        ("classes", [f"classifies into {CLASSES} classes, the data set has 7"]),
        *[
            (f"truncated {kind} {fraction}", ["truncated or not a PyTorch checkpoint", "download it again"])
            for kind in ("zip", "legacy")
            for fraction in (0.0001, 0.01, 0.5, 0.99)
        ],
        ("project", ["already a checkpoint of this project"]),
        ("unmapped", ["module.base_model.layer2.0.nl.weight", "backbone.layer2.0.conv2.weight"]),
        ("frames", ["trained at 8 frames", "student.num_frames=8"]),
        ("ffn counts", ["frame counts [4, 8, 16]", "train.frame_counts=[4,8,16] student.num_frames=16"]),
        ("not a checkpoint", ["not a TSM-ResNet checkpoint"]),
    ],
)
def test_a_file_that_does_not_fit_is_refused_with_one_line_naming_the_fix(tmp_path, case, says):
    message = _refusal(tmp_path, case)
    assert all(s in message for s in says), message


@pytest.mark.unit
def test_the_stage_writes_a_student_folder_and_refuses_to_overwrite_one(tmp_path, capsys):
    src, _ = _mit_han_lab_file(tmp_path)
    args = ["--src", str(src), "--from", "mit-han-lab", *config_args(_labels(tmp_path / "ssv2"), tmp_path / "run")]
    args.append("student.num_frames=4")
    assert guarded("import-weights", lambda: stage.main(args), args) == 0
    cfg = _cfg(tmp_path)
    assert checkpoint.load(cfg.paths.student_dir / "best.pt")["imported"]["source"] == str(src)
    # evaluation builds the imported student whatever its command says
    other = make_config(tmp_path / "ssv2", tmp_path / "run", "student.num_frames=16", "student.arch=tsm_r50")
    assert checkpoint.with_trained_settings(other).student == dataclasses.replace(cfg.student, pretrained="")
    assert guarded("import-weights", lambda: stage.main(args), args) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("import-weights:")]
    assert "holds another student" in line and "paths.student_name=" in line


@pytest.mark.unit
@pytest.mark.parametrize("counts", [[4], [2, 4]])
def test_an_imported_checkpoint_as_student_pretrained_gives_its_backbone(tmp_path, counts):
    src, _ = _mit_han_lab_file(tmp_path)
    out = import_checkpoint(_cfg(tmp_path), src, "mit-han-lab", tmp_path / "best.pt")
    saved = checkpoint.load(out)["model"]
    torch.manual_seed(1)
    model = build_student(StudentConfig(arch="tsm_tiny", num_frames=4, pretrained=str(out)), 3, counts)
    own = model.state_dict()
    assert torch.equal(own["backbone.conv1.weight"], saved["backbone.conv1.weight"])
    if len(counts) == 1:
        assert all(torch.equal(own[k], v) for k, v in saved.items() if k.startswith("backbone."))
    else:  # FFN from a plain checkpoint: every count's norm starts from its one set of norms
        for i in range(len(counts)):
            assert torch.equal(own[f"backbone.layer3.0.bn2.copies.{i}.running_var"], saved["backbone.layer3.0.bn2.running_var"])
        assert torch.equal(own["backbone.layer3.0.conv1.conv.1.weight"], saved["backbone.layer3.0.conv1.conv.weight"])
    assert own["fc.weight"].shape == (3, 512)  # the new task's classifier, not the checkpoint's


def test_make_evaluate_reads_an_imported_checkpoint(synth_root, tmp_path):
    cfg = make_config(synth_root, tmp_path / "run", *TINY_TRAINING, "eval.clips=1", "eval.crops=3")
    shards.run(cfg)
    classes = expected_classes(cfg)
    reference = _seeded(published_tsm.mit_han_lab_tsm(classes, frames=cfg.student.num_frames)).float()
    src = tmp_path / "TSM_synthetic_RGB_tiny_shift8_blockres_avg_segment4_e1.pth"
    torch.save({"epoch": 1, "state_dict": reference.state_dict()}, src)
    import_checkpoint(cfg, src, "mit-han-lab", cfg.paths.student_dir / "best.pt")  # eval.checkpoint=best reads it
    rows = evaluate_run.run(cfg)
    assert {(r["frames"], r["protocol"]) for r in rows} == {
        (f, p) for f in (2, 4) for p in ("1 clip x 1 crop", "1 clip x 3 crops")
    }
    assert all(r["videos"] > 0 for r in rows)
    facts = json.loads((cfg.paths.student_dir / "test" / "test.json").read_text())
    assert facts["checkpoint"].endswith("best.pt") and facts["epoch"] == 1


@pytest.mark.unit
def test_a_mit_han_lab_resnet50_gives_its_models_logits_as_tsm_r50(tmp_path):
    reference = _seeded(published_tsm.mit_han_lab_tsm(CLASSES, frames=8, depth=50))
    src = tmp_path / "TSM_something_RGB_resnet50_shift8_blockres_avg_segment8_e45.pth"
    torch.save({"state_dict": reference.state_dict()}, src)
    cfg = _cfg(tmp_path, "student.arch=tsm_r50", "student.num_frames=8")
    out = import_checkpoint(cfg, src, "mit-han-lab", tmp_path / "best.pt")
    clips = torch.randn(1, 8, 3, 32, 32, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        expected, logits = reference(clips), _imported(out, cfg)(clips).logits
    assert expected.std() > 0.01
    assert torch.allclose(logits, expected, rtol=0, atol=TOLERANCE), (logits - expected).abs().max()


@pytest.mark.unit
def test_mmaction2s_published_ssv2_resnet50_layout_maps_onto_tsm_r50(tmp_path):
    shapes = json.loads(FIXTURE.read_text())["resnet50_ssv2_shapes"]  # names and shapes of mmaction2's own model
    state = {k: torch.zeros(()).expand(s) if s else torch.tensor(0) for k, s in shapes.items()}
    source = Source(tmp_path / "tsm_imagenet-pretrained-r50_8xb16-1x1x8-50e_sthv2-rgb.pth", state, 0, 8, 8, [])
    cfg = _cfg(tmp_path, "student.arch=tsm_r50", "student.num_frames=8", classes=174)
    check_settings(source, "mmaction2", cfg, [8])
    model = build_student(cfg.student, 174, [8])
    filled = convert(source, "mmaction2", model, [8], "tsm_r50")  # raises on any unmatched key or shape
    model.load_state_dict(filled, strict=True)
    assert sum(1 for k in filled if not k.startswith("proj.")) == len(shapes)
