"""Teacher-head stage on a cache the size of SSv2's, end to end, beside a plain read of the same arrays.

    python -m bench.head_bench [--train 168913 --validation 24777] [--work DIR]

Builds shard indexes and manifests (no tars: the head stage reads only labels from them) and a Zarr
cache of that many videos with random per-frame features (8 x 512, float16) and random labels, laid
out exactly as the teacher-cache stage writes it, then times:
1. a plain read of what the stage reads (every split's `frame_features` and `valid`);
2. `pipeline.teacher.head_run.run` with the config's heads (default: linear and temporal, 5 folds,
   3 weight decays: 9 fits per head), end to end, reading included.
Random features make the accuracies meaningless; the point is the time.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from pipeline import config
from pipeline.cache.store import create_store, expected_attrs
from pipeline.runtime import atomic
from pipeline.runtime.progress import setup_logging
from pipeline.shards.plan import decode_settings, index_path, manifest_path
from pipeline.teacher import head_run

log = logging.getLogger("bench.head_bench")


def fake_shards(cfg: config.Config, split: str, videos: int, rng: np.random.Generator) -> None:
    """A split's index and manifests as the shards stage writes them, with random labels."""
    per, out = cfg.shards.videos_per_shard, cfg.paths.shards_dir
    shards = []
    for i, first in enumerate(range(0, videos, per)):
        n = min(per, videos - first)
        name = f"{split}-{i:06d}.tar"
        rows = [
            {"id": f"{split}{first + k}", "row": first + k, "label": int(rng.integers(174)), "num_frames": 40} for k in range(n)
        ]
        manifest = {"name": name, "planned_ids": [r["id"] for r in rows], "videos": rows, "rejected": []}
        atomic.write_json(manifest_path(out, name), manifest)
        shards.append(
            {
                "name": name,
                "sha256": f"{i:064x}",
                "bytes": 0,
                "num_videos": n,
                "num_frames": 40 * n,
                "num_rejected": 0,
                "first_row": first,
            }
        )
    index = {"split": split, "videos_per_shard": per, "num_rows": len(shards) * per, "num_videos": videos}
    index |= {"num_frames": 40 * videos, "num_rejected": 0, "bytes": 0, "settings": decode_settings(cfg), "shards": shards}
    atomic.write_json(index_path(out, split), index)


def fake_cache(cfg: config.Config, rng: np.random.Generator) -> None:
    """The teacher cache with random features, every row valid and every shard done."""
    create_store(cfg, expected_attrs(cfg), dim=512, num_classes=174)
    root = zarr.open_group(cfg.paths.teacher_cache, mode="r+")
    for split in cfg.data.splits:
        g = root[split]
        index = json.loads(index_path(cfg.paths.shards_dir, split).read_text())
        n, videos = index["num_rows"], index["num_videos"]
        valid = np.zeros(n, dtype=bool)
        valid[:videos] = True
        shape = g["frame_features"].shape  # [n, views, frames, 512]
        g["frame_features"][:] = rng.standard_normal(shape, dtype=np.float32).astype(np.float16)
        g["logits"][:] = rng.standard_normal(g["logits"].shape, dtype=np.float32)
        g["valid"][:] = valid
        g["done"][:] = True


def plain_read(cfg: config.Config) -> float:
    """Seconds to read every split's frame features and valid flags, as the stage does."""
    start = time.monotonic()
    root = zarr.open_group(cfg.paths.teacher_cache, mode="r")
    for split in cfg.data.splits:
        root[split]["valid"][:]
        root[split]["frame_features"][:]
    return time.monotonic() - start


def main() -> None:
    """Build the cache, time a plain read and the stage, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=168_913)
    parser.add_argument("--validation", type=int, default=24_777)
    parser.add_argument("--work", type=Path, default=None, help="folder for the fake shards and cache (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. teacher_head.folds=5")
    args = parser.parse_args()
    setup_logging()
    work = args.work or Path(tempfile.mkdtemp(prefix="head_bench-"))
    cfg = config.load("pipeline.yaml", [f"paths.run_dir={work}", "teacher.pretrained=random", *args.overrides])
    shutil.rmtree(cfg.paths.teacher_cache, ignore_errors=True)
    rng = np.random.default_rng(0)
    start = time.monotonic()
    for split, videos in (("train", args.train), ("validation", args.validation)):
        fake_shards(cfg, split, videos, rng)
    fake_cache(cfg, rng)
    log.info("built the fake shards and cache in %.1f s", time.monotonic() - start)
    read = plain_read(cfg)
    start = time.monotonic()
    summary = head_run.run(cfg)
    stage = time.monotonic() - start
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    size = f"{args.train} train + {args.validation} validation videos x {cfg.teacher.num_frames} x 512"
    print(f"\nteacher-head stage, {size}, {device}\n")
    print("| what | seconds |")
    print("| --- | --- |")
    print(f"| plain read of frame_features + valid (every split) | {read:.1f} |")
    print(f"| the stage end to end ({', '.join(summary.fitted)}; {cfg.teacher_head.folds} folds, "
          f"{len(cfg.teacher_head.weight_decays)} weight decays) | {stage:.1f} |")  # fmt: skip
    print(f"| of which reading the cache | {summary.read_seconds:.1f} |")
    for name in summary.fitted:
        print(f"| fitting {name} (all its fits, predictions, temperature) | {summary.records[name]['fit_seconds']:.1f} |")


if __name__ == "__main__":
    main()
