"""The teacher cache: a Zarr store with one group per split, laid out shard by shard.

Row r of a split belongs to shard r // videos_per_shard, and every array is chunked so that one
shard's rows are exactly one chunk: array tasks working on different shards never share a chunk.
`done[s]` (its own chunk per shard) is set only after shard s's rows are written.

    <split>/features        [N, V, D]     float32  per view, the mean over frames of the per-frame embeddings
    <split>/logits          [N, V, C]     float32  per view, zero-shot logits (scale * cosine to class prompts)
    <split>/frame_features  [N, V, F, D]  float16  per view, per-frame embeddings
    <split>/ids             [N]           str      planned video id of every row ("" past the end)
    <split>/valid           [N]           bool     the row holds a video's outputs
    <split>/done            [S]           bool     shard s is complete
    train/view_frames       [N, V, T]     int32    with teacher.views > 1: each view's frames (the student's T)
    train/view_box          [N, V, 4]     int32    ... its crop box (top, left, height, width) in stored pixels
    train/view_flip         [N, V]        bool     ... whether it is flipped

V is `teacher.views` for the splits students train on (train and `train.unlabelled_splits`, which
hold the view arrays too) and 1 (the centre view) for every other split and for views=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from pipeline.config import Config
from pipeline.runtime.errors import UserError
from pipeline.shards.plan import manifest_path, read_index, read_manifest
from pipeline.ssv2 import views as V

FORMAT_VERSION = 3  # 2: a view axis on every output array; 3: every chunk checksummed (CRC32C)
# zarr's default compression, then a CRC32C of the compressed chunk: a damaged chunk fails on read
CHECKED = (ZstdCodec(level=0), Crc32cCodec())


class CacheCorruptError(UserError, RuntimeError):
    """A cache chunk whose checksum fails: the message names the shard and the command that recomputes it."""


def forget_shards(root: zarr.Group, names: list[str]) -> list[str]:
    """Clear the done marks of the named shards (any split), so the next run recomputes them; returns
    the names found. A name that is in no split is an error that lists what exists."""
    found = []
    for split, fp in root.attrs["splits"].items():
        for position, (name, _) in enumerate(fp["shards"]):
            if name in names:
                root[split]["done"][position] = False
                found.append(name)
    missing = sorted(set(names) - set(found))
    if missing:
        raise CacheMismatchError(f"--recompute {' '.join(missing)}: no such shard in the cache (names look like train-000003)")
    return found


class CacheMismatchError(UserError, RuntimeError):
    """The cache was built from other shards or another teacher; the message says what differs."""


def teacher_fingerprint(cfg: Config) -> dict[str, Any]:
    """The teacher settings a consumer can check without loading the teacher, its training views included."""
    t = cfg.teacher
    return {
        "model": t.model,
        "pretrained": t.pretrained,
        "num_frames": t.num_frames,
        "prompts": list(t.prompts),
        "preprocess": "crop box (centred square, or the view's), bicubic antialiased resize, the model's mean/std",
        "views": views_fingerprint(cfg),
    }


def views_fingerprint(cfg: Config) -> dict[str, Any]:
    """What the training views were drawn with; training refuses a cache whose views differ."""
    if cfg.teacher.views == 1:
        return {"count": 1, "view": "centre"}
    out = {
        "count": cfg.teacher.views,
        "seed": cfg.teacher.view_seed,
        "clip_frames": cfg.student.num_frames,
        "flip": cfg.train.flip,
        "sampler": V.SAMPLER,
    }
    if cfg.train.unlabelled_splits:  # only then, so a cache built before unlabelled training still matches
        out["splits"] = list(training_splits(cfg))
    return out


def training_splits(cfg: Config) -> tuple[str, ...]:
    """The splits students train on: train and `train.unlabelled_splits` (they get the training views)."""
    return ("train", *(s for s in cfg.train.unlabelled_splits if s != "train"))


def split_views(cfg: Config, split: str) -> int:
    """Views per video stored for `split`: teacher.views for the splits students train on, 1 elsewhere."""
    return cfg.teacher.views if split in training_splits(cfg) else 1


def check_views(cfg: Config) -> None:
    """Refuse view settings that cannot be built."""
    if cfg.teacher.views < 1:
        raise ValueError(f"teacher.views={cfg.teacher.views}: at least 1 (1 is the centre view alone)")
    if cfg.teacher.views > 1 and cfg.teacher.num_frames > cfg.student.num_frames:
        raise ValueError(
            f"teacher.num_frames={cfg.teacher.num_frames} exceeds student.num_frames={cfg.student.num_frames}: with "
            "teacher.views > 1 the teacher encodes a subset of each view's frames; lower teacher.num_frames"
        )


def shards_fingerprint(cfg: Config, split: str) -> dict[str, Any]:
    """What a split's cache rows were computed from: the shard index (names, sha256, rows)."""
    index = read_index(cfg.paths.shards_dir, split)
    return {
        "videos_per_shard": index["videos_per_shard"],
        "num_rows": index["num_rows"],
        "settings": index["settings"],
        "shards": [[s["name"], s["sha256"]] for s in index["shards"]],
    }


def expected_attrs(cfg: Config) -> dict[str, Any]:
    """The store attributes that must match for the cache to be trusted."""
    splits = {split: shards_fingerprint(cfg, split) for split in cfg.data.splits}
    return {"format_version": FORMAT_VERSION, "teacher": teacher_fingerprint(cfg), "splits": splits}


def digest(obj: Any) -> str:
    """sha256 of canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def create_store(cfg: Config, attrs: dict[str, Any], *, dim: int, num_classes: int, path: Path | None = None) -> None:
    """Create the empty store at `path` (default `paths.teacher_cache`) atomically: built under a temporary
    name, renamed into place."""
    path = Path(path or cfg.paths.teacher_cache)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    root = zarr.open_group(tmp, mode="w")
    frames = cfg.teacher.num_frames
    for split, fp in attrs["splits"].items():
        n, per, k = fp["num_rows"], fp["videos_per_shard"], split_views(cfg, split)
        g = root.create_group(split)
        arrays = {
            "features": ((k, dim), "float32"),
            "logits": ((k, num_classes), "float32"),
            "frame_features": ((k, frames, dim), "float16"),
        }
        if k > 1:
            arrays |= {
                "view_frames": ((k, cfg.student.num_frames), "int32"),
                "view_box": ((k, 4), "int32"),
                "view_flip": ((k,), "bool"),
            }
        for name, (shape, dtype) in arrays.items():
            fill = False if dtype == "bool" else 0
            g.create_array(name, shape=(n, *shape), chunks=(per, *shape), dtype=dtype, fill_value=fill, compressors=CHECKED)
        g.create_array("ids", shape=(n,), chunks=(per,), dtype=str, fill_value="", compressors=CHECKED)
        g.create_array("valid", shape=(n,), chunks=(per,), dtype=bool, fill_value=False, compressors=CHECKED)
        g.create_array("done", shape=(len(fp["shards"]),), chunks=(1,), dtype=bool, fill_value=False, compressors=CHECKED)
    root.attrs.update({**attrs, "fingerprint": digest(attrs)})
    try:
        os.rename(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another task created it first: theirs is the same
        if not path.exists():
            raise


def differences(found: dict[str, Any], expected: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two attribute trees."""
    out = []
    for key in sorted(set(found) | set(expected)):
        a, b = found.get(key, "<absent>"), expected.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            if key == "shards":
                changed = [x[0] for x, y in zip(a, b) if x != y] + (
                    [f"{abs(len(a) - len(b))} more/fewer"] if len(a) != len(b) else []
                )
                out.append(f"{prefix}shards differ ({', '.join(changed[:5])}{'...' if len(changed) > 5 else ''})")
            else:
                out.append(f"{prefix}{key}: cache has {a!r}, config/shards give {b!r}")
    return out


def open_checked(cfg: Config, mode: str = "r") -> zarr.Group:
    """Open the cache, refusing it when it was built from other shards or another teacher."""
    path = cfg.paths.teacher_cache
    if not path.exists():
        raise CacheMismatchError(f"no teacher cache at {path}: run `make teacher-cache` first")
    root = zarr.open_group(path, mode=mode)
    found = dict(root.attrs)
    expected = expected_attrs(cfg)
    found_core = {k: found.get(k) for k in expected}
    # A split the consumer does not ask for may differ; only the configured ones are checked.
    found_core["splits"] = {s: (found.get("splits") or {}).get(s, "<absent>") for s in expected["splits"]}
    diffs = differences(found_core, expected)
    if diffs:
        raise CacheMismatchError(
            f"teacher cache {path} does not match the current shards/config:\n  - "
            + "\n  - ".join(diffs)
            + f"\nRebuild it: delete {path} and run `make teacher-cache` (or point paths.run_dir elsewhere)."
        )
    return root


@dataclass
class ShardRows:
    """The cached teacher outputs of one shard's rows (one chunk of each array)."""

    first_row: int
    features: np.ndarray  # [per, V, D]
    logits: np.ndarray  # [per, V, C]
    valid: np.ndarray
    ids: np.ndarray
    views: dict[str, np.ndarray]  # view_frames, view_box, view_flip when the split has training views
    frames: np.ndarray | None = None  # [per, V, F, D] per-frame features, when the reader was asked for them

    def check(self, row: int, video_id: str) -> int:
        """`row`'s position in the chunk; refuses invalid rows and rows of another video."""
        i = row - self.first_row
        if not self.valid[i]:
            raise KeyError(f"teacher cache row {row} (video {video_id}) is not valid: the video was rejected or never cached")
        if self.ids[i] != video_id:
            raise CacheMismatchError(f"teacher cache row {row} holds video {self.ids[i]}, not {video_id}")
        return i


class CacheReader:
    """O(1) lookup of a video's teacher outputs (per view) from its shard record's `row`, one chunk per shard.

    A training loader's shuffle buffer mixes the samples of several shards, so the last
    `keep_shards` shards' rows are kept: re-reading the chunks at every switch of shard cost the CPU
    loader a large share of its time (docs/benchmarks.md).
    """

    def __init__(
        self,
        root: zarr.Group,
        split: str,
        keep_shards: int = 64,
        logits: str = "logits",
        temperature: float = 1.0,
        frames: bool = False,
    ):
        group = root[split]
        self.store, self.split = str(root.store), split
        self.shard_names = [name for name, _ in root.attrs.get("splits", {}).get(split, {}).get("shards", [])]
        # metadata read once; `logits` names the teacher head's array (head_array), divided by its temperature;
        # the per-frame features only when asked for (`loss.frame_alpha`): they are the largest array
        names = ("features", "valid", "ids", *(("frame_features",) if frames else ()))
        self.arrays = {name: group[name] for name in names} | {"logits": group[logits]}
        self.view_arrays = {name: group[name] for name in VIEW_ARRAYS if name in group}
        self.temperature = temperature
        self.per = self.arrays["features"].chunks[0]
        self.views = self.arrays["features"].shape[1]
        # a shard's frame features are F times its video features: keep fewer shards when reading them
        self.keep = max(1, keep_shards // 4) if frames else keep_shards
        self._rows: OrderedDict[int, ShardRows] = OrderedDict()

    def shard_rows(self, shard: int) -> ShardRows:
        """Shard `shard`'s chunk of every array, read once while it stays among the last `keep_shards` used."""
        if shard in self._rows:
            self._rows.move_to_end(shard)
            return self._rows[shard]
        try:
            rows = self._read(shard)
        except ValueError as e:
            if "checksum" not in str(e):
                raise
            name = self.shard_names[shard] if shard < len(self.shard_names) else f"position {shard}"
            raise CacheCorruptError(
                f"teacher cache {self.store}: a chunk of {self.split} shard {name} fails its CRC32C checksum (damaged on "
                f"disk); recompute it: python -m stages.teacher_cache --recompute {name} (with this run's --config and settings)"
            ) from None
        self._rows[shard] = rows
        if len(self._rows) > self.keep:
            self._rows.popitem(last=False)
        return rows

    def _read(self, shard: int) -> ShardRows:
        sl = slice(shard * self.per, (shard + 1) * self.per)
        a = self.arrays
        logits = a["logits"][sl] / np.float32(self.temperature)
        views = {name: array[sl] for name, array in self.view_arrays.items()}
        frames = a["frame_features"][sl] if "frame_features" in a else None
        return ShardRows(shard * self.per, a["features"][sl], logits, a["valid"][sl], a["ids"][sl], views, frames)

    @property
    def kept_shards(self) -> list[int]:
        """The shards whose rows are kept, least recently used first."""
        return list(self._rows)

    def get(self, row: int, video_id: str, view: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(feature [D], logits [C]) of view `view` of the video at `row`."""
        rows = self.shard_rows(row // self.per)
        i = rows.check(row, video_id)
        return rows.features[i, view], rows.logits[i, view]

    def frames(self, row: int, video_id: str, view: int = 0) -> np.ndarray:
        """The per-frame features [F, D] (float16) of view `view` of the video at `row` (a reader opened with frames)."""
        rows = self.shard_rows(row // self.per)
        i = rows.check(row, video_id)
        return rows.frames[i, view]

    def view(self, row: int, video_id: str, view: int) -> V.View:
        """The frames, crop box and flip of view `view` of the video at `row` (a split with training views)."""
        rows = self.shard_rows(row // self.per)
        i = rows.check(row, video_id)
        return V.view_from_arrays(*(rows.views[name][i, view] for name in VIEW_ARRAYS))


VIEW_ARRAYS = ("view_frames", "view_box", "view_flip")


class ShardRowsWriter:
    """Writes finished shards into the store, in a writer process: one chunk per array, then `done`.

    Opening an array reads its metadata from disk, so each process keeps the arrays it opened.
    """

    def __init__(self) -> None:
        self._arrays: dict[tuple[str, str], dict[str, zarr.Array]] = {}

    def _open(self, store: str, split: str) -> dict[str, zarr.Array]:
        if (store, split) not in self._arrays:
            group = zarr.open_group(store, mode="r+")[split]
            self._arrays[(store, split)] = {name: group[name] for name in group.array_keys()}
        return self._arrays[(store, split)]

    def write(self, store: str, split: str, shard: int, rows: list[int], tar: str, outputs: dict[str, np.ndarray]) -> None:
        """Write one shard's rows (one chunk per array named in `outputs`, first axis the shard's videos), then its done flag."""
        group = self._open(store, split)
        per = group["features"].chunks[0]
        first = shard * per
        pos = np.asarray(rows, dtype=np.int64) - first
        planned = read_manifest(manifest_path(Path(tar).parent, Path(tar).name))["planned_ids"]
        ids = np.full(per, "", dtype=object)
        ids[: len(planned)] = planned
        sl = slice(first, first + per)
        for name, values in outputs.items():
            array = group[name]
            block = np.zeros((per, *array.shape[1:]), dtype=array.dtype)
            if len(pos):
                block[pos] = values
            array[sl] = block
        valid = np.zeros(per, dtype=bool)
        valid[pos] = True
        group["ids"][sl] = ids.astype(str)
        group["valid"][sl] = valid
        group["done"][shard] = True  # last: the shard counts only once all its rows are in


# Teacher heads (pipeline/teacher/heads.py) in the store: `<split>/heads/<name>/logits` [N, V, C] float32,
# chunked one shard per chunk like the rest; `train/fold` [N] int8, each training row's fold (-1: none);
# and one record per head in the root attribute "heads", written last (a head counts once it is there).


def head_array(name: str) -> str:
    """The array of a split's group that holds head `name`'s logits (zero_shot: the cache's own)."""
    return "logits" if name == "zero_shot" else f"heads/{name}/logits"


def head_fingerprint(cache_fingerprint: str, settings: dict) -> str:
    """What a head's logits were computed from: the cache and the head's settings."""
    return digest({"cache": cache_fingerprint, "settings": settings})


def head_records(root: zarr.Group) -> dict[str, dict]:
    """Every finished head's record (settings, fingerprint, temperature, accuracy, fit time, weights)."""
    return dict(root.attrs.get("heads", {}))


def set_head_record(root: zarr.Group, name: str, record: dict | None) -> None:
    """Write (or with None, remove) head `name`'s record: the marker that its arrays are complete."""
    records = head_records(root)
    if record is None:
        records.pop(name, None)
    else:
        records[name] = record
    root.attrs["heads"] = records


def write_rows(root: zarr.Group, split: str, name: str, values: np.ndarray, *, fill: float = 0.0) -> None:
    """Create (or replace) `<split>/<name>` shaped like `values`, chunked one shard per chunk, and fill it."""
    group = root[split]
    per = group["features"].chunks[0]
    array = group.create_array(
        name,
        shape=values.shape,
        chunks=(per, *values.shape[1:]),
        dtype=values.dtype,
        fill_value=fill,
        overwrite=True,
        compressors=CHECKED,
    )
    array[:] = values
