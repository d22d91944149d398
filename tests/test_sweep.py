"""Sweeps (through submitit's local executor), the comparison across runs, and the export."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import torch

from pipeline import config
from pipeline.models import build_student
from pipeline.report.compare import student_folders, write_comparison
from pipeline.student.export import export_count
from pipeline.sweep import load_sweep, point_configs
from slurm import sweep as sweep_launch
from stages import export as export_stage
from tests.helpers import PIPELINE_YAML, SMOKE_YAML, config_args

SWEEP = """
name: two
overrides: [train.epochs=2]
points:
  - {loss.temperature: 1.0}
  - {loss.temperature: 3.0}
"""


def _kill_point_once_started(student_dir, stop: threading.Event, killed: list) -> None:
    """SIGKILL the point's training process once it has logged a step."""
    events, metrics = student_dir / "requeue.jsonl", student_dir / "metrics.jsonl"
    while not stop.is_set():
        if events.exists() and metrics.exists() and metrics.read_text().strip():
            try:
                started = [json.loads(line) for line in events.read_text().splitlines()]
            except ValueError:  # caught mid-write
                continue
            os.kill(started[0]["pid"], signal.SIGKILL)
            killed.append(started[0]["pid"])
            return
        time.sleep(0.05)


def test_a_sweep_trains_each_point_reruns_only_the_killed_one_then_nothing(synth_root, tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(SWEEP)
    args = [str(path), *config_args(synth_root, tmp_path / "run", "train.log_every_steps=1", "slurm.resubmit=0")]
    cfgs = point_configs([str(PIPELINE_YAML), str(SMOKE_YAML)], args[5:], load_sweep(path))
    first, second = cfgs.values()
    assert first.paths.teacher_cache == second.paths.teacher_cache  # one cache, shared
    assert first.paths.student_dir.parent == second.paths.student_dir.parent == tmp_path / "run" / "sweeps" / "two"

    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_point_once_started, args=(second.paths.student_dir, stop, killed), daemon=True)
    killer.start()
    try:
        assert sweep_launch.main(args) == 1  # the killed point is not finished and resubmit=0
    finally:
        stop.set()
        killer.join()
    assert killed, "the second point was never caught training"
    assert sweep_launch.unfinished(cfgs) == [second.paths.student_dir.name]

    assert sweep_launch.main(args) == 0  # only the killed point is submitted again
    records = sorted((tmp_path / "run" / "slurm" / "sweep-two").glob("*/submission.json"))
    assert [[t["point"] for t in json.loads(r.read_text())["tasks"]] for r in records] == [
        [first.paths.student_dir.name, second.paths.student_dir.name],
        [second.paths.student_dir.name],
    ]
    assert sweep_launch.main(args) == 0  # all done: nothing submitted
    assert len(list((tmp_path / "run" / "slurm" / "sweep-two").glob("*/submission.json"))) == 2

    table = (tmp_path / "run" / "sweeps" / "two" / "compare.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| run |"))
    column = [c.strip() for c in header.strip("|").split("|")].index("epochs")
    rows = [
        [c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| loss.temperature=")
    ]
    assert len(rows) == 2 and [r[column] for r in rows] == ["2", "2"], table  # both points, 2 epochs each
    for cfg in cfgs.values():
        saved = config.load(cfg.paths.student_dir / "config.yaml")
        assert saved.loss.temperature == cfg.loss.temperature and saved.train.epochs == 2

    # compare over any set of folders: the run folder finds both points
    out = write_comparison([tmp_path / "run"], out=tmp_path / "cmp")
    assert len(student_folders([tmp_path / "run"])) == 2 and (tmp_path / "cmp" / "compare_val_top1.png").exists()
    assert out.read_text().count("| loss.temperature=") == 2

    # the export of a point: ONNX and torch.export per count, checked on real validation clips
    point = [*args[1:], f"paths.student_name={first.paths.student_name}", "export.latency_runs=2", "export.check_videos=3"]
    assert export_stage.main(point) == 0
    facts = json.loads((first.paths.student_dir / "export" / "export.json").read_text())
    assert [r["frames"] for r in facts["rows"]] == [4, 8, 16]
    for r in facts["rows"]:
        assert r["check_clips"] == 3 and r["onnx_max_abs_diff"] < 1e-3 and r["program_max_abs_diff"] < 1e-3
        assert r["onnx_cpu_1_thread"] > 0 and (first.paths.student_dir / "export" / r["onnx"]).stat().st_size > 0


@pytest.mark.parametrize(
    ("arch", "counts", "extra"),
    [("tsm_tiny", [2, 4], {}), ("mobilevit_xxs", None, {"temporal": "attention_pos"})],
)
def test_export_matches_pytorch_at_every_count(arch, counts, extra, tmp_path):
    cfg = config.load(
        PIPELINE_YAML, [f"student.arch={arch}", "student.image_size=64", *[f"student.{k}={v}" for k, v in extra.items()]]
    )
    torch.manual_seed(0)
    student = build_student(cfg.student, 174, counts).eval()
    for frames in counts or [4]:
        clips = torch.randint(0, 256, (3, frames, 3, 64, 64), dtype=torch.uint8)
        done = export_count(student, frames=frames, size=64, out=tmp_path, check_clips=clips)
        assert done.onnx_diff < 1e-4 and done.program_diff < 1e-4, (frames, done)
        with torch.no_grad():  # the deployable equals the trainer's own forward (normalisation included)
            mean = torch.tensor(student.input_mean).view(1, 1, 3, 1, 1) * 255
            std = torch.tensor(student.input_std).view(1, 1, 3, 1, 1) * 255
            expected = student((clips.float() - mean) / std).logits
            got = torch.export.load(done.program).module()(clips)
        assert torch.allclose(got, expected, atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file left"
