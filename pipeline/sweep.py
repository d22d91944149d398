"""A sweep file: training runs as points (a grid over keys and/or explicit override sets) on one base.

    name: loss_weights                 # points train in <run_dir>/sweeps/<name>/<point>/
    overrides: [train.epochs=30]       # every point (optional)
    grid:                              # every combination of these values
      loss.alpha: [0.25, 0.5, 1.0]
      loss.temperature: [1.0, 3.0]
    points:                            # and these override sets (optional)
      - {loss.gamma: 0.0}

Points share the run's shards. A point whose teacher settings (`teacher.*`, `teacher_head.*`, from
the sweep's overrides or its own) differ from the command's gets the teacher cache (and heads) of
those settings, `teacher_cache-<overrides>-<digest>.zarr`, shared by every point with the same
effective settings; `shards.*` and `paths.*` keys cannot vary.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline import config
from pipeline.config import Config, ConfigError

CACHE_KEYS = ("teacher.", "teacher_head.")  # settings that make another teacher cache


@dataclass(frozen=True)
class Point:
    """One training run of a sweep: its folder name and its overrides."""

    name: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file."""

    name: str
    overrides: tuple[str, ...]
    points: tuple[Point, ...]


def _value(v: Any) -> str:
    """A value as an override writes it (lists in YAML flow style)."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return str(v)


def slug(overrides: tuple[str, ...] | list[str]) -> str:
    """A folder name from overrides: 'loss.alpha=0.5__loss.temperature=3' (no path separators)."""
    text = "__".join(overrides) or "base"
    return re.sub(r"[^A-Za-z0-9._=,\[\]+-]", "-", text)


def load_sweep(path: Path) -> Sweep:
    """Read and check a sweep file (every point's config is loaded, so an unknown key fails here)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"sweep file {path}: {e.strerror}; name an existing file (SWEEP=sweeps/<name>.yaml)") from e
    unknown = set(raw) - {"name", "overrides", "grid", "points"}
    if unknown:
        raise ConfigError(f"sweep file {path}: unknown key(s) {', '.join(sorted(unknown))}; use name, overrides, grid, points")
    grid = raw.get("grid") or {}
    sets: list[tuple[str, ...]] = []
    if grid:
        keys = list(grid)
        for values in itertools.product(*(grid[k] if isinstance(grid[k], list) else [grid[k]] for k in keys)):
            sets.append(tuple(f"{k}={_value(v)}" for k, v in zip(keys, values)))
    for item in raw.get("points") or []:
        sets.append(tuple(f"{k}={_value(v)}" for k, v in item.items()))
    if not sets:
        raise ConfigError(f"sweep file {path}: no points; give a grid and/or a list of points")
    for s in sets:
        varied = [o for o in s if o.startswith("shards.") or o.startswith("paths.")]
        if varied:
            raise ConfigError(f"sweep file {path}: {varied[0]} cannot vary across points (they share the shards and run folder)")
    names = [slug(s) for s in sets]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep file {path}: two points have the same overrides ({names})")
    name = str(raw.get("name") or path.stem)
    overrides = tuple(str(o) for o in raw.get("overrides") or [])
    return Sweep(name, overrides, tuple(Point(n, s) for n, s in zip(names, sets)))


def point_overrides(sweep: Sweep, point: Point, *, cache: str = "") -> list[str]:
    """The sweep's and the point's overrides, with the point's own student folder and, when its
    teacher settings are not the command's, the cache named `cache`."""
    extra = [f"paths.student_name=sweeps/{sweep.name}/{point.name}"]
    if cache:
        extra.append(f"paths.cache_name={cache}")
    return [*sweep.overrides, *point.overrides, *extra]


def _teacher_settings(cfg: Config) -> str:
    as_dict = config.to_dict(cfg)
    return repr((as_dict["teacher"], as_dict["teacher_head"]))


def cache_name(sweep: Sweep, point: Point, settings: str) -> str:
    """The teacher overrides that make a point's cache, and a digest of its effective teacher settings
    (so other settings elsewhere never share the name)."""
    keys = [o for o in (*sweep.overrides, *point.overrides) if o.startswith(CACHE_KEYS)]
    return f"{slug(keys)}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"


def point_configs(files: list[str], overrides: list[str], sweep: Sweep) -> dict[str, Config]:
    """Each point's full config: the command's config files and overrides, then the sweep's and the
    point's. Points whose teacher settings equal the command's share the run's teacher cache; the
    others share one cache per distinct setting."""
    base = _teacher_settings(config.load(files, overrides))
    cfgs = {}
    for p in sweep.points:
        plain = config.load(files, [*overrides, *point_overrides(sweep, p)])
        settings = _teacher_settings(plain)
        if settings == base:
            cfgs[p.name] = plain
        else:
            cfgs[p.name] = config.load(files, [*overrides, *point_overrides(sweep, p, cache=cache_name(sweep, p, settings))])
    return cfgs
