"""Scheduling overhead: the smoke pipeline through the local SLURM cluster versus submitit's local
executor, and how long a preempted training job takes to come back.

    make slurm-up && python -m bench.slurm_bench

Both pipelines run `python -m slurm.launch all` on the same synthetic set in fresh run folders,
timed from the command's start to its end (waiting for every job). The requeue figure is the time
from the preempted job writing latest.pt to the requeued job starting again (requeue.jsonl).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline import config
from pipeline.shards import build as shards
from pipeline.ssv2 import synthetic
from pipeline.teacher import run as teacher_run
from slurm import launch

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "shards.videos_per_shard=8",
    "teacher.model=clip-tiny",
    "teacher.pretrained=random",
    "teacher.num_workers=1",
    "teacher.writers=1",
    "student.arch=tsm_tiny",
    "student.image_size=48",
    "student.num_frames=4",
    "train.epochs=2",
    "train.batch_size=4",
    "train.num_workers=1",
    "train.eval_frame_counts=[4]",
    "train.log_every_steps=1",
    "slurm.shards.cpus_per_task=1",
    "slurm.shards.mem_gb=2",
    "slurm.shards.array_tasks=3",
    "slurm.shards.time_min=20",
    "slurm.teacher_cache.gpus_per_node=0",
    "slurm.teacher_cache.cpus_per_task=2",
    "slurm.teacher_cache.mem_gb=3",
    "slurm.teacher_cache.array_tasks=2",
    "slurm.teacher_cache.time_min=20",
    "slurm.train_student.gpus_per_node=0",
    "slurm.train_student.tasks_per_node=1",
    "slurm.train_student.cpus_per_task=2",
    "slurm.train_student.mem_gb=4",
    "slurm.train_student.time_min=20",
]


def pipeline_seconds(root: Path, run_dir: Path, executor: str) -> float:
    """Wall time of `slurm.launch all` (waiting for every job) with the given executor."""
    start = time.perf_counter()
    code = launch.main(["all", f"paths.ssv2_root={root}", f"paths.run_dir={run_dir}", f"slurm.executor={executor}", *SMALL])
    if code != 0:
        sys.exit(f"pipeline with {executor} executor failed")
    return time.perf_counter() - start


def requeue_seconds(root: Path, run_dir: Path) -> float:
    """Seconds from a preempted job saving latest.pt to its requeued run starting."""
    cfg = config.load(
        REPO / "pipeline.yaml",
        [
            f"paths.ssv2_root={root}",
            f"paths.run_dir={run_dir}",
            "slurm.executor=slurm",
            *SMALL,
            "train.epochs=4",
            "student.image_size=64",
        ],
    )
    shards.run(cfg)
    teacher_run.run(cfg)
    (job,), _ = launch.submit_train(cfg)
    metrics = cfg.paths.student_dir / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    for signal in ("SIGTERM", "USR2"):  # what SLURM sends on preemption
        subprocess.run(["scancel", job.job_id, "--signal", signal], check=True, timeout=30)
    job.result()
    events = [json.loads(x) for x in (cfg.paths.student_dir / "requeue.jsonl").read_text().splitlines()]
    saved = next(e["time"] for e in events if e["event"] == "saved")
    restarted = [e["time"] for e in events if e["event"] == "started"][1]
    return restarted - saved


def main() -> None:
    """Print the Markdown table of both figures."""
    logging.basicConfig(level=logging.WARNING)
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        sys.exit("no SLURM cluster answers: run `make slurm-up` first")
    work = Path(tempfile.mkdtemp(prefix="slurm_bench_"))
    synthetic.generate(work / "ssv2", config.SyntheticConfig())
    local = pipeline_seconds(work / "ssv2", work / "local", "local")
    slurm = pipeline_seconds(work / "ssv2", work / "slurm", "slurm")
    requeue = requeue_seconds(work / "ssv2", work / "requeue")
    print("\n| what | seconds |\n| --- | --- |")
    print(f"| smoke pipeline, submitit local executor | {local:.1f} |")
    print(f"| smoke pipeline, local SLURM cluster (sbatch) | {slurm:.1f} |")
    print(f"| scheduling overhead (SLURM - local) | {slurm - local:.1f} ({slurm / local:.2f}x) |")
    print(f"| preempted training job: latest.pt saved -> requeued job running again | {requeue:.1f} |")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
