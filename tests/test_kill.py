"""kill -9: the real stage processes (and their workers) killed without warning, then run again.

A killed shards or teacher-cache task leaves no done marker for the shard it was on; a killed
training resumes from the last checkpoint it saved, losing at most `train.checkpoint_every_steps`
steps, and ends with the weights of a run that was never killed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import zarr

from pipeline.models import checkpoint
from pipeline.shards import build as shards
from pipeline.teacher import run as teacher_run
from tests.helpers import REPO, TINY_TRAINING, config_args, make_config

TINY = ("teacher.model=clip-tiny", "teacher.pretrained=random", "teacher.num_workers=1", "teacher.batch_videos=2")


ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # one thread: the same sums in every run


def _run(module: str, args: list[str]) -> str:
    """Run `python -m module args` to its end; its stderr (the log)."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def _kill_when(module: str, args: list[str], ready: Callable[[], bool], timeout: float = 240) -> None:
    """Start `python -m module args` in its own session, wait for `ready()`, SIGKILL the whole group."""
    env = ENV
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"{module} ended before the kill: {proc.stderr.read()[-2000:]}"
            assert time.time() < deadline, f"{module} never got there"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the task and its loader workers, as a lost node
        proc.wait(timeout=30)


def test_a_shards_task_killed_mid_shard_leaves_no_done_marker_and_the_rerun_equals_a_clean_run(synth_root, tmp_path):
    args = config_args(synth_root, tmp_path / "run", "shards.videos_per_shard=4", "shards.cpus_per_task=1")
    cfg = make_config(synth_root, tmp_path / "run", *args[4:])
    out = cfg.paths.shards_dir
    # killed while writing its second shard (a temporary file beside one finished shard)
    _kill_when("stages.shards", args, lambda: len(list(out.glob("*.manifest.json"))) >= 1 and any(out.glob(".*.tmp-*")))
    done = {p.name.removesuffix(".manifest.json") for p in out.glob("*.manifest.json")}
    planned = [s.name for s in shards.plan_all(cfg)]
    assert 1 <= len(done) < len(planned)
    for name in done:  # a done marker only beside a complete tar, its hash as recorded
        manifest = json.loads((out / f"{name}.manifest.json").read_text())
        assert hashlib.sha256((out / f"{name}.tar").read_bytes()).hexdigest() == manifest["sha256"]
    shards.run(cfg)
    reference = make_config(synth_root, tmp_path / "ref", *args[4:])
    shards.run(reference)
    for tar in sorted(reference.paths.shards_dir.glob("*.tar")):
        assert (out / tar.name).read_bytes() == tar.read_bytes(), tar.name
    assert not list(out.glob(".*.tmp-*")), "the rerun drops the killed task's temporary files"


def test_a_teacher_task_killed_mid_run_leaves_only_complete_shards_done(synth_root, tmp_path):
    cfg = make_config(synth_root, tmp_path / "run", *TINY)
    shards.run(cfg)

    def some_done() -> bool:
        try:
            done = zarr.open_group(cfg.paths.teacher_cache, mode="r")["train"]["done"][:]
        except (FileNotFoundError, KeyError, ValueError):
            return False
        return 0 < done.sum() < len(done)

    _kill_when("stages.teacher_cache", config_args(synth_root, tmp_path / "run", *TINY), some_done)
    reference = make_config(synth_root, tmp_path / "ref", *TINY)
    shards.run(reference)
    teacher_run.run(reference)
    killed = zarr.open_group(cfg.paths.teacher_cache, mode="r")
    ref = zarr.open_group(reference.paths.teacher_cache, mode="r")
    per = ref["train"]["features"].chunks[0]
    done = np.flatnonzero(killed["train"]["done"][:])
    assert 0 < len(done) < ref["train"]["done"].shape[0]
    for shard in done:  # every shard marked done holds exactly the uninterrupted run's rows
        rows = slice(shard * per, (shard + 1) * per)
        np.testing.assert_array_equal(killed["train"]["features"][rows], ref["train"]["features"][rows])
    teacher_run.run(cfg)
    again = zarr.open_group(cfg.paths.teacher_cache, mode="r")
    for split in ("train", "validation"):
        for name in ("features", "logits", "valid", "done"):
            np.testing.assert_array_equal(again[split][name][:], ref[split][name][:], err_msg=f"{split}/{name}")


def test_training_killed_mid_epoch_resumes_from_its_last_checkpoint_and_ends_as_a_clean_run(synth_root, tmp_path):
    every = 3
    extra = (
        *TINY_TRAINING,
        "loss.mode=vanilla",
        "train.epochs=2",
        f"train.checkpoint_every_steps={every}",
        "train.log_every_steps=1",
    )
    cfg = make_config(synth_root, tmp_path / "run", *extra)
    shards.run(cfg)
    metrics = cfg.paths.student_dir / "metrics.jsonl"
    per_epoch = 32 // cfg.train.batch_size  # the synthetic set's training videos over the batch

    def mid_epoch() -> bool:  # past a checkpoint, not at an epoch's end
        if not metrics.exists():
            return False
        steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"train"' in line]
        return bool(steps) and steps[-1] >= every + 1 and steps[-1] % per_epoch not in (0, per_epoch - 1)

    _kill_when("stages.train_student", config_args(synth_root, tmp_path / "run", *extra), mid_epoch)
    logged = max(json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"train"' in line)
    saved = checkpoint.load(cfg.paths.student_dir / "latest.pt")  # whole: written atomically
    assert logged - every <= saved["state"]["step"] <= logged + 1, (logged, saved["state"]["step"])
    log = _run("stages.train_student", config_args(synth_root, tmp_path / "run", *extra))
    assert f"step {saved['state']['step']} (" in log.split("resumed from", 1)[1].splitlines()[0]
    clean_cfg = make_config(synth_root, tmp_path / "clean", *extra)
    shards.run(clean_cfg)
    _run("stages.train_student", config_args(synth_root, tmp_path / "clean", *extra))
    resumed = checkpoint.load(cfg.paths.student_dir / "latest.pt")
    clean = checkpoint.load(clean_cfg.paths.student_dir / "latest.pt")
    assert resumed["state"]["step"] == clean["state"]["step"] == 2 * per_epoch
    for name, a in clean["model"].items():
        torch.testing.assert_close(resumed["model"][name], a, rtol=1e-5, atol=1e-6, msg=name)
    # one record per step, though the killed run logged steps past its checkpoint that were trained again
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == list(range(1, 2 * per_epoch + 1)), steps
    assert [r["epoch"] for r in records if r["kind"] == "val"] == [0, 1]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(cfg.paths.student_dir / "tensorboard"))
    board.Reload()
    assert [e.step for e in board.Scalars("train/loss")] == steps
