"""`make verify`: a whole run passes; each kind of damage is found, and the printed repair command,
run as printed, repairs it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from pipeline.shards import build as shards
from pipeline.student import train
from pipeline.teacher import run as teacher_run
from pipeline.verify import verify
from stages import verify as verify_stage
from tests.helpers import REPO, TINY_TRAINING, config_args, make_config

SETTINGS = (*TINY_TRAINING, "train.epochs=1")


def _repair(command: str) -> None:
    """Run a printed repair command, with this interpreter for `python`."""
    command = command.replace("python -m", f"{shlex.quote(sys.executable)} -m")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(command, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _flip(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_verify_finds_each_damage_and_its_repair_command_repairs_it(synth_root, tmp_path, capsys):
    cfg = make_config(synth_root, tmp_path / "run", *SETTINGS)
    shards.run(cfg)
    teacher_run.run(cfg)
    train.run(cfg)
    argv = config_args(synth_root, tmp_path / "run", *SETTINGS)
    assert verify_stage.main(argv) == 0 and "is whole" in capsys.readouterr().out
    args = shlex.join(argv)

    _flip(sorted(cfg.paths.shards_dir.glob("train-*.tar"))[1])
    problems = verify(cfg, args)
    assert len(problems) == 1 and "sha256 differs" in problems[0].what
    _repair(problems[0].repair)

    _flip(cfg.paths.teacher_cache / "validation" / "logits" / "c" / "0" / "0" / "0")
    problems = verify(cfg, args)
    assert len(problems) == 1 and "validation-000000" in problems[0].what and "--recompute" in problems[0].repair
    _repair(problems[0].repair)

    latest = cfg.paths.student_dir / "latest.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # torn (as no atomic write would leave it)
    problems = verify(cfg, args)
    assert len(problems) == 1 and "latest.pt" in problems[0].what
    assert verify_stage.main(argv) == 1
    (cfg.paths.student_dir / "latest.pt").rename(cfg.paths.student_dir / "latest.pt.bad")  # the repair's first half
    assert verify(cfg, args) == []
