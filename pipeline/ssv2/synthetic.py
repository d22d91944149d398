"""Synthetic SSv2-format data sets: the toy (`synthetic.preset: toy`) and the proxy benchmark (`proxy`).

The toy is tiny and its classes can only be told apart by temporal order; every student solves it.
The proxy preset (pipeline/ssv2/proxy.py) is the hard one the distillation experiments run on.

Classes come in time-reversed pairs (left->right / right->left, up / down, towards / away). A video
of one class played backwards is a video of its twin, and every random choice (background, object,
where the path lies) is drawn independently of the class, so the two twins have the same
distribution of frames: a model that ignores frame order is at chance between them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import SyntheticConfig
from pipeline.runtime.tools import ffmpeg_exe
from pipeline.ssv2 import proxy
from pipeline.ssv2.annotations import LABELS_FILE, load_labels

log = logging.getLogger(__name__)

FPS = 12
HEIGHT = 240
# (forward class, backward class, motion): the real SSv2 class names.
PAIRS = [
    ("Pushing something from left to right", "Pushing something from right to left", "horizontal"),
    ("Moving something up", "Moving something down", "vertical"),
    ("Moving something towards the camera", "Moving something away from the camera", "depth"),
]
SPLIT_FRACTIONS = {"train": 0.65, "validation": 0.25, "test": 0.10}


@dataclass(frozen=True)
class SyntheticVideo:
    """One generated video: its id, class name, split and the seed that draws it."""

    id: str
    template: str
    split: str
    seed: int
    motion: str  # the toy's path; "proxy" for the proxy preset
    forward: bool


def plan(cfg: SyntheticConfig) -> list[SyntheticVideo]:
    """Which video gets which class and split: balanced classes, deterministic from the seed."""
    if cfg.preset == "proxy":
        return plan_proxy(cfg)
    if not 1 <= cfg.class_pairs <= len(PAIRS):
        raise ValueError(f"synthetic.class_pairs must be 1..{len(PAIRS)}, got {cfg.class_pairs}")
    rng = np.random.default_rng(cfg.seed)
    classes = [(name, motion, fwd) for a, b, motion in PAIRS[: cfg.class_pairs] for name, fwd in ((a, True), (b, False))]
    order = rng.permutation(cfg.num_videos)
    blocks = -(-cfg.num_videos // len(classes))
    videos = []
    for rank, i in enumerate(order):
        name, motion, fwd = classes[rank % len(classes)]
        split = _split_of_block(rank // len(classes), blocks)
        videos.append(SyntheticVideo(str(100000 + int(i)), name, split, int(rng.integers(2**31)), motion, fwd))
    return sorted(videos, key=lambda v: v.id)


def plan_proxy(cfg: SyntheticConfig) -> list[SyntheticVideo]:
    """The proxy preset: `<split>_per_class` videos of every class per split.

    A video's seed comes from (seed, split, class, index) alone, so the validation set is the same
    whatever the training count, and 10 training videos per class are the first 10 of 40 (label
    scarcity compares nested sets).
    """
    test = cfg.test_per_class + cfg.unlabelled_per_class  # the test split has no labels: unlabelled videos go there
    per_split = {"train": cfg.train_per_class, "validation": cfg.validation_per_class, "test": test}
    videos = []
    for s, (split, n) in enumerate(per_split.items()):
        for c, name in enumerate(proxy.TEMPLATES):
            for i in range(n):
                seed = int(np.random.default_rng([cfg.seed, s, c, i]).integers(2**31))
                videos.append(SyntheticVideo(f"{s + 1}{c:02d}{i:04d}", name, split, seed, "proxy", True))
    return sorted(videos, key=lambda v: v.id)


def _split_of_block(block: int, blocks: int) -> str:
    # A block holds one video of every class, so each split stays class-balanced.
    edge = 0.0
    for split, frac in SPLIT_FRACTIONS.items():
        edge += frac * blocks
        if block < round(edge):
            return split
    return "train"


def render(video: SyntheticVideo, min_frames: int, max_frames: int) -> np.ndarray:
    """The RGB frames [T, H, W, 3] of one video."""
    if video.motion == "proxy":
        return proxy.render_scene(proxy.scene(video.template, video.seed, min_frames, max_frames))
    rng = np.random.default_rng(video.seed)
    t = int(rng.integers(min_frames, max_frames + 1))
    w = int(rng.integers(300, 428))
    background = _texture(rng, HEIGHT, w)
    color = np.array([255, int(rng.integers(0, 120)), 0], dtype=np.uint8)[rng.permutation(3)]
    size = int(rng.integers(28, 56))
    path = _path(rng, video.motion, t, w, size)
    if not video.forward:
        path = path[::-1]
    frames = np.repeat(background[None], t, axis=0)
    for k, (cx, cy, s) in enumerate(path):
        x0, y0 = int(cx - s / 2), int(cy - s / 2)
        frames[k, max(y0, 0) : y0 + int(s), max(x0, 0) : x0 + int(s)] = color
    return frames


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # A muted texture, so the saturated object stands out but a blank frame is no shortcut either.
    gray = rng.integers(70, 150, size=(h // 20 + 1, w // 20 + 1, 1))
    tint = rng.integers(-15, 16, size=(1, 1, 3))
    coarse = np.clip(gray + tint, 0, 255).astype(np.uint8)
    return np.kron(coarse, np.ones((20, 20, 1), dtype=np.uint8))[:h, :w]


def _path(rng: np.random.Generator, motion: str, t: int, w: int, size: int) -> np.ndarray:
    """[T, 3] (cx, cy, side) for the forward direction of `motion`."""
    steps = np.linspace(0.0, 1.0, t)
    margin = size // 2 + 4
    if motion == "horizontal":
        # Within the centred square, so the centre crop a model is evaluated on sees the whole path.
        cy = rng.uniform(margin, HEIGHT - margin)
        length = 0.55 * HEIGHT
        left = (w - HEIGHT) / 2
        x0 = rng.uniform(left + margin, left + HEIGHT - margin - length)
        return np.stack([x0 + length * steps, np.full(t, cy), np.full(t, size)], axis=1)
    if motion == "vertical":
        cx = rng.uniform((w - HEIGHT) / 2 + margin, (w + HEIGHT) / 2 - margin)
        length = 0.55 * HEIGHT
        y_bottom = rng.uniform(margin + length, HEIGHT - margin)
        return np.stack([np.full(t, cx), y_bottom - length * steps, np.full(t, size)], axis=1)
    cx, cy = rng.uniform(0.35 * w, 0.65 * w), rng.uniform(0.35 * HEIGHT, 0.65 * HEIGHT)
    sides = size * 0.6 + size * 1.4 * steps  # towards the camera: the object grows
    return np.stack([np.full(t, cx), np.full(t, cy), sides], axis=1)


def bracketed(template: str) -> str:
    """The annotation-file form of a class name, as in the real download."""
    return template.replace("something", "[something]").replace("Something", "[Something]")


def generate(root: Path, cfg: SyntheticConfig, workers: int | None = None, reuse: Path | None = None) -> list[SyntheticVideo]:
    """Write the data set under `root` in the real download's layout; returns what was written.

    A video already there is kept (each is written under a temporary name, then renamed, so a killed
    run leaves no truncated one); `reuse`: another synthetic set of the same seed whose videos of
    the same id are linked instead of rendered (the proxy preset's nested training sets).
    """
    root = Path(root)
    video_dir = root / "20bn-something-something-v2"
    video_dir.mkdir(parents=True, exist_ok=True)
    labels = load_labels(LABELS_FILE)
    videos = plan(cfg)
    for v in videos:
        assert v.template in labels, v.template

    def write(v: SyntheticVideo) -> None:
        path = video_dir / f"{v.id}.webm"
        if path.exists():
            return
        other = None if reuse is None else Path(reuse) / "20bn-something-something-v2" / path.name
        if other is not None and other.exists():
            os.link(other, path)
            return
        tmp = path.with_name(f".{path.stem}.tmp.webm")
        encode_vp9(tmp, render(v, cfg.min_frames, cfg.max_frames), FPS)
        os.replace(tmp, path)

    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        list(pool.map(write, videos))
    write_annotations(root, videos, cfg)
    classes = len({v.template for v in videos})
    log.info("synthetic SSv2 (%s): %d videos (%d classes) under %s", cfg.preset, len(videos), classes, root)
    return videos


def write_annotations(root: Path, videos: list[SyntheticVideo], cfg: SyntheticConfig | None = None) -> None:
    """labels/labels.json and one annotation list per split, as in the real download."""
    labels_dir = Path(root) / "labels"
    labels_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(LABELS_FILE, labels_dir / "labels.json")
    for split in SPLIT_FRACTIONS:
        items = [v for v in videos if v.split == split]
        if split == "test":
            records = [{"id": v.id} for v in items]
        else:
            records = [_record(v, cfg) for v in items]
        (labels_dir / f"{split}.json").write_text(json.dumps(records, indent=1))


def _record(v: SyntheticVideo, cfg: SyntheticConfig | None) -> dict:
    names = ["a block"]
    if v.motion == "proxy":
        names = proxy.placeholders(proxy.scene(v.template, v.seed, cfg.min_frames, cfg.max_frames), v.template)
    text = bracketed(v.template)
    for name in names:
        text = text.replace("[something]", name, 1).replace("[Something]", name.capitalize(), 1)
    return {"id": v.id, "label": text.lower(), "template": bracketed(v.template), "placeholders": names}


def encode_vp9(path: Path, frames: np.ndarray, fps: float, audio: bool = False) -> None:
    """Write uint8 RGB frames [T, H, W, 3] as a VP9 .webm (for synthetic data and tests)."""
    import ffmpeg  # ffmpeg-python: only here, so machines without it (GPU boxes) import this module

    t, h, w, _ = frames.shape
    video = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", r=fps)
    streams = [video]
    kwargs = dict(vcodec="libvpx-vp9", deadline="realtime", **{"cpu-used": 8}, crf=32, pix_fmt="yuv420p", threads=1)
    kwargs["b:v"] = 0
    if audio:
        streams.append(ffmpeg.input(f"sine=frequency=440:duration={t / fps}", format="lavfi"))
        kwargs.update(acodec="libopus")
    cmd = ffmpeg.output(*streams, str(path), **kwargs).global_args("-hide_banner", "-loglevel", "error")
    cmd = cmd.overwrite_output().compile(cmd=ffmpeg_exe())
    proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not encode {path}: {proc.stderr.decode(errors='replace')[-500:]}")
