"""`make verify`: every output of a run checked against what vouches for it, each problem with the
command that repairs it.

- shards: every planned shard's tar against its manifest (sha256), and each split's index;
- teacher cache: its fingerprint against the shards and the teacher settings, every done shard,
  and every chunk of every array read through its CRC32C;
- checkpoints: latest.pt and best.pt load (weights_only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import zarr

from pipeline.cache.store import CacheMismatchError, open_checked
from pipeline.config import Config
from pipeline.models import checkpoint
from pipeline.runtime.progress import Progress
from pipeline.shards.plan import index_path, manifest_path, plan_all, why_not_done

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """What is wrong, and the command that repairs it."""

    what: str
    repair: str


def check_shards(cfg: Config, args: str) -> list[Problem]:
    """Each planned shard's manifest and tar (sha256), and each split's index."""
    out, problems, rebuild = cfg.paths.shards_dir, [], f"python -m slurm.launch shards {args}"
    specs = plan_all(cfg)
    progress = Progress("verify shards", total=len(specs))
    for spec in specs:
        reason = why_not_done(out, spec, cfg, check_hash=True)
        if reason == "no manifest":
            problems.append(Problem(f"shard {spec.name}: not built", rebuild))
        elif reason is not None:
            manifest = manifest_path(out, spec.name)
            problems.append(Problem(f"shard {spec.name}: {reason}", f"rm {manifest} && {rebuild}"))
        progress.update()
    for split in cfg.data.splits:
        if not index_path(out, split).exists():
            problems.append(Problem(f"split {split}: no shard index (its shards are not all built)", rebuild))
    return problems


def check_cache(cfg: Config, args: str) -> list[Problem]:
    """The cache's fingerprint, its done shards, and every chunk's checksum."""
    compute = f"python -m slurm.launch teacher-cache {args}"
    if not cfg.paths.teacher_cache.exists():
        return [Problem(f"no teacher cache at {cfg.paths.teacher_cache}", compute)]
    try:
        root = open_checked(cfg)
    except CacheMismatchError as e:
        lines = str(e).splitlines()
        what = " ".join([lines[0], *(line.strip() for line in lines[1:] if line.strip().startswith("- "))])
        return [Problem(what, f"rm -r {cfg.paths.teacher_cache} && {compute}")]
    problems = []
    for split in cfg.data.splits:
        names = [name for name, _ in root.attrs["splits"][split]["shards"]]
        missing = [names[i] for i in np.flatnonzero(~root[split]["done"][:])]
        if missing:
            problems.append(Problem(f"cache {split}: {len(missing)} shard(s) not computed ({missing[0]}, ...)", compute))
        problems += _damaged_chunks(root[split], split, names, args)
    return problems


def _damaged_chunks(group: zarr.Group, split: str, names: list[str], args: str) -> list[Problem]:
    damaged: set[str] = set()
    arrays = [group[name] for name in group.array_keys()]
    progress = Progress(f"verify cache {split} chunks", total=len(names))
    for shard, name in enumerate(names):
        for array in arrays:
            per = array.chunks[0]  # one shard per chunk (the done marks: one per shard)
            try:
                array[shard * per : (shard + 1) * per]
            except ValueError as e:
                if "checksum" not in str(e):
                    raise
                damaged.add(name)
        progress.update()
    return [
        Problem(
            f"cache {split} shard {name}: a chunk fails its CRC32C checksum",
            f"python -m stages.teacher_cache --recompute {name} {args}",
        )
        for name in sorted(damaged)
    ]


def check_checkpoints(cfg: Config, args: str) -> list[Problem]:
    """latest.pt and best.pt, where they exist, load."""
    problems = []
    for name in ("latest.pt", "best.pt"):
        path = cfg.paths.student_dir / name
        try:
            checkpoint.load(path)
        except (checkpoint.CheckpointError, RuntimeError, EOFError) as e:
            repair = (
                f"mv {path} {path}.bad && python -m slurm.launch train-student {args}"
                if name == "latest.pt"
                else f"mv {path} {path}.bad"
            )
            problems.append(Problem(f"{path}: does not load ({str(e).splitlines()[0][:120]})", repair))
    return problems


def verify(cfg: Config, args: str = "") -> list[Problem]:
    """Every check in order; `args` (the run's --config and overrides) goes into the repair commands."""
    problems = check_shards(cfg, args)
    if not problems:  # a cache or a student built on broken shards is not worth checking yet
        problems += check_cache(cfg, args) + check_checkpoints(cfg, args)
    return problems
