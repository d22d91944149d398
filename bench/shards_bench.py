"""Shards stage throughput versus its floor, a bare ffmpeg decode of the same files to `-f null`.

    python -m bench.shards_bench [--videos 96] [--workers 1 2] [--repeats 3]

Both sides run one ffmpeg process per video with `-threads 1`, `workers` at a time, over the same
synthetic SSv2-like set (VP9, 12 fps, 240p, 30-60 frames); the stage's time includes writing and
hashing the tars and the manifests. Rates are per core (divided by workers); best of `repeats`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline import config
from pipeline.runtime.tools import ffmpeg_exe
from pipeline.shards import build as shards
from pipeline.ssv2 import synthetic

REPO = Path(__file__).resolve().parents[1]


def bare_decode(videos: list[Path], workers: int) -> float:
    """Seconds to decode every video to `-f null`, `workers` at a time."""

    def one(path: Path) -> None:
        cmd = [
            ffmpeg_exe(),
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-threads",
            "1",
            "-i",
            str(path),
            "-an",
            "-f",
            "null",
            "-",
        ]
        subprocess.run(cmd, check=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, videos))
    return time.perf_counter() - start


def stage(root: Path, run_dir: Path, workers: int) -> tuple[float, shards.ShardsSummary]:
    """Seconds for the shards stage over the set from scratch, `workers` decodes at a time."""
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = config.load(
        REPO / "pipeline.yaml",
        [
            f"paths.ssv2_root={root}",
            f"paths.run_dir={run_dir}",
            f"shards.cpus_per_task={workers}",
            "shards.videos_per_shard=32",
            "data.splits=[train, validation, test]",
            "shards.progress_every_s=1000",
        ],
    )
    start = time.perf_counter()
    summary = shards.run(cfg)
    return time.perf_counter() - start, summary


def main() -> None:
    """Run both sides for each worker count and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=96)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="shards_bench_"))
    root = work / "ssv2"
    synthetic.generate(root, config.SyntheticConfig(num_videos=args.videos, min_frames=30, max_frames=60))
    videos = sorted((root / "20bn-something-something-v2").glob("*.webm"))
    rows = []
    for workers in args.workers:
        bare, staged, summary = [], [], None
        for _ in range(args.repeats):  # interleaved, so both sides see the same machine state
            bare.append(bare_decode(videos, workers))
            seconds, summary = stage(root, work / "run", workers)
            staged.append(seconds)
        frames = summary.frames
        b, s = min(bare), min(staged)
        rows.append(
            (
                workers,
                len(videos) / b / workers,
                frames / b / workers,
                len(videos) / s / workers,
                frames / s / workers,
                b / s,
                summary.bytes / summary.videos,
            )
        )
    print(
        f"\n{len(videos)} videos, {frames} frames ({frames / len(videos):.1f} per video), best of {args.repeats}, "
        f"{os.cpu_count()} cores\n"
    )
    print(
        "| workers | bare decode videos/s/core | bare frames/s/core | stage videos/s/core | stage frames/s/core | stage / bare "
        "| KiB per video |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for w, bv, bf, sv, sf, ratio, size in rows:
        print(f"| {w} | {bv:.1f} | {bf:.0f} | {sv:.1f} | {sf:.0f} | {ratio:.0%} | {size / 1024:.0f} |")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
