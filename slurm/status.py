"""`make status`: each stage's submissions and job states, and how much of its work is done."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pipeline.config import Config
from pipeline.models import checkpoint
from pipeline.shards.plan import plan_all


def _job_states(job_ids: list[str]) -> dict[str, str]:
    """State per job id (array tasks as id_task) from sacct; empty without SLURM."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


def _local_states(folder: Path, job_ids: list[str]) -> dict[str, str]:
    """States of local-executor jobs from submitit's result files (no sacct for them)."""
    import pickle

    states = {}
    for job_id in job_ids:
        results = list(folder.glob(f"{job_id}_*_result.pkl"))
        if not results:
            states[job_id] = "RUNNING_OR_LOST"
            continue
        outcome = pickle.loads(results[0].read_bytes())[0]
        states[job_id] = "COMPLETED" if outcome == "success" else "FAILED"
    return states


def active_jobs(cfg: Config, stage: str, recent: int = 50) -> list[str]:
    """Jobs of the stage's last `recent` SLURM submissions that are still queued or running (squeue).
    Local-executor jobs are not looked up: they are the launcher's children, and its lock covers
    them while it lives (a launcher killed with SIGKILL can leave them running)."""
    records = sorted((Path(cfg.paths.run_dir) / "slurm" / stage).glob("*/submission.json"), key=lambda p: p.stat().st_mtime)
    ids: set[str] = set()
    for record in records[-recent:]:
        submission = json.loads(record.read_text())
        if submission.get("executor") == "slurm":
            ids |= {t["job_id"].split("_")[0] for t in submission["tasks"]}
    ids = sorted(ids)
    if not ids:
        return []
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return sorted({line.split("_")[0] for line in out.stdout.split()})


def _submissions(cfg: Config, stage: str) -> list[str]:
    lines = []
    for folder in sorted((Path(cfg.paths.run_dir) / "slurm" / stage).glob("*")):
        record = folder / "submission.json"
        if not record.exists():
            continue
        submission = json.loads(record.read_text())
        ids = [t["job_id"] for t in submission["tasks"]]
        states = _local_states(folder, ids) if submission.get("executor") == "local" else _job_states(ids)
        counts: dict[str, int] = {}
        for job_id in ids:
            state = states.get(job_id, "unknown (no sacct)").split()[0]
            counts[state] = counts.get(state, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        lines.append(f"    {folder.name}: {len(ids)} job(s): {summary}; logs in {folder}")
    return lines or ["    no submissions"]


def _shards_progress(cfg: Config) -> str:
    from pipeline.shards.build import missing

    try:
        total = len(plan_all(cfg))
        return f"{total - len(missing(cfg))}/{total} shards done"
    except (OSError, ValueError) as e:
        return f"cannot plan shards: {e}"


def _cache_progress(cfg: Config) -> str:
    import zarr

    if not cfg.paths.teacher_cache.exists():
        return "no cache yet"
    root = zarr.open_group(cfg.paths.teacher_cache, mode="r")
    parts = []
    for split in cfg.data.splits:
        if split in root:
            done, valid = root[split]["done"][:], root[split]["valid"][:]
            parts.append(f"{split}: {int(done.sum())}/{len(done)} shards, {int(valid.sum())} rows valid")
    return "; ".join(parts)


def _head_progress(cfg: Config) -> str:
    import zarr

    from pipeline.cache.store import head_records

    if not cfg.paths.teacher_cache.exists():
        return "no cache yet"
    records = head_records(zarr.open_group(cfg.paths.teacher_cache, mode="r"))
    fitted = [f"{n} (val top-1 {r['val_top1']:.4f})" if "val_top1" in r else n for n, r in records.items()]
    wanted = [n for n in cfg.teacher_head.heads if n not in records]
    return f"fitted: {', '.join(fitted) or 'none'}" + (f"; not yet: {', '.join(wanted)}" if wanted else "")


def _train_progress(cfg: Config) -> str:
    saved = checkpoint.load(cfg.paths.student_dir / "latest.pt")
    if saved is None:
        return "no checkpoint yet"
    state = saved["state"]
    return (
        f"epoch {state['epoch']}/{cfg.train.epochs}, step {state['step']}, best top-1 {state['best_top1']:.4f}"
        if state["best_top1"] >= 0
        else f"epoch {state['epoch']}, step {state['step']}"
    )


def _evaluate_progress(cfg: Config) -> str:
    path = cfg.paths.student_dir / "test" / "test.json"
    if not path.exists():
        return "not evaluated yet (make evaluate)"
    facts = json.loads(path.read_text())
    best = max(facts["rows"], key=lambda r: r["top1"])
    where = f"{best['frames']} frames, {best['protocol']}"
    return f"{len(facts['rows'])} rows in {path.parent / 'test.md'}; best top-1 {best['top1']:.4f} ({where})"


def _export_progress(cfg: Config) -> str:
    path = cfg.paths.student_dir / "export" / "export.json"
    if not path.exists():
        return "not exported yet (make export)"
    rows = json.loads(path.read_text())["rows"]
    return f"{len(rows)} frame counts exported ({', '.join(str(r['frames']) for r in rows)}) in {path.parent}"


def status_report(cfg: Config) -> str:
    """A few lines per stage."""
    lines = [f"run folder {cfg.paths.run_dir}"]
    for title, stage, progress in (
        ("shards", "shards", _shards_progress),
        ("teacher-cache", "teacher_cache", _cache_progress),
        ("teacher-head", "teacher_head", _head_progress),
        ("train-student", "train_student", _train_progress),
        ("evaluate", "evaluate", _evaluate_progress),
        ("export", "export", _export_progress),
    ):
        lines.append(f"{title}: {progress(cfg)}")
        lines += _submissions(cfg, stage)
    for folder in sorted((Path(cfg.paths.run_dir) / "slurm").glob("sweep-*")):
        name = folder.name.removeprefix("sweep-")
        points = [p for p in (Path(cfg.paths.run_dir) / "sweeps" / name).glob("*") if (p / "config.yaml").exists()]
        trained = sum((p / "eval_frames.json").exists() for p in points)
        lines.append(f"sweep {name}: {trained}/{len(points)} started points trained (compare: sweeps/{name}/compare.md)")
        lines += _submissions(cfg, folder.name)
    lines.append("`make verify` checks every shard, cache chunk and checkpoint, with the command that repairs each problem")
    return "\n".join(lines)
