"""The one typed config tree: `pipeline.yaml` sections mirror the dataclasses below.

Precedence: dotted CLI overrides > the YAML file > the defaults here. Unknown keys and wrong
types are errors that name the key. Runtime facts (rank, task id, job id) never live here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.runtime.errors import UserError


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the config tree."""


@dataclass
class PathsConfig:
    """Where the inputs are and where every stage writes."""

    ssv2_root: str = "data/ssv2"  # the SSv2 download: labels/ and 20bn-something-something-v2/
    run_dir: str = "runs/default"  # every stage writes below this folder
    student_name: str = "student"  # the student's folder under run_dir (a sweep gives each point its own)
    cache_name: str = ""  # "": teacher_cache.zarr; else teacher_cache-<name>.zarr (a sweep over teacher.* settings)

    @property
    def shards_dir(self) -> Path:
        """Stage 1 output, stage 2 and 3 input."""
        return Path(self.run_dir) / "shards"

    @property
    def teacher_cache(self) -> Path:
        """Stage 2 output (a Zarr store), stage 3 input."""
        return Path(self.run_dir) / f"teacher_cache{'-' * bool(self.cache_name)}{self.cache_name}.zarr"

    @property
    def teacher_heads_dir(self) -> Path:
        """Stage 2b output besides the logits in the cache: each fitted head's weights."""
        return Path(self.run_dir) / f"teacher_heads{'-' * bool(self.cache_name)}{self.cache_name}"

    @property
    def student_dir(self) -> Path:
        """Stage 3 output: checkpoints, metrics, evaluation tables."""
        return Path(self.run_dir) / self.student_name


@dataclass
class DataConfig:
    """Layout of the SSv2 download."""

    splits: list[str] = field(default_factory=lambda: ["train", "validation"])
    labels_subdir: str = "labels"  # labels.json, train.json, validation.json, test.json
    videos_subdir: str = "20bn-something-something-v2"  # <id>.webm


@dataclass
class ShardsConfig:
    """Stage 1: decode videos once into WebDataset tar shards."""

    videos_per_shard: int = 64  # big enough to stream, small enough to redo
    short_side: int = 256  # frames are scaled down so the short side is at most this, never up
    jpeg_qscale: int = 3  # ffmpeg MJPEG qscale, 2 (best) .. 31; 3 is visually lossless at 240p
    min_frames: int = 8  # shorter videos are rejected: they cannot fill 8 temporal segments
    cpus_per_task: int = 4  # videos decoded in parallel within one task (one ffmpeg each)
    seed: int = 0  # fixes the assignment of videos to shards
    decode_timeout_s: float = 120.0  # a decode that hangs longer is rejected, not waited on
    progress_every_s: float = 10.0


@dataclass
class TeacherConfig:
    """Stage 2: the frozen CLIP teacher run once over the shards into a Zarr store."""

    model: str = "ViT-B-32"  # an open_clip model name; "clip-tiny" is a small config for tests
    pretrained: str = "openai"  # an open_clip tag (needs internet), a local checkpoint file, or "random"
    num_frames: int = 8  # frames per video: segment centres, or with views an even subset of each view's frames
    prompts: list[str] = field(default_factory=lambda: ["a video of {}.", "a photo of a person {}.", "a video of a person {}."])
    batch_videos: int = 64  # views per forward (x num_frames frames); a shard reaches the GPU in parts of this many
    num_workers: int = -1  # loader processes (read, JPEG decode, crop); -1: the task's CPUs less two (runtime/cpus.py)
    writers: int = 2  # processes writing finished shards to Zarr
    device: str = "auto"  # auto: cuda, else mps, else cpu
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # autocast on CUDA
    gpu_decode_share: float = 0.0  # CUDA: this share of the shards is decoded by nvjpeg, the rest by the CPU workers (1: all)
    cuda_graphs: bool = True  # replay the image tower as one CUDA graph per batch (CUDA only)
    compile: bool = False  # CUDA: torch.compile the image tower (inside the CUDA graph when cuda_graphs)
    views: int = 1  # training views per video (frames, crop, flip) that the student replays; 1: the centre view only
    view_seed: int = 0  # draws the training views
    progress_every_s: float = 10.0


@dataclass
class TeacherHeadConfig:
    """Stage 2b: classifiers fitted on the cached features, the teachers a student can learn from."""

    heads: list[str] = field(default_factory=lambda: ["linear", "temporal"])  # zero_shot is always there
    folds: int = 5  # training logits come from a head fitted on the other folds (out of fold)
    seed: int = 0  # folds, held-out part, initialisation and batch order
    holdout: float = 0.1  # share of train held out to choose the weight decay (never validation)
    weight_decays: list[float] = field(default_factory=lambda: [1e-4, 1e-2, 1.0])  # the grid searched per head
    epochs: int = 30
    min_steps: int = 500  # small training sets: at least this many optimiser steps however few the epochs make
    batch_size: int = 8192  # large: a step is a few kernel launches whatever its size (docs/benchmarks.md)
    lr: float = 3e-3  # AdamW, cosine to zero
    temporal_width: int = 256  # the temporal head's token width
    temporal_layers: int = 1  # transformer layers over the ordered frames
    dropout: float = 0.1
    device: str = "auto"


@dataclass
class StudentConfig:
    """Stage 3's model."""

    arch: str = "tsm_r50"  # tsm_r50, mobilevit_xxs; tsm_tiny for tests and smoke runs
    pretrained: str = ""  # "" (random), a local state-dict file, or "imagenet" (the library's cache, else a download)
    image_size: int = 224
    num_frames: int = 16  # T segments per clip while training (the highest of train.frame_counts)
    feature_dim: int = 512  # the video feature distilled towards the teacher's
    dropout: float = 0.5
    dropout_at: Literal["clip", "frame"] = "clip"  # clip: after pooling the frames (the seeds'); frame: per frame (TSM)
    fc_init_std: float = 0.0  # > 0: classifier weights from N(0, std), bias 0 (TSM, mmaction2: 0.001); 0: PyTorch's
    temporal: Literal["attention", "attention_pos", "shift"] = "attention"  # mobilevit_xxs: how it sees time


@dataclass
class LossConfig:
    """alpha * MSE(normalised features) + beta * KL(T) * T^2 + gamma * CE (gamma_with_unlabelled * CE
    when the training set has unlabelled splits)."""

    mode: Literal["distill", "vanilla"] = "distill"  # vanilla: CE only, no teacher cache needed
    teacher_head: Literal["best", "zero_shot", "linear", "temporal"] = "best"  # best: highest validation top-1 fitted
    alpha: float = 0.5
    beta: float = 1.0
    # the label at full weight (the seeds': 0.1): a head weaker than labels alone cannot hold the student
    # down (docs/proxy_benchmark.md, safety table)
    gamma: float = 1.0
    # with unlabelled splits the teacher is the only signal for most clips, and the label at full weight
    # memorises the few labelled ones instead (docs/proxy_benchmark.md, unlabelled table)
    gamma_with_unlabelled: float = 0.1
    temperature: float = 3.0
    feature_reduction: Literal["mean", "sum"] = "mean"  # MSE over the feature's dimensions: mean (the seeds') or sum (D x)
    # all (the seeds'); correct: the label's CE replaces a target that misses it; label_prob: the KL times
    # the teacher's calibrated probability of the label
    teacher_gate: Literal["all", "correct", "label_prob"] = "all"
    frame_alpha: float = 0.0  # per-frame term: 1 - cosine of each projected student frame to its cached teacher frame
    # an unlabelled clip's teacher terms weighted by the head's calibrated top probability, or 1
    unlabelled_weight: Literal["confidence", "uniform"] = "uniform"
    # crossover: the teacher's terms fade out as the student's level (fade_window) comes within
    # fade_margin of the head's, and the label takes their place (docs/proxy_benchmark.md); none: always on
    fade: Literal["none", "crossover"] = "crossover"
    fade_margin: float = 0.05
    # the student's level the fade reads: its best mean of this many consecutive validations (1: its best
    # single validation, which a noisy curve carries above where the student is)
    fade_window: int = 1


@dataclass
class TrainConfig:
    """Stage 3's optimisation, data loading, checkpoints and evaluation."""

    epochs: int = 50
    batch_size: int = 8  # clips per GPU (per process)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01  # for lr_batch clips per step; the step's lr is lr x (world size x batch_size) / lr_batch
    lr_batch: int = 64  # the global batch `lr` is given for (TSM and mmaction2: 0.01 per 64 clips); 0: lr as given
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_norms_and_biases: bool = False  # false: no weight decay on norm weights and biases (TSM and mmaction2)
    lr_multipliers: bool = False  # TSM's policy: biases 2x lr; the new classifier and feature projection weights 5x, biases 10x
    warmup_epochs: float = 3.0  # linear warm-up of the lr from 0 (without it runs fell onto a plateau: docs/frame_flexible.md)
    schedule: Literal["cosine", "step"] = "cosine"  # cosine to 0, or step: x0.1 at each of lr_milestones
    lr_milestones: list[int] = field(default_factory=list)  # epochs, for schedule=step (mmaction2 SSv2: [25, 45])
    grad_clip: float = 1.0  # max gradient norm (the seeds' walkthrough: 1; TSM, FFN and mmaction2: 20)
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # autocast on CUDA; fp16 with a grad scaler
    device: str = "auto"
    num_workers: int = -1  # loader processes per rank; -1: the rank's CPUs less six (see runtime/cpus.py)
    shuffle_buffer: int = 256  # samples mixed across shards within a worker
    seed: int = 0
    flip: bool = False  # horizontal flip, always with left/right label swaps
    checkpoint_every_steps: int = 500  # latest.pt also at every epoch end
    log_every_steps: int = 50
    eval_frame_counts: list[int] = field(default_factory=lambda: [4, 8, 16])
    frame_counts: list[int] = field(default_factory=list)  # FFN: e.g. [4, 8, 16]; empty: student.num_frames alone
    ffn_lambda: float = 1.0  # FFN: weight of KL(highest count's prediction || each lower count's)
    max_steps: int = 0  # stop after this many steps in total (0: train all epochs)
    channels_last: bool = True  # CUDA: NHWC convolutions, faster for both students (docs/benchmarks.md)
    compile: bool = False  # CUDA: torch.compile the student (faster again; not yet validated under multi-GPU DDP)
    unlabelled_splits: list[str] = field(default_factory=list)  # splits in data.splits: their clips get the teacher's terms alone
    # unlabelled clips per labelled clip in each batch (batch_size x this, rounded, at least 1); auto: the
    # unlabelled videos per labelled one, so each is seen about once an epoch (at most 3; docs/training.md)
    unlabelled_ratio: float | Literal["auto"] = "auto"
    # BatchNorm statistics of a batch with unlabelled clips: shared (one batch) or separate (the labelled
    # clips normalised with their own, as with labels alone; pipeline/models/norm_groups.py)
    unlabelled_norm: Literal["shared", "separate"] = "separate"


@dataclass
class EvalConfig:
    """The evaluate stage: the published test protocol on a trained checkpoint (ssv2/multi_view.py)."""

    checkpoint: str = "best"  # best or latest (in the student folder), or a checkpoint file
    split: str = "validation"
    clips: int = 2  # clips per video: mmaction2's twice_sample (segment centres, then segment starts)
    crops: int = 3  # 3: mmaction2's ThreeCrop of the short side; 1: the centre crop
    image_size: int = 256  # the three crops' size (mmaction2: Resize short side 256, ThreeCrop 256)
    frame_counts: list[int] = field(default_factory=list)  # empty: train.eval_frame_counts and the trained counts
    batch_size: int = 4  # videos per step per rank; each is clips x crops clips


@dataclass
class ExportConfig:
    """`make export`: the trained student as ONNX and torch.export programs, checked and timed."""

    checkpoint: str = "best"  # best or latest (in the student folder), or a checkpoint file
    frame_counts: list[int] = field(default_factory=lambda: [4, 8, 16])  # exported and timed, beside the trained counts
    check_videos: int = 8  # validation clips each exported file is checked on against PyTorch
    tolerance: float = 1e-3  # largest allowed |logit difference| to PyTorch (float32, CPU)
    latency_runs: int = 20  # batch-1 runs timed per frame count and engine (median reported)


@dataclass
class SlurmStageConfig:
    """Resources of one stage's SLURM jobs."""

    partition: str = ""
    account: str = ""
    qos: str = ""
    time_min: int = 240
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1  # the training job runs one task per GPU
    cpus_per_task: int = 8
    mem_gb: int = 32
    constraint: str = ""
    extra: list[str] = field(default_factory=list)  # more sbatch options as key=value, e.g. ["exclusive=true"]
    array_tasks: int = 64  # array stages: at most this many tasks per submission, each a group of shards
    array_parallelism: int = 32  # array stages: tasks running at once


@dataclass
class SlurmConfig:
    """How stages are submitted: the executor and each stage's resources."""

    executor: Literal["auto", "slurm", "local"] = "auto"  # local: submitit's local executor; auto: slurm when sbatch is found
    resubmit: int = 2  # a waiting launch resubmits what failed tasks left undone, at most this many times
    shards: SlurmStageConfig = field(default_factory=lambda: SlurmStageConfig(cpus_per_task=32, mem_gb=64, array_tasks=128))
    teacher_cache: SlurmStageConfig = field(
        default_factory=lambda: SlurmStageConfig(gpus_per_node=1, cpus_per_task=16, mem_gb=64, array_tasks=2, array_parallelism=2)
    )
    teacher_head: SlurmStageConfig = field(
        default_factory=lambda: SlurmStageConfig(time_min=60, gpus_per_node=1, cpus_per_task=8, mem_gb=64)
    )
    train_student: SlurmStageConfig = field(
        default_factory=lambda: SlurmStageConfig(time_min=2880, gpus_per_node=8, tasks_per_node=8, cpus_per_task=12, mem_gb=400)
    )
    evaluate: SlurmStageConfig = field(
        default_factory=lambda: SlurmStageConfig(time_min=120, gpus_per_node=1, tasks_per_node=1, cpus_per_task=16, mem_gb=64)
    )


@dataclass
class SyntheticConfig:
    """The synthetic SSv2-format data sets: the toy (smoke run, tests) and the proxy benchmark."""

    preset: Literal["toy", "proxy"] = "toy"  # toy: time-reversed pairs; proxy: 28 SSv2 classes, hard (docs/proxy_benchmark.md)
    num_videos: int = 48  # toy: every split together
    seed: int = 0
    class_pairs: int = 2  # toy: time-reversed class pairs 1..3 (left/right, up/down, towards/away)
    min_frames: int = 24
    max_frames: int = 40
    train_per_class: int = 40  # proxy: labelled training videos per class
    validation_per_class: int = 15  # proxy
    test_per_class: int = 4  # proxy
    unlabelled_per_class: int = 0  # proxy: this many more per class in the test split (ids, no labels: SSv2's unlabelled split)


@dataclass
class TeacherPretrainConfig:
    """`make pretrain-teacher`: a small CLIP trained here with ClipLoss on the proxy set's teacher corpus."""

    model: str = "proxy-clip"  # an open_clip model config (pipeline/teacher/resources/proxy-clip.json)
    videos: int = 3000  # corpus videos (seeds no student video has)
    frames_per_video: int = 4  # frames taken from each, each with its own caption
    heldout_videos: int = 200  # rendered apart, for the held-out caption retrieval figure
    steps: int = 800
    batch_size: int = 256
    lr: float = 0.001
    weight_decay: float = 0.1
    seed: int = 0
    workers: int = 2  # processes rendering the corpus
    device: str = "auto"
    out: str = ""  # "": <run_dir>/teacher_pretrain/<model>.pt


@dataclass
class ExperimentalConfig:
    """Switches kept for benchmarks and debugging; the defaults are what the stages were measured with."""

    batch_pool: bool = True  # loader workers write into one page-locked pool (accel/batch_pool.py); false: a segment per batch
    pin_memory: bool = False  # batch_pool=false on CUDA: pin each teacher shard's frames in the loader's thread


@dataclass
class Config:
    """The whole pipeline's configuration."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    teacher_head: TeacherHeadConfig = field(default_factory=TeacherHeadConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    teacher_pretrain: TeacherPretrainConfig = field(default_factory=TeacherPretrainConfig)
    experimental: ExperimentalConfig = field(default_factory=ExperimentalConfig)

    @property
    def task_weight(self) -> float:
        """The label's weight in a distilled run's loss: `loss.gamma`, or `loss.gamma_with_unlabelled`
        when the run trains on unlabelled splits too."""
        return self.loss.gamma_with_unlabelled if self.train.unlabelled_splits else self.loss.gamma


def load(path: str | Path | list[str | Path] | None = None, overrides: list[str] | None = None) -> Config:
    """Load `path` (YAML; a list: each file over the ones before it) onto the defaults, then apply
    `key.sub=value` overrides."""
    raw: dict[str, Any] = {}
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else path
    for one in paths:
        _merge(raw, _read_yaml(Path(one)))
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
    cfg = _build(Config, raw, prefix="")
    _check_ranges(cfg)
    return cfg


def _check_ranges(cfg: Config) -> None:
    """Values a type cannot rule out, refused when the config loads rather than epochs into a run."""
    if cfg.loss.fade_window < 1:
        raise ConfigError(f"config key loss.fade_window: expected 1 or more validations, got {cfg.loss.fade_window}")


def _read_yaml(path: Path) -> dict[str, Any]:
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


def _merge(into: dict[str, Any], more: dict[str, Any]) -> None:
    """Deep-merge `more` into `into`: sections merge, values replace."""
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain data (what gets written next to every output)."""
    return dataclasses.asdict(cfg)


def dump(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    key, text = item.split("=", 1)
    # YAML gives '3' -> int, '0.1' -> float, '[a, b]' -> list, 'true' -> bool, like the file would.
    return key.strip(), yaml.safe_load(text) if text.strip() else ""


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<top>'}: expected a section, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (in {where}; known: {', '.join(sorted(names))})")
    kwargs = {}
    for name in names & set(raw):
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, raw[name], prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _check(hint, raw[name], f"{prefix}{name}")
    return cls(**kwargs)


def _check(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
            try:
                return _check(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key}: expected {hint}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise ConfigError(f"config key {key}: expected one of {', '.join(map(str, typing.get_args(hint)))}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"config key {key}: expected int, got {value!r}")
    if isinstance(value, hint):
        return value
    raise ConfigError(f"config key {key}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
