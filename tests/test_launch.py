"""The launcher with submitit's local executor (no cluster needed)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.shards import build as shards
from slurm import launch
from tests.helpers import REPO, config_args, make_config

LOCAL = [
    "slurm.executor=local",
    "slurm.teacher_cache.gpus_per_node=0",
    "slurm.teacher_cache.array_tasks=2",
    "slurm.train_student.gpus_per_node=0",
    "slurm.train_student.tasks_per_node=1",
]


def test_a_failed_array_task_is_named_with_its_log_and_shards(synth_root, tmp_path, caplog):
    overrides = [
        f"paths.ssv2_root={synth_root}",
        f"paths.run_dir={tmp_path}",
        "shards.videos_per_shard=8",
        "teacher.model=clip-tiny",
        "teacher.pretrained=/nonexistent/teacher.pt",
        *LOCAL,
    ]
    cfg = make_config(synth_root, tmp_path, *overrides[2:])
    shards.run(cfg)
    assert launch.main(["teacher-cache", *overrides]) == 1
    failures = [r.getMessage() for r in caplog.records if "FAILED" in r.getMessage()]
    assert len(failures) == 2
    for message in failures:
        assert (
            "_log.err" in message
            and "owned shards [" in message
            and "TeacherWeightsError" in message
            and "no such checkpoint file" in message
        )
    (submission,) = (tmp_path / "slurm" / "teacher_cache").glob("*/submission.json")
    owned = sorted(p for t in json.loads(submission.read_text())["tasks"] for p in t["args"][0])
    assert owned == list(range(6))


@pytest.mark.unit
def test_groups_deal_shards_round_robin_and_cap_the_task_count():
    assert launch.groups(list(range(7)), 3) == [[0, 3, 6], [1, 4], [2, 5]]
    assert launch.groups([5, 9], 64) == [[5], [9]]


def _launcher(args: list[str], go: Path) -> subprocess.Popen:
    """`launch shards args` in its own process, imported and waiting until `go` exists (so the timing
    of the test is the launcher's own, not Python's start-up)."""
    code = (
        "import sys, time, pathlib\n"
        "from slurm import launch\n"
        "from pipeline.runtime.errors import guarded\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.005)\n"
        f"sys.exit(guarded('launch shards', lambda: launch.main(['shards', *{args!r}])))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def _same_shards(cfg, reference) -> None:
    made = sorted(p.name for p in cfg.paths.shards_dir.iterdir() if not p.name.startswith("."))
    assert made == sorted(p.name for p in reference.paths.shards_dir.iterdir() if not p.name.startswith("."))
    for tar in sorted(reference.paths.shards_dir.glob("*.tar")):
        assert (cfg.paths.shards_dir / tar.name).read_bytes() == tar.read_bytes(), tar.name
    assert not list(cfg.paths.shards_dir.glob(".*.tmp-*"))


def test_the_same_launch_twice_at_once_gives_one_complete_output_and_a_message(synth_root, tmp_path):
    settings = ("shards.videos_per_shard=4", *LOCAL)
    # the second comes while the first is running: it stops at once, naming the first
    first = _launcher(config_args(synth_root, tmp_path / "run", *settings), tmp_path / "go-first")
    second = _launcher(config_args(synth_root, tmp_path / "run", *settings), tmp_path / "go-second")
    (tmp_path / "go-first").touch()
    lock = tmp_path / "run" / "slurm" / "shards" / "launch.lock"
    deadline = time.time() + 120
    while not (lock.exists() and f'"pid": {first.pid}' in lock.read_text()):
        assert first.poll() is None and time.time() < deadline, "the first launch never took its lock"
        time.sleep(0.01)
    (tmp_path / "go-second").touch()
    _, said = second.communicate(timeout=120)
    assert second.returncode == 2, said
    (line,) = [ln for ln in said.splitlines() if "already running" in ln]
    assert f"pid {first.pid}" in line and str(lock) in line and "make status" in line
    assert first.poll() is None, "the first launch was still at work when the second stopped"
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    # two at the very same moment on a fresh folder: whichever loses the race says so
    racers = [_launcher(config_args(synth_root, tmp_path / "race", *settings), tmp_path / "go-race") for _ in range(2)]
    (tmp_path / "go-race").touch()
    outcomes = sorted((p.wait(timeout=300), p.stderr.read()) for p in racers)
    assert [rc for rc, _ in outcomes] == [0, 2] and "already running" in outcomes[1][1], outcomes
    reference = make_config(synth_root, tmp_path / "ref", "shards.videos_per_shard=4")
    shards.run(reference)
    for folder in ("run", "race"):
        cfg = make_config(synth_root, tmp_path / folder, "shards.videos_per_shard=4")
        assert not shards.missing(cfg)
        _same_shards(cfg, reference)


@pytest.mark.unit
def test_a_users_error_is_found_in_a_jobs_trace_whatever_its_name():
    from pipeline.student.export_run import ExportMismatch

    trace = (
        "Traceback (most recent call last):\n  File 'x.py', line 1\n"
        f"{ExportMismatch.__module__}.ExportMismatch: at 4 frames the exported logits differ\n"
        "  - /run/slurm/export/1_0_log.err\n"
    )
    line = launch._error_line(RuntimeError(trace))
    assert line.startswith(f"{ExportMismatch.__module__}.ExportMismatch: at 4 frames")
    assert launch._raised_name(line) in launch._user_errors()
    assert launch._raised_name("srun: Force Terminated StepId=9.0") not in launch._user_errors()


def test_make_all_without_slurm_runs_every_step_in_order_and_ends_with_a_trained_student(synth_root, tmp_path):
    """`make all` passes --no-wait (SLURM's afterok chains the steps); with no sbatch on PATH the
    executor is local and the steps must run one after another, each reading the last one's output."""
    path = _path_without("sbatch", tmp_path / "bin")
    args = f"paths.ssv2_root={synth_root} paths.run_dir={tmp_path} slurm.executor=auto teacher.num_workers=1 train.epochs=1"
    env = {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1"}
    cmd = ["make", "-s", "all", "RECIPE=configs/smoke.yaml", f"ARGS={args}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "running shards, teacher, head, train in order" in proc.stderr
    student = tmp_path / "student"
    assert (student / "best.pt").exists() and (student / "eval_frames.json").exists()
    logs = {stage: min(p.stat().st_mtime for p in (tmp_path / "slurm" / stage).glob("*/submission.json"))
            for stage in ("shards", "teacher_cache", "teacher_head", "train_student")}  # fmt: skip
    assert list(logs) == sorted(logs, key=logs.get), logs  # submitted one after another, in the plan's order


def _path_without(command: str, shim: Path) -> str:
    """PATH with `command` gone: a folder that holds it (often /usr/bin, beside make and ffmpeg) is
    replaced by `shim`, a folder of links to everything else in it."""
    shim.mkdir(exist_ok=True)
    kept = []
    for folder in os.environ["PATH"].split(os.pathsep):
        if not (Path(folder) / command).exists():
            kept.append(folder)
            continue
        for tool in Path(folder).iterdir():
            if tool.name != command and not (shim / tool.name).exists():
                (shim / tool.name).symlink_to(tool)
        kept.append(str(shim))
    return os.pathsep.join(kept)
