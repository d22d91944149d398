"""A submitit executor for one stage, from the config: SLURM or local, with the stage's resources."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import submitit

from pipeline.config import Config, SlurmStageConfig


def executor_kind(cfg: Config) -> str:
    """slurm or local: `auto` means slurm when sbatch is on PATH."""
    kind = cfg.slurm.executor
    if kind == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    if kind not in ("slurm", "local"):
        raise ValueError(f"slurm.executor must be slurm, local or auto, got {kind!r}")
    return kind


def submission_folder(cfg: Config, stage: str) -> Path:
    """A fresh log folder per submission under the run folder (never reuse one: job ids restart)."""
    folder = Path(cfg.paths.run_dir) / "slurm" / stage / time.strftime("%Y%m%d-%H%M%S")
    suffix = 0
    while folder.exists():
        suffix += 1
        folder = folder.with_name(f"{folder.name.split('.')[0]}.{suffix}")
    folder.mkdir(parents=True)
    return folder


def make_executor(cfg: Config, stage: str, resources: SlurmStageConfig, folder: Path) -> submitit.Executor:
    """An executor whose jobs log to `folder`."""
    kind = executor_kind(cfg)
    executor = submitit.AutoExecutor(folder=folder, cluster="local" if kind == "local" else "slurm")
    r = resources
    params = dict(
        name=f"ssv2-{stage}",
        timeout_min=r.time_min,
        nodes=r.nodes,
        tasks_per_node=r.tasks_per_node,
        cpus_per_task=r.cpus_per_task,
    )
    if kind == "slurm":
        params.update(mem_gb=r.mem_gb, slurm_array_parallelism=r.array_parallelism)
        if r.gpus_per_node:
            params["gpus_per_node"] = r.gpus_per_node
        for key, value in (("partition", r.partition), ("account", r.account), ("qos", r.qos), ("constraint", r.constraint)):
            if value:
                params[f"slurm_{key}"] = value
        extra = dict(item.split("=", 1) for item in r.extra)
        if extra:
            params["slurm_additional_parameters"] = extra
    elif r.gpus_per_node:
        params["gpus_per_node"] = r.gpus_per_node
    executor.update_parameters(**params)
    return executor


def max_array_size() -> int:
    """The cluster's MaxArraySize (arrays longer than this are split into several)."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 1000
    for line in out.splitlines():
        if line.strip().startswith("MaxArraySize"):
            return max(1, int(line.split("=")[1]) - 1)  # indices run 0 .. MaxArraySize-1
    return 1000
