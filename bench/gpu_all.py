"""Every GPU figure of the performance goals in one command, as one table, plus the SSv2 projection.

    python -m bench.gpu_all [--out DIR] [--shards-videos-per-core-s 26.6] [--parts teacher online compiled ffn ddp]

Runs, each in its own process and each side of a ratio in the same run:
1. `bench.teacher_bench` (ViT-B-32, CPU decode in all but two cores): cache stage end to end vs forward only;
2. `bench.train_bench --compile`: compiled student step, synthetic input vs the real loader, both models, 8/16 frames;
3. `bench.train_bench --online`: cached teacher vs the teacher run in every step (eager student), step and epoch;
4. `bench.shift_bench --rows rn50-ffn tsm16 ffn`: the FFN TSM-R50 step (4/8/16 frames) against the
   16-frame step and against ResNet-50 over FFN's three batches, eager and compiled;
5. `bench.ddp_bench --real-loader` on 1 and 2 GPUs, when the machine has two (synthetic input and the trainer's loader).
Each part fits one 10-minute device call (bench/README.md gives their times); `--parts` into the
same `--out` runs them one by one, and the table is printed once teacher, online and compiled are there.
The shards stage needs ffmpeg, which GPU machines here lack: its per-core rate comes from
`make bench-shards` on a CPU machine and is passed in for the projection.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipeline.runtime.cpus import TEACHER_RESERVE, TRAIN_RESERVE, loader_workers

# SSv2 sizes: the shards and the teacher cache cover train + validation (data.splits); an epoch is train.
SSV2_TRAIN, SSV2_VALIDATION = 168_913, 24_777
TEACHER_FRAMES = 8


def run(module: str, out: Path, *args: str) -> dict | list:
    """Run `python -m module ... --json out` and return what it wrote."""
    cmd = [sys.executable, "-m", module, *args, "--json", str(out)]
    print(f"$ {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, text=True, capture_output=True)
    print(done.stdout[-4000:], flush=True)
    if done.returncode != 0:
        sys.exit(f"{module} failed:\n{done.stderr[-4000:]}")
    print(f"({time.perf_counter() - start:.0f} s)\n", flush=True)
    return json.loads(out.read_text())


def main() -> None:
    """Run every benchmark, then print the goals table and the projection."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="folder for each benchmark's JSON")
    parser.add_argument(
        "--shards-videos-per-core-s",
        type=float,
        default=26.6,
        help="the shards stage's videos/s per core with all cores busy (make bench-shards on a CPU machine)",
    )
    parser.add_argument(
        "--teacher-videos",
        type=int,
        default=96000,
        help="about what each of the two default array tasks computes (SSv2 is 194k videos)",
    )
    parser.add_argument("--train-videos", type=int, default=4096)
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["teacher", "online", "compiled", "ffn", "ddp"],
        help="run only these parts (each writes DIR/<part>.json; parts not run are read from DIR if there)",
    )
    parser.add_argument(
        "--batch-pool",
        nargs="+",
        default=["1", "0"],
        choices=["1", "0"],
        help="loaders with (1) and without (0) the page-locked batch pool; the first makes the goal rows",
    )
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_all_"))
    out.mkdir(parents=True, exist_ok=True)
    workers = {"teacher": str(loader_workers(-1, TEACHER_RESERVE)), "train": str(loader_workers(-1, TRAIN_RESERVE))}
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (a dry run: figures mean nothing here)"
    commands = {
        "teacher": (
            "bench.teacher_bench",
            "--decode",
            "cpu",
            "--videos",
            str(args.teacher_videos),
            "--workers",
            workers["teacher"],
            "--batch-pool",
            *args.batch_pool,
        ),
        "online": ("bench.train_bench", "--online", "--videos", str(args.train_videos), "--workers", workers["train"]),
        "compiled": (
            "bench.train_bench",
            "--compile",
            "--videos",
            str(args.train_videos),
            "--workers",
            workers["train"],
            "--batch-pool",
            *args.batch_pool,
        ),
        "ffn": ("bench.shift_bench", "--rows", "rn50-ffn", "tsm16", "ffn"),
        "ddp": ("bench.ddp_bench", "--gpus", "1", "2", "--real-loader", "--steps", "40", "--warmup", "14"),
    }
    if torch.cuda.device_count() < 2 and "ddp" in args.parts:
        args.parts.remove("ddp")
    got = {}
    for part, (module, *rest) in commands.items():
        path = out / f"{part}.json"
        got[part] = run(module, path, *rest) if part in args.parts else (json.loads(path.read_text()) if path.exists() else None)
    missing = [p for p in ("teacher", "online", "compiled") if got[p] is None]
    if missing:
        sys.exit(f"no figures for {', '.join(missing)}: run those parts (into the same --out) first")
    teacher, online, compiled, ddp = got["teacher"][0], got["online"], got["compiled"], got["ddp"]
    rows = goal_rows(teacher, compiled, online, ddp, got["teacher"][1:]) + ffn_rows(got["ffn"])
    print(
        f"\n{gpu} x{torch.cuda.device_count()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n"
    )
    print("| goal | figure | measured | target | met |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print("\n" + projection(teacher, compiled, args.shards_videos_per_core_s))


def goal_rows(teacher: dict, compiled: dict, online: dict, ddp: list | None, teacher_others: list = ()) -> list[str]:
    """One Markdown row per measured ratio (the other loaders' figures in brackets)."""
    rows = []
    ratio = teacher["end_to_end"] / teacher["forward"]
    others = "".join(
        f"; {_pool_name(t.get('batch_pool'), 'shard')}: {t['end_to_end'] / t['forward']:.0%}" for t in teacher_others
    )
    rows.append(
        f"| 1 | teacher cache end to end / forward only ({teacher['model']}, batch {teacher['batch']}, {teacher['precision']}, "
        f"{_pool_name(teacher.get('batch_pool'), 'shard')}) | {teacher['end_to_end']:.0f} / {teacher['forward']:.0f} frames/s "
        f"= {ratio:.0%} "
        f"(steady {teacher['steady'] / teacher['forward']:.0%}{others}) | >= 80% | {_met(ratio >= 0.8)} |"
    )
    eager = {(r["arch"], r["frames"]): r["cached"][0] for r in online["online"]}
    for r in compiled["loader"]:
        if r["arch"] == "mobilevit_xxs":
            speed = r["synthetic"] / eager[(r["arch"], r["frames"])]
            rows.append(
                f"| 2 | MobileViT-XXS {r['frames']} frames, batch {r['batch']}: compiled / eager step (synthetic input) "
                f"| {r['synthetic']:.0f} / {eager[(r['arch'], r['frames'])]:.0f} clips/s = {speed:.2f}x "
                f"| >= 1.5x | {_met(speed >= 1.5)} |"
            )
    for r in compiled["loader"]:
        share = r["real"] / r["synthetic"]
        others = "".join(f"; {k}: {v / r['synthetic']:.0%}" for k, v in r.get("other_loaders", {}).items())
        rows.append(
            f"| 3 | {r['arch']} {r['frames']} frames, batch {r['batch']}, compiled: real loader "
            f"({_pool_name(r.get('batch_pool'))}) / synthetic | {r['real']:.0f} / {r['synthetic']:.0f} clips/s "
            f"= {share:.1%}{others} | >= 90% | {_met(share >= 0.9)} |"
        )
    for r in online["online"]:
        (cs, cr, cm), (os_, or_, om) = r["cached"], r["online"]
        rows.append(
            f"| 4 | {r['arch']} {r['frames']} frames, batch {r['batch']}: cached vs online teacher "
            f"| step {cs / os_:.2f}x ({cs:.0f} vs {os_:.0f} clips/s), epoch {cr / or_:.2f}x ({cr:.0f} vs {or_:.0f}), "
            f"{om - cm:.2f} GiB less GPU memory ({cm:.2f} vs {om:.2f}) | report | - |"
        )
    for r in ddp or []:
        scale = r["many"] / r["one"]
        rows.append(
            f"| 5 | DDP {r['config']} per GPU, {r.get('input', 'synthetic')} input: {r['top']} GPUs / {r['base']} "
            f"| {r['many']:.0f} / {r['one']:.0f} clips/s "
            f"= {scale:.2f}x | >= 1.85x | {_met(scale >= 1.85)} |"
        )
    if ddp is None:
        rows.append("| 5 | DDP scaling | not run: this machine has one GPU (run this script on two) | >= 1.85x | - |")
    rows.append("| 6 | shards stage per core | CPU machine: `make bench-shards` (no ffmpeg here) | report | - |")
    return rows


def ffn_rows(shift: dict | None) -> list[str]:
    """The FFN TSM-R50 goals from `shift_bench --rows rn50-ffn tsm16 ffn --json` (compiled; eager in brackets)."""
    if shift is None:
        return ["| 7, 8 | FFN TSM-R50 step | not run: `--parts ffn` | <= 1.85x, >= 90% | - |"]
    rate = {(r["key"], r["compiled"]): r["images_per_s"] for r in shift["rows"]}
    images = {r["key"]: r["images"] for r in shift["rows"]}

    def step(compiled: bool) -> float:  # FFN step time / 16-frame step time
        return (images["ffn"] / rate[("ffn", compiled)]) / (images["tsm16"] / rate[("tsm16", compiled)])

    def share(compiled: bool) -> float:  # FFN images/s / ResNet-50 over the same three batches
        return rate[("ffn", compiled)] / rate[("rn50-ffn", compiled)]

    if ("ffn", True) not in rate:
        return ["| 7, 8 | FFN TSM-R50 step, compiled | the compiled FFN row did not finish (see the part's log) | - | - |"]
    eager = ("ffn", False) in rate
    return [
        f"| 7 | FFN TSM-R50 4/8/16 frames, compiled: step time / 16-frame step | {step(True):.2f}x"
        + (f" (eager {step(False):.2f}x)" if eager else "")
        + f" | <= 1.85x | {_met(step(True) <= 1.85)} |",
        f"| 8 | FFN TSM-R50 4/8/16 frames, compiled: images/s / ResNet-50 over FFN's three batches "
        f"| {rate[('ffn', True)]:.0f} / {rate[('rn50-ffn', True)]:.0f} = {share(True):.0%}"
        + (f" (eager {share(False):.0%})" if eager else "")
        + f" | >= 90% | {_met(share(True) >= 0.9)} |",
    ]


def _pool_name(pool, item: str = "batch") -> str:
    return "batch pool" if pool else f"a segment per {item}"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def projection(teacher: dict, compiled: dict, shards_per_core: float) -> str:
    """The whole SSv2 run from the measured rates, as a Markdown table."""
    lines = ["| SSv2 work | from | projection |", "| --- | --- | --- |"]
    node = 32 * shards_per_core
    videos = SSV2_TRAIN + SSV2_VALIDATION
    lines.append(
        f"| shards, {videos} videos | {shards_per_core:.1f} videos/s per core (synthetic clips) "
        f"| {videos / node / 3600:.2f} h on one 32-core node |"
    )
    frames = (SSV2_TRAIN + SSV2_VALIDATION) * TEACHER_FRAMES
    lines.append(
        f"| teacher cache, {frames} frames | {teacher['end_to_end']:.0f} frames/s end to end "
        f"| {frames / teacher['end_to_end'] / 60:.1f} GPU-minutes (+ ~1 min start-up per task) |"
    )
    for r in compiled["loader"]:
        rate = min(r["real"], r["synthetic"])
        lines.append(
            f"| one student epoch, {r['arch']} {r['frames']} frames, batch {r['batch']}/GPU | {rate:.0f} clips/s "
            f"(compiled, real loader) | {SSV2_TRAIN / rate / 3600:.2f} GPU-hours |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
