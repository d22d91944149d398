"""Which video goes to which shard, and the done markers that say a shard is complete.

The assignment is a seeded permutation of each split's annotation list cut into runs of
`videos_per_shard`, so every array task computes the same plan on its own. A video's row in the
split (used by the teacher cache) is `shard_index * videos_per_shard + position`.

Done marker: `<shard>.manifest.json`, written after the tar is renamed into place. A shard counts
as done only if its manifest verifies: same videos and decode settings as the current plan and
the tar's sha256 as recorded. The split index `<split>.index.json` is written once all are done.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config
from pipeline.runtime import atomic
from pipeline.ssv2.annotations import VideoEntry, labels_path, load_labels, load_split
from pipeline.ssv2.records import shard_name

log = logging.getLogger(__name__)
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ShardSpec:
    """One shard to build: its split, index, videos (in row order) and first row."""

    split: str
    index: int
    videos: tuple[VideoEntry, ...]
    first_row: int

    @property
    def name(self) -> str:
        """The tar's file name."""
        return shard_name(self.split, self.index)


def plan_split(cfg: Config, split: str) -> list[ShardSpec]:
    """The deterministic shard assignment of one split."""
    labels_file = labels_path(cfg)
    entries = load_split(labels_file.with_name(f"{split}.json"), load_labels(labels_file))
    order = np.random.default_rng([cfg.shards.seed, _split_seed(split)]).permutation(len(entries))
    per = cfg.shards.videos_per_shard
    if per < 1:
        raise ValueError(f"shards.videos_per_shard must be >= 1, got {per}")
    return [
        ShardSpec(split, i, tuple(entries[j] for j in order[start : start + per]), start)
        for i, start in enumerate(range(0, len(entries), per))
    ]


def plan_all(cfg: Config) -> list[ShardSpec]:
    """Every shard of every configured split, in one flat list (array tasks stride over it)."""
    return [spec for split in cfg.data.splits for spec in plan_split(cfg, split)]


def _split_seed(split: str) -> int:
    return int.from_bytes(split.encode()[:8].ljust(8, b"\0"), "little")


def decode_settings(cfg: Config) -> dict[str, Any]:
    """The settings that change a shard's bytes: a change makes old shards stale."""
    s = cfg.shards
    return {"short_side": s.short_side, "jpeg_qscale": s.jpeg_qscale, "min_frames": s.min_frames}


def manifest_path(out_dir: Path, shard: str) -> Path:
    """Where the done marker of the shard named `shard` (e.g. train-000001.tar) lives."""
    return Path(out_dir) / f"{shard.removesuffix('.tar')}.manifest.json"


def read_index(out_dir: Path, split: str) -> dict[str, Any]:
    """A split's index; a clear error when the shards stage has not completed the split."""
    path = index_path(out_dir, split)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the shards of split {split!r} are not complete (run `make shards`)")
    return json.loads(path.read_text())


def index_path(out_dir: Path, split: str) -> Path:
    """Where a split's index lives."""
    return Path(out_dir) / f"{split}.index.json"


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest at `path`, or None when it is absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def why_not_done(out_dir: Path, spec: ShardSpec, cfg: Config, check_hash: bool = True) -> str | None:
    """None when the shard's manifest verifies against the plan and its tar; else the reason."""
    manifest = read_manifest(manifest_path(out_dir, spec.name))
    if manifest is None:
        return "no manifest"
    if manifest.get("version") != MANIFEST_VERSION or manifest.get("settings") != decode_settings(cfg):
        return "built with other settings"
    if manifest.get("planned_ids") != [v.id for v in spec.videos]:
        return "planned for other videos"
    tar = Path(out_dir) / spec.name
    if not tar.exists():
        return "tar missing"
    if tar.stat().st_size != manifest.get("bytes"):
        return "tar size differs from manifest"
    if check_hash and atomic.sha256_file(tar) != manifest.get("sha256"):
        return "tar sha256 differs from manifest"
    return None


def write_index_if_complete(out_dir: Path, cfg: Config, split: str, specs: list[ShardSpec]) -> bool:
    """Write the split index when every shard of `split` is done; returns whether it was written."""
    manifests = []
    for spec in specs:
        if why_not_done(out_dir, spec, cfg, check_hash=False) is not None:
            return False
        manifests.append(read_manifest(manifest_path(out_dir, spec.name)))
    shards = [
        {k: m[k] for k in ("name", "sha256", "bytes", "num_videos", "num_frames", "num_rejected", "first_row")} for m in manifests
    ]
    index = {
        "split": split,
        "videos_per_shard": cfg.shards.videos_per_shard,
        "num_rows": len(specs) * cfg.shards.videos_per_shard,
        "num_videos": sum(s["num_videos"] for s in shards),
        "num_frames": sum(s["num_frames"] for s in shards),
        "num_rejected": sum(s["num_rejected"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "settings": decode_settings(cfg),
        "shards": shards,
    }
    atomic.write_json(index_path(out_dir, split), index)
    return True


def row_labels(out_dir: Path, split: str) -> np.ndarray:
    """The label of every row of a split (-1 for rows without a video, and for the unlabelled test split)."""
    index = read_index(out_dir, split)
    labels = np.full(index["num_rows"], -1, dtype=np.int64)
    for shard in index["shards"]:
        manifest = read_manifest(manifest_path(out_dir, shard["name"]))
        if manifest is None:
            raise FileNotFoundError(f"{manifest_path(out_dir, shard['name'])} is missing or unreadable: run `make shards`")
        for video in manifest["videos"]:
            labels[video["row"]] = video.get("label", -1)
    return labels
