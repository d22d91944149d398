"""Student training-step throughput: synthetic in-memory clips versus the real loader, in one run.

    python -m bench.train_bench [--videos 4096] [--workers 14] [--configs mobilevit_xxs:8:64 ...] [--compile]
    python -m bench.train_bench --synthetic-only --compile --configs mobilevit_xxs+shift:16:64 mobilevit_xxs+shift:16:64:4,8
    python -m bench.train_bench --online      # the cached teacher against the teacher run in every step
    python -m bench.train_bench --levers      # eager, channels_last, torch.compile (synthetic input)

Both sides run the trainer's own set-up and step (`pipeline.student.train.build_state` and `train_step`:
bf16 autocast on CUDA, loss with the cached teacher outputs, fused SGD, clipping, schedule). Synthetic:
one uint8 batch kept on the device. Real: the training loader over JPEG shards (built without ffmpeg) and the teacher cache,
`--workers` processes decoding the sampled frames and cropping. Online: before each step the frozen
CLIP teacher (ViT-B-32, the cache stage's own encoder: bf16, CUDA graph) encodes the batch's frames
and its outputs replace the cached ones, which is what training without the cache costs.
A config is `arch[+temporal]:frames:batch[:lower,counts]` (`student.temporal` for MobileViT-XXS; FFN:
the lower counts); `--synthetic-only` times the step alone, without building shards and a cache.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from bench.jpeg_shards import build
from pipeline.accel.pool_loader import PoolKeeper
from pipeline.config import Config, load
from pipeline.models import input_normalizer
from pipeline.runtime.cpus import TRAIN_RESERVE, loader_workers
from pipeline.runtime.device import autocast_dtype, pick_device
from pipeline.ssv2.annotations import LABELS_FILE, class_names, flip_pairs, load_labels
from pipeline.ssv2.frames import channels_last_empty
from pipeline.student.data import (
    CacheSource,
    ClipBatch,
    ClipSource,
    ClipSpec,
    make_loader,
    split_shards,
    to_device,
)
from pipeline.student.train import build_state, train_step
from pipeline.teacher import run as teacher_run
from pipeline.teacher.clip import load_teacher

log = logging.getLogger(__name__)


def clips_per_s(step, batches, warmup: int, device) -> float:
    """Clips/s over the batches after `warmup` (synchronised at both ends)."""
    clips, start = 0, None
    for i, batch in enumerate(batches):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        step(batch)
        if i >= warmup:
            clips += batch.clips.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clips / (time.perf_counter() - start)


def synthetic_batch(device, *, clips: int, frames: int, size: int, counts: tuple[int, ...] = ()) -> ClipBatch:
    """A training batch of random pixels, labels and teacher outputs on the device, laid out like the
    loader's (channels last) so synthetic and real input run the same compiled graph."""

    def pixels(t: int) -> torch.Tensor:
        empty = channels_last_empty((clips, t, 3, size, size), partial(torch.empty, dtype=torch.uint8, device=device))
        return empty.copy_(torch.randint(0, 256, empty.shape, dtype=torch.uint8, device=device))

    return ClipBatch(
        pixels(frames),
        torch.randint(0, 174, (clips,), device=device),
        torch.randn(clips, 512, device=device),
        torch.randn(clips, 174, device=device),
        [],
        lower=tuple(pixels(t) for t in counts),
    )


def online_teacher(cfg, device, frames: int, batch: int):
    """batch -> batch with the teacher's outputs computed now from its frames (all T of them)."""
    tcfg = dataclasses.replace(
        cfg.teacher,
        model="ViT-B-32" if device.type == "cuda" else "clip-tiny",
        pretrained="random",
        batch_videos=batch,
        num_frames=frames,
    )
    with _quiet():
        teacher = load_teacher(tcfg, class_names(load_labels(LABELS_FILE)), device)
    encode = teacher_run.make_encoder(teacher, tcfg, device)
    resize = cfg.student.image_size != teacher.image_size

    def add(b: ClipBatch) -> ClipBatch:
        clips = b.clips
        if resize:  # CPU runs use small students; the teacher still sees its own input size
            clips = torch.nn.functional.interpolate(clips.flatten(0, 1).float(), size=teacher.image_size).to(torch.uint8)
            clips = clips.view(*b.clips.shape[:2], *clips.shape[1:])
        feature = encode(clips).mean(1)
        return dataclasses.replace(b, teacher_feature=feature, teacher_logits=teacher.logits(feature))

    return add


@contextlib.contextmanager
def _quiet():
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        yield
    finally:
        logging.getLogger().setLevel(level)


def measure(
    cfg,
    device,
    arch: str,
    frames: int,
    batch: int,
    workers: int,
    warmup: int,
    steps: int,
    with_loader: bool = True,
    online: bool = False,
    variants: dict | None = None,
    counts: tuple[int, ...] = (),
    temporal: str = "attention",
) -> tuple[float, float, float]:
    """(synthetic clips/s, real-loader clips/s, peak GPU memory GiB with synthetic input) for one model,
    frame count and batch size; with `online`, the teacher runs in every step instead of coming from the cache;
    `variants` {(workers, batch_pool): None} gets the real-loader clips/s of those loaders too (same compiled step).
    The table's real loader uses the batch pool as `cfg.experimental.batch_pool` says; `counts` (FFN
    training): every step also takes the clips at these lower frame counts."""
    variants = {} if variants is None else variants
    cfg.student.arch, cfg.student.num_frames, cfg.train.batch_size = arch, frames, batch
    cfg.student.temporal = temporal
    cfg.train.frame_counts = [*counts, frames] if counts else []
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    # the trainer's own set-up: same seed, optimiser and schedule; compiled when train.compile is set (CUDA)
    state = build_state(cfg, device, num_classes=174, total_steps=10_000)
    norm = input_normalizer(state.model, device)
    dtype = autocast_dtype(device, cfg.train.precision)
    add = online_teacher(cfg, device, frames, batch) if online else (lambda b: b)
    step = lambda b: train_step(state, add(b), cfg=cfg, norm=norm, dtype=dtype)  # noqa: E731
    size = cfg.student.image_size

    fake = synthetic_batch(device, clips=batch, frames=frames, size=size, counts=counts)
    synthetic = clips_per_s(step, [fake] * (warmup + steps), warmup, device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    if not with_loader:
        return synthetic, float("nan"), peak
    shards, _ = split_shards(cfg, "train")
    spec = ClipSpec(frames, size, batch, train=True, seed=0, shuffle_buffer=cfg.train.shuffle_buffer, lower_counts=tuple(counts))
    source = ClipSource(
        shards,
        spec,
        0,
        1,
        warmup + steps,
        CacheSource(cfg.paths.teacher_cache, "train"),
        flip_pairs(class_names(load_labels(LABELS_FILE))),
    )
    with contextlib.closing(PoolKeeper()) as keeper:  # one page-locked pool for every pooled loader below

        def batches(n: int, pool: bool):
            loader = make_loader(source, workers=n, device=device, keeper=keeper if pool else None)
            return (to_device(b, device) for b in loader)

        real = clips_per_s(step, batches(workers, cfg.experimental.batch_pool), warmup, device)
        for n, pool in variants:  # the same compiled step with other loaders
            variants[(n, pool)] = clips_per_s(step, batches(n, pool), warmup, device)
    return synthetic, real, peak


LOADER_MODES = {
    "segments": "a shared-memory segment per batch, left on the host",
    "segments+pin": "segments, pinned by the pin-memory thread, copied to the GPU (experimental.batch_pool=false)",
    "pool": "written into the page-locked pool, copied to the GPU (experimental.batch_pool=true)",
}


def loader_rate(cfg, frames: int, batch: int, workers: int, batches: int, mode: str = "segments") -> float:
    """Clips/s of the training loader alone over `batches` batches (after the first of each worker),
    in one of LOADER_MODES (the last two as in training on a GPU)."""
    shards, _ = split_shards(cfg, "train")
    spec = ClipSpec(frames, cfg.student.image_size, batch, train=True, seed=0, shuffle_buffer=cfg.train.shuffle_buffer)
    source = ClipSource(
        shards,
        spec,
        0,
        1,
        batches + workers,
        CacheSource(cfg.paths.teacher_cache, "train"),
        flip_pairs(class_names(load_labels(LABELS_FILE))),
    )
    device = pick_device("auto") if mode != "segments" else torch.device("cpu")
    with contextlib.closing(PoolKeeper()) as keeper:
        it = iter(make_loader(source, workers=workers, device=device, keeper=keeper if mode == "pool" else None))
        for _ in range(workers):  # worker start-up is not part of the rate
            next(it)
        start, clips = time.perf_counter(), 0
        for b in it:
            b = to_device(b, device)
            clips += b.clips.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return clips / (time.perf_counter() - start)


def _parse(config: str) -> tuple[str, int, int, tuple[int, ...], str]:
    """'arch[+temporal]:frames:batch[:c1,c2]' -> (arch, frames, batch, lower frame counts, student.temporal)."""
    model, frames, batch, *lower = config.split(":")
    arch, _, temporal = model.partition("+")
    counts = tuple(sorted(int(c) for c in lower[0].split(","))) if lower else ()
    return arch, int(frames), int(batch), counts, temporal or "attention"


def _name(arch: str, temporal: str) -> str:
    return arch if temporal == "attention" else f"{arch} ({temporal})"


def _setup(args: argparse.Namespace) -> Config:
    """The config to measure with: over freshly built JPEG shards and a teacher cache, or (synthetic only) bare."""
    overrides = [f"student.image_size={args.image_size}"]
    if args.synthetic_only:  # nothing to read: the step alone
        return load(Path(__file__).resolve().parents[1] / "pipeline.yaml", overrides)
    work = args.work or Path(tempfile.mkdtemp(prefix="train_bench_"))
    frames_max = max(_parse(c)[1] for c in args.configs)
    teacher = ["teacher.model=clip-tiny", "teacher.pretrained=random", f"teacher.num_workers={args.workers}"]
    extra = [*teacher, "shards.videos_per_shard=64", "teacher.progress_every_s=1000", *overrides]
    cfg = build(work / "ssv2", work / "run", args.videos, frames_max, frames_max, extra)
    teacher_run.run(cfg)
    return cfg


def main() -> None:
    """Build shards and a cache, then measure every configuration; print Markdown tables."""
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4096 if cuda else 96)
    parser.add_argument(
        "--workers",
        type=int,
        default=loader_workers(-1, TRAIN_RESERVE) if cuda else 2,
        help="loader processes (default on CUDA: the trainer's automatic count)",
    )
    default = ["mobilevit_xxs:8:64", "mobilevit_xxs:16:64", "tsm_r50:8:32", "tsm_r50:16:16"] if cuda else ["tsm_tiny:8:4"]
    parser.add_argument(
        "--configs", nargs="+", default=default, help="arch:frames:batch[:lower,counts] (FFN: e.g. tsm_r50:16:16:4,8)"
    )
    parser.add_argument("--image-size", type=int, default=224 if cuda else 64)
    parser.add_argument("--steps", type=int, default=60 if cuda else 6)
    parser.add_argument("--warmup", type=int, default=8 if cuda else 2)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile the student (train.compile=true)")
    parser.add_argument("--online", action="store_true", help="time the cached teacher against the teacher run in every step")
    parser.add_argument("--levers", action="store_true", help="time eager, channels_last and torch.compile (synthetic input)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--loader-only", action="store_true", help="time the training loader alone (no model), clips/s")
    parser.add_argument(
        "--synthetic-only", action="store_true", help="time the step on synthetic input alone (no shards, cache or loader)"
    )
    parser.add_argument(
        "--loader-workers",
        type=int,
        nargs="+",
        default=None,
        help="--loader-only: these worker counts; otherwise also time the real loader with these",
    )
    parser.add_argument(
        "--batch-pool",
        type=int,
        nargs="+",
        default=[1],
        choices=[0, 1],
        help="1: the loader writes into the page-locked pool (experimental.batch_pool, the trainer's default), "
        "0: a segment per batch; "
        "the first is the table's real loader, the others are timed beside it",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    log.setLevel(logging.INFO)
    cfg = _setup(args)
    device = pick_device("auto")
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    if args.loader_only:
        print(f"\nthe training loader alone, image {args.image_size}, {name}\n")
        print("| workers | batches | frames | batch | clips/s | frames/s |")
        print("| --- | --- | --- | --- | --- | --- |")
        for workers in args.loader_workers or [args.workers]:
            for mode in LOADER_MODES if cuda else ["segments", "pool"]:
                for config in args.configs:
                    _, frames, batch = config.split(":")
                    rate = loader_rate(cfg, int(frames), int(batch), workers, args.steps + args.warmup, mode)
                    print(f"| {workers} | {mode} | {frames} | {batch} | {rate:.1f} | {rate * int(frames):.0f} |")
        return
    configs = [_parse(c) for c in args.configs]
    cfg.train.compile = args.compile
    cfg.experimental.batch_pool = bool(args.batch_pool[0])
    warm = args.warmup + (10 if args.compile else 0)  # compilation happens in the first steps
    precision = cfg.train.precision if cuda else "fp32"
    print(
        f"\n{name}, {precision}, image {args.image_size}, {'compiled' if args.compile else 'eager'} student "
        f"(channels_last on CUDA), "
        f"distillation loss, SGD (fused on CUDA), {args.workers} loader workers "
        f"({'batch pool' if cfg.experimental.batch_pool else 'a segment per batch'}), {args.steps} timed steps after {warm}\n"
    )
    figures: dict = {"device": name, "compile": args.compile, "loader": [], "online": [], "levers": []}
    if not args.online:
        print(
            "| model | frames (FFN: every count) | batch | synthetic input clips/s | real loader clips/s | real / synthetic "
            "| step time against the plain step at the same frames and batch |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        plain: dict[tuple, float] = {}
        for arch, frames, batch, counts, temporal in configs:
            extra = dict.fromkeys(
                [(n, cfg.experimental.batch_pool) for n in args.loader_workers or []]
                + [(args.workers, bool(p)) for p in args.batch_pool[1:]]
            )
            start = time.perf_counter()
            synthetic, real, _ = measure(
                cfg,
                device,
                arch,
                frames,
                batch,
                args.workers,
                warm,
                args.steps,
                with_loader=not args.synthetic_only,
                variants=extra,
                counts=counts,
                temporal=temporal,
            )
            log.info("%s: %.0f s (compilation included)", _name(arch, temporal), time.perf_counter() - start)
            if not counts:
                plain[(arch, temporal, frames, batch)] = synthetic
            base = plain.get((arch, temporal, frames, batch))
            cost = f"{base / synthetic:.2f}x" if counts and base else ""
            others = {f"{n} workers, {'pool' if p else 'segments'}": r for (n, p), r in extra.items()}
            figures["loader"].append(
                dict(
                    arch=arch,
                    temporal=temporal,
                    frames=frames,
                    lower_counts=list(counts),
                    batch=batch,
                    synthetic=synthetic,
                    real=real,
                    batch_pool=cfg.experimental.batch_pool,
                    other_loaders=others,
                )
            )
            others = "".join(f" ({k}: {r:.1f}, {r / synthetic:.0%})" for k, r in others.items())
            shown = "/".join(str(c) for c in (*counts, frames))
            loader = f"{real:.1f} | {real / synthetic:.0%}{others}" if not args.synthetic_only else "- | -"
            print(f"| {_name(arch, temporal)} | {shown} | {batch} | {synthetic:.1f} | {loader} | {cost} |", flush=True)
    else:
        print(
            "| model | frames | batch | cached teacher, synthetic input | online teacher, synthetic input | step speed-up "
            "| cached, real loader | online, real loader | epoch speed-up | peak GPU memory cached / online (GiB) |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for arch, frames, batch, _, temporal in configs:
            cached = measure(cfg, device, arch, frames, batch, args.workers, warm, args.steps, temporal=temporal)
            online = measure(cfg, device, arch, frames, batch, args.workers, warm, args.steps, online=True, temporal=temporal)
            figures["online"].append(dict(arch=arch, frames=frames, batch=batch, cached=cached, online=online))
            print(
                f"| {arch} | {frames} | {batch} | {cached[0]:.1f} | {online[0]:.1f} | {cached[0] / online[0]:.2f}x "
                f"| {cached[1]:.1f} "
                f"| {online[1]:.1f} | {cached[1] / online[1]:.2f}x | {cached[2]:.2f} / {online[2]:.2f} |"
            )
    if args.levers:
        print("\n| model | frames | batch | eager | channels_last | channels_last + compile | best / eager |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for arch, frames, batch, _, temporal in configs:
            rates = []
            for channels_last, compiled in ((False, False), (True, False), (True, True)):
                cfg.train.channels_last, cfg.train.compile = channels_last, compiled
                w = args.warmup + (10 if compiled else 0)
                lone = dict(with_loader=False, temporal=temporal)
                rates.append(measure(cfg, device, arch, frames, batch, args.workers, w, args.steps, **lone)[0])
            figures["levers"].append(
                dict(arch=arch, frames=frames, batch=batch, eager=rates[0], channels_last=rates[1], compiled=rates[2])
            )
            print(
                f"| {arch} | {frames} | {batch} | {rates[0]:.1f} | {rates[1]:.1f} | {rates[2]:.1f} "
                f"| {max(rates) / rates[0]:.2f}x |"
            )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
