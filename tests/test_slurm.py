"""Against a real single-node SLURM cluster that these tests start (root on Debian only)."""

import json
import logging
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline import config
from pipeline.cache.store import head_records
from pipeline.runtime.errors import guarded
from pipeline.shards import build as shards
from pipeline.ssv2 import synthetic
from pipeline.sweep import load_sweep, point_configs
from pipeline.teacher import run as teacher_run
from slurm import launch
from slurm import sweep as sweep_launch
from slurm.status import active_jobs, status_report
from tests.helpers import REPO

ROOT_ON_DEBIAN = os.geteuid() == 0 and Path("/etc/debian_version").exists()
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(not ROOT_ON_DEBIAN, reason="the SLURM tests start a real cluster: they need root on Debian (as in CI)"),
]
SLURM = (
    "slurm.executor=slurm",
    "slurm.shards.cpus_per_task=1",
    "slurm.shards.mem_gb=2",
    "slurm.shards.time_min=20",
    "slurm.teacher_cache.gpus_per_node=0",
    "slurm.teacher_cache.cpus_per_task=2",
    "slurm.teacher_cache.mem_gb=3",
    "slurm.teacher_cache.time_min=20",
    "slurm.teacher_cache.array_tasks=2",
    "slurm.shards.array_tasks=3",
    "slurm.teacher_head.gpus_per_node=0",
    "slurm.teacher_head.cpus_per_task=2",
    "slurm.teacher_head.mem_gb=3",
    "slurm.teacher_head.time_min=20",
    "slurm.train_student.gpus_per_node=0",
    "slurm.train_student.tasks_per_node=1",
    "slurm.train_student.cpus_per_task=2",
    "slurm.train_student.mem_gb=4",
    "slurm.train_student.time_min=20",
    "slurm.evaluate.gpus_per_node=0",
    "slurm.evaluate.cpus_per_task=2",
    "slurm.evaluate.mem_gb=3",
    "slurm.evaluate.time_min=20",
)
SMALL = (
    "teacher.model=clip-tiny",
    "teacher.pretrained=random",
    "teacher.num_workers=1",
    "teacher.writers=1",
    "student.arch=tsm_tiny",
    "student.image_size=48",
    "student.num_frames=4",
    "teacher.num_frames=4",
    "train.epochs=2",
    "train.batch_size=4",
    "train.num_workers=1",
    "train.eval_frame_counts=[4]",
    "train.log_every_steps=1",
    "teacher_head.folds=2",
    "teacher_head.weight_decays=[0.0001]",
    "teacher_head.min_steps=50",
    "teacher_head.temporal_width=32",
)


@pytest.fixture(scope="module")
def cluster():
    """The dev cluster, started for this module and stopped after it."""
    script = REPO / "slurm" / "dev-cluster"
    subprocess.run(["bash", str(script / "start.sh")], check=True, timeout=600)
    os.environ["PYTHONPATH"] = f"{REPO}:{os.environ.get('PYTHONPATH', '')}"  # jobs import the repo
    try:
        yield
        leftovers = _cancel_jobs_and_wait()
    finally:
        subprocess.run(["bash", str(script / "stop.sh")], check=False, timeout=120)
    assert not leftovers, f"job processes outlived their jobs: {leftovers}"


def _job_processes() -> list[str]:
    """slurmstepd and srun processes on this machine (the dev cluster's jobs are all of them)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [
        line.strip()
        for line in out.splitlines()
        if line.split(maxsplit=1)[-1].startswith(("slurmstepd:", "srun ")) or line.rstrip().endswith(" srun")
    ]


def _cancel_jobs_and_wait(timeout_s: float = 60.0) -> list[str]:
    """Cancel every job the tests left on the dev cluster and wait for their steps to end; what is still
    running after `timeout_s` is killed and returned."""
    subprocess.run(["scancel", "--full", "--user", "root"], check=False, timeout=30)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True, timeout=30).stdout.split()
        left = _job_processes()
        if not queued and not left:
            return []
        time.sleep(1)
    left = _job_processes()
    for line in left:
        subprocess.run(["kill", "-9", line.split()[0]], check=False)
    return left


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssv2")
    synthetic.generate(root, config.SyntheticConfig())
    return root


@pytest.fixture(scope="module")
def bigger_data(tmp_path_factory):
    """160 videos: enough shards that a killed task is still mid-way when the signal lands."""
    root = tmp_path_factory.mktemp("ssv2_160")
    synthetic.generate(root, config.SyntheticConfig(num_videos=160))
    return root


CHAOS_SHARDS = ("shards.videos_per_shard=4",)


@pytest.fixture(scope="module")
def reference_160(bigger_data, tmp_path_factory):
    """The 160 videos' shards and cache from one uninterrupted in-process run, to compare killed runs with."""
    cfg = config.load(REPO / "pipeline.yaml", _overrides(bigger_data, tmp_path_factory.mktemp("ref"), *CHAOS_SHARDS))
    shards.run(cfg)
    teacher_run.run(cfg)
    return cfg


def _overrides(root, run_dir, *extra):
    return [f"paths.ssv2_root={root}", f"paths.run_dir={run_dir}", "shards.videos_per_shard=8", *SMALL, *SLURM, *extra]


def _wait(jobs, timeout=300):
    deadline = time.time() + timeout
    for job in jobs:
        while not job.done(force_check=True):
            assert time.time() < deadline, f"job {job.job_id} did not finish in {timeout} s"
            time.sleep(1)


def _sacct_state(job_id, timeout=60):
    """The job's final state in SLURM's accounting (which lags a few seconds)."""
    deadline = time.time() + timeout
    state = ""
    while time.time() < deadline:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True).stdout
        state = out.split()[0] if out.split() else ""
        if state and state not in ("RUNNING", "PENDING", "REQUEUED"):
            return state
        time.sleep(1)
    return state


def test_smoke_pipeline_end_to_end_through_sbatch(cluster, data, tmp_path):
    assert launch.main(["all", *_overrides(data, tmp_path)]) == 0
    cfg = config.load(REPO / "pipeline.yaml", _overrides(data, tmp_path))
    assert (cfg.paths.shards_dir / "train.index.json").exists()
    root = zarr.open_group(cfg.paths.teacher_cache, mode="r")
    assert root["train"]["done"][:].all()
    assert set(head_records(root)) == {"zero_shot", "linear", "temporal"}  # the head stage ran as its own job
    assert json.loads((cfg.paths.student_dir / "teacher_head.json").read_text())["name"] in {"linear", "temporal"}
    assert json.loads((cfg.paths.student_dir / "eval_frames.json").read_text())["trained_num_frames"] == 4
    assert launch.main(["evaluate", *_overrides(data, tmp_path)]) == 0  # the test protocol as its own job
    rows = json.loads((cfg.paths.student_dir / "test" / "test.json").read_text())["rows"]
    assert {(r["clips"], r["crops"]) for r in rows} == {(1, 1), (2, 3)}
    submissions = list((tmp_path / "slurm").glob("*/*/submission.json"))
    assert {json.loads(p.read_text())["executor"] for p in submissions} == {"slurm"}
    ids = ",".join(t["job_id"] for p in submissions for t in json.loads(p.read_text())["tasks"])
    deadline = time.time() + 60
    while True:  # sacct lags the jobs' own result files by a few seconds
        report = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "State", "-j", ids], capture_output=True, text=True
        ).stdout.split()
        if (report and set(report) == {"COMPLETED"}) or time.time() > deadline:
            break
        time.sleep(2)
    assert report and set(report) == {"COMPLETED"}, report
    assert launch.main(["shards", *_overrides(data, tmp_path)]) == 0  # nothing left: submits nothing
    assert len(list((tmp_path / "slurm" / "shards").glob("*/submission.json"))) == 1


def test_killed_array_task_then_rerun_equals_an_uninterrupted_run(cluster, bigger_data, reference_160, tmp_path):
    data = bigger_data
    extra = (*CHAOS_SHARDS, "slurm.shards.array_tasks=2")  # the victim owns 18 of 36 shards
    cfg = config.load(REPO / "pipeline.yaml", _overrides(data, tmp_path / "run", *extra))
    jobs, _ = launch.submit_shards(cfg)
    assert len(jobs) == 2
    victim = jobs[0]
    first_shard = shards.plan_all(cfg)[victim.pipeline_args[0][0]].name
    deadline = time.time() + 120
    while not list(cfg.paths.shards_dir.glob(f".{first_shard}.tmp-*")):  # caught mid-shard
        assert time.time() < deadline, "the task never started writing"
        time.sleep(0.02)
    # Plain scancel: SIGTERM to every process of the task (its ffmpeg children too), SIGKILL 5 s later.
    subprocess.run(["scancel", victim.job_id], check=True)
    assert _sacct_state(victim.job_id) in ("CANCELLED", "FAILED", "CANCELLED+"), _sacct_state(victim.job_id)
    assert shards.missing(cfg), "the killed task left shards undone"
    rejected = [r for m in cfg.paths.shards_dir.glob("*.manifest.json") for r in json.loads(m.read_text())["rejected"]]
    assert not rejected, f"videos interrupted by the kill were recorded as rejected: {rejected[:3]}"
    _wait(jobs[1:])  # the sibling task runs on; a launch refuses while it is queued or running
    deadline = time.time() + 60
    while active_jobs(cfg, "shards"):  # squeue lags the task's own result file
        assert time.time() < deadline, active_jobs(cfg, "shards")
        time.sleep(0.5)
    assert launch.main(["shards", *_overrides(data, tmp_path / "run", *extra)]) == 0
    assert launch.main(["teacher-cache", *_overrides(data, tmp_path / "run", *extra)]) == 0
    assert not list(cfg.paths.shards_dir.glob(".*.tmp-*"))
    _equals_reference(cfg, reference_160, data)


def _equals_reference(cfg, reference, data) -> None:
    """Shards byte-identical to the uninterrupted run's, every video once, the cache equal."""
    for tar in sorted(reference.paths.shards_dir.glob("*.tar")):
        assert (cfg.paths.shards_dir / tar.name).read_bytes() == tar.read_bytes(), tar.name
    assert not list(cfg.paths.shards_dir.glob(".*.tmp-*"))
    ids = [v["id"] for m in cfg.paths.shards_dir.glob("*.manifest.json") for v in json.loads(m.read_text())["videos"]]
    expected = sum(len(json.loads((data / "labels" / f"{s}.json").read_text())) for s in ("train", "validation"))
    assert len(ids) == len(set(ids)) == expected  # nothing lost, nothing duplicated
    a, b = zarr.open_group(cfg.paths.teacher_cache, mode="r"), zarr.open_group(reference.paths.teacher_cache, mode="r")
    for split in ("train", "validation"):
        for name in ("features", "logits", "valid", "ids", "done"):
            np.testing.assert_array_equal(a[split][name][:], b[split][name][:], err_msg=f"{split}/{name}")


def _running(stage: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-n", f"ssv2-{stage}", "-o", "%i"], capture_output=True, text=True)
    return out.stdout.split()


def test_chaos_random_tasks_killed_until_the_launchers_reruns_finish(cluster, bigger_data, reference_160, tmp_path):
    """Many small array tasks; every few seconds a random running one is SIGKILLed (a lost node), while
    the launcher resubmits what is not done; the end equals an uninterrupted run."""
    extra = (*CHAOS_SHARDS, "slurm.shards.array_tasks=6", "slurm.teacher_cache.array_tasks=4", "slurm.resubmit=20")
    args = _overrides(bigger_data, tmp_path / "run", *extra)
    cfg = config.load(REPO / "pipeline.yaml", args)
    kills: dict[str, list[str]] = {}
    for stage, command, limit in (("shards", "shards", 2), ("teacher_cache", "teacher-cache", 2)):
        stop, rng, kills[stage] = threading.Event(), random.Random(0), []

        def chaos(stage=stage, limit=limit, rng=rng, stop=stop) -> None:
            # The first kill as soon as a task runs: on a fast host a stage's tasks can be done within 2 s,
            # and a kill of a finished task costs nothing to rerun.
            pause = 0.2
            while not stop.wait(pause) and len(kills[stage]) < limit:
                pause = 0.2  # look again soon while nothing runs; after a kill, wait a few seconds
                if running := _running(stage):
                    pause = 2.0
                    victim = rng.choice(running)
                    # the batch shell and every step: also before srun has started (a node lost)
                    subprocess.run(["scancel", "--full", "--signal=KILL", victim], check=False, timeout=30)
                    kills[stage].append(victim)

        killer = threading.Thread(target=chaos, daemon=True)
        killer.start()
        try:
            assert launch.main([command, *args]) == 0
        finally:
            stop.set()
            killer.join()
    submissions = {s: len(list((tmp_path / "run" / "slurm" / s).glob("*/submission.json"))) for s in kills}
    logging.getLogger(__name__).warning(
        "chaos run: survived %s SIGKILLs, finished after %s submissions", {k: len(v) for k, v in kills.items()}, submissions
    )
    assert all(n >= 2 for n in submissions.values()), submissions  # kills cost reruns, and the reruns finished
    _equals_reference(cfg, reference_160, bigger_data)
    report = status_report(cfg)
    shards_total = len(shards.plan_all(cfg))
    assert f"shards: {shards_total}/{shards_total} shards done" in report, report
    root = zarr.open_group(reference_160.paths.teacher_cache, mode="r")
    for split in ("train", "validation"):
        n, valid = root[split]["done"].shape[0], int(root[split]["valid"][:].sum())
        assert f"{split}: {n}/{n} shards, {valid} rows valid" in report, report


def test_a_second_launch_while_the_first_jobs_are_queued_stops_and_names_them(cluster, data, tmp_path, capsys):
    args = _overrides(data, tmp_path, "shards.videos_per_shard=4")
    assert launch.main(["shards", "--no-wait", *args]) == 0
    (record,) = (tmp_path / "slurm" / "shards").glob("*/submission.json")
    ids = sorted({t["job_id"].split("_")[0] for t in json.loads(record.read_text())["tasks"]})
    assert guarded("launch shards", lambda: launch.main(["shards", *args]), argv=[]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "still queued" in ln]
    assert "still queued or running" in line and all(i in line for i in ids) and "scancel" in line, line
    cfg = config.load(REPO / "pipeline.yaml", args)
    deadline = time.time() + 300
    while active_jobs(cfg, "shards"):
        assert time.time() < deadline
        time.sleep(1)
    assert launch.main(["shards", *args]) == 0  # done by the first: nothing submitted
    assert len(list((tmp_path / "slurm" / "shards").glob("*/submission.json"))) == 1
    assert not shards.missing(cfg)


def test_preempted_training_requeues_and_resumes_from_what_it_saved(cluster, data, tmp_path):
    extra = ("train.epochs=4", "student.image_size=64")
    run_dir = tmp_path / "run"
    cfg = config.load(REPO / "pipeline.yaml", _overrides(data, run_dir, *extra))
    shards.run(cfg)
    teacher_run.run(cfg)
    (jobs, _) = launch.submit_train(cfg)
    job = jobs[0]
    metrics = cfg.paths.student_dir / "metrics.jsonl"
    deadline = time.time() + 180
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):  # mid-epoch 0
        assert time.time() < deadline, "training never started"
        time.sleep(0.2)
    # what SLURM sends on preemption: SIGTERM, then the USR2 that submitit's handler turns into a requeue
    for signal in ("SIGTERM", "USR2"):
        subprocess.run(["scancel", job.job_id, "--signal", signal], check=True, timeout=30)
    result = job.result()
    events = [json.loads(line) for line in (cfg.paths.student_dir / "requeue.jsonl").read_text().splitlines()]
    saved = [e for e in events if e["event"] == "saved"]
    resumed = [e for e in events if e["event"] == "resumed"]
    assert saved and resumed, events
    assert resumed[0]["path"] == saved[0]["path"] == str(cfg.paths.student_dir / "latest.pt")
    assert resumed[0]["step"] == saved[0]["step"] > 0
    per_epoch = 32 // 4
    assert result["step"] == 4 * per_epoch and result["epoch"] == 4  # same as an uninterrupted run


def test_a_preempted_sweep_point_requeues_and_resumes_and_the_rerun_submits_nothing(cluster, data, tmp_path):
    sweep_file = tmp_path / "pair.yaml"
    sweep_file.write_text("name: pair\npoints:\n  - {loss.temperature: 1.0}\n  - {loss.temperature: 3.0}\n")
    extra = ("train.epochs=4", "student.image_size=64", "slurm.train_student.array_parallelism=2")
    overrides = _overrides(data, tmp_path / "run", *extra)
    cfg = config.load(REPO / "pipeline.yaml", overrides)
    shards.run(cfg)
    teacher_run.run(cfg)
    args = [str(sweep_file), "--config", str(REPO / "pipeline.yaml"), *overrides]
    assert sweep_launch.main([*args, "--no-wait"]) == 0
    (record,) = (tmp_path / "run" / "slurm" / "sweep-pair").glob("*/submission.json")
    tasks = {t["point"]: t["job_id"] for t in json.loads(record.read_text())["tasks"]}
    cfgs = point_configs([str(REPO / "pipeline.yaml")], overrides, load_sweep(sweep_file))
    victim = cfgs["loss.temperature=3.0"].paths.student_dir
    deadline = time.time() + 240
    while not ((victim / "metrics.jsonl").exists() and len((victim / "metrics.jsonl").read_text().splitlines()) >= 3):
        assert time.time() < deadline, "the point never started training"
        time.sleep(0.2)
    for signal in ("SIGTERM", "USR2"):  # preemption, as SLURM sends it, to that array task alone
        subprocess.run(["scancel", tasks["loss.temperature=3.0"], "--signal", signal], check=True, timeout=30)
    deadline = time.time() + 400
    while sweep_launch.unfinished(cfgs):
        assert time.time() < deadline, f"points not finished: {sweep_launch.unfinished(cfgs)}"
        time.sleep(2)
    events = [json.loads(line) for line in (victim / "requeue.jsonl").read_text().splitlines()]
    saved = [e for e in events if e["event"] == "saved"]
    resumed = [e for e in events if e["event"] == "resumed"]
    assert saved and resumed and resumed[0]["step"] == saved[0]["step"] > 0, events
    for point in cfgs.values():
        final = json.loads((point.paths.student_dir / "eval_frames.json").read_text())
        assert final["trained_num_frames"] == 4
    deadline = time.time() + 60
    while active_jobs(cfg, "sweep-pair"):  # the array's accounting settles
        assert time.time() < deadline
        time.sleep(1)
    assert sweep_launch.main(args) == 0  # every point trained: nothing submitted, the comparison written
    assert len(list((tmp_path / "run" / "slurm" / "sweep-pair").glob("*/submission.json"))) == 1
    assert (tmp_path / "run" / "sweeps" / "pair" / "compare.md").read_text().count("| loss.temperature=") == 2
