"""Stage 2b work: fit teacher heads on the cached per-frame features and write their logits.

For each fitted head: choose the weight decay on a held-out part of train -> fit one head per fold
on the other folds and predict that fold (out-of-fold training logits, so a training video's target
is a prediction, never a memorised label) -> fit on all of train and predict validation and test ->
fit a temperature on the out-of-fold logits -> write the logits, then the head's record.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import zarr

from pipeline.cache.heads import choose_head, expectation, loss_facts
from pipeline.cache.store import (
    CacheMismatchError,
    head_array,
    head_fingerprint,
    head_records,
    open_checked,
    set_head_record,
    write_rows,
)
from pipeline.config import Config, TeacherHeadConfig, dump
from pipeline.runtime import atomic
from pipeline.runtime.device import pick_device
from pipeline.runtime.progress import format_duration
from pipeline.shards.plan import row_labels
from pipeline.ssv2.annotations import class_names, flip_pairs, labels_path, load_labels
from pipeline.teacher import heads as H

log = logging.getLogger(__name__)


@dataclass
class SplitRows:
    """A split's valid rows (videos) and their views: per-frame features and the label each view shows."""

    rows: np.ndarray  # [n] row numbers
    labels: np.ndarray  # [n] the videos' labels
    views: int  # K views per video
    features: torch.Tensor  # [n * K, F, D] float16, video-major
    targets: np.ndarray  # [n * K] each view's label (a flipped view's through the flip map)
    num_rows: int  # all rows of the split (the arrays' length)

    def per_view(self, per_video: np.ndarray) -> np.ndarray:
        """A per-video array repeated for each of its views."""
        return np.repeat(per_video, self.views)


@dataclass
class HeadSummary:
    """What a call of `run` did."""

    fitted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    records: dict[str, dict] = field(default_factory=dict)
    read_seconds: float = 0.0
    seconds: float = 0.0


def run(cfg: Config) -> HeadSummary:
    """Fit every head of `teacher_head.heads` not yet fitted with these settings on this cache."""
    start = time.monotonic()
    hc = cfg.teacher_head
    unknown = sorted(set(hc.heads) - set(H.FITTED))
    if unknown:
        raise ValueError(f"teacher_head.heads: unknown head {unknown[0]!r} (fitted heads: {', '.join(H.FITTED)})")
    root = open_checked(cfg, mode="r+")  # refuses a cache built from other shards or another teacher
    _check_complete(cfg, root)
    device = pick_device(hc.device)
    summary = HeadSummary()
    pairs = flip_pairs(class_names(load_labels(labels_path(cfg))))
    splits = {split: read_split(cfg, root, split, pairs) for split in cfg.data.splits}
    summary.read_seconds = time.monotonic() - start
    if "train" not in splits:
        raise ValueError("teacher_head: data.splits must include train (heads are fitted on it)")
    cache_fp = root.attrs["fingerprint"]
    set_head_record(root, "zero_shot", _zero_shot_record(root, splits, cache_fp))
    train = splits["train"]
    folds = H.assign_folds(len(train.rows), hc.folds, hc.seed)
    all_folds = np.full(train.num_rows, -1, dtype=np.int8)
    all_folds[train.rows] = folds
    write_rows(root, "train", "fold", all_folds, fill=-1)
    out_dir = cfg.paths.teacher_heads_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    num_classes = root["train"]["logits"].shape[-1]
    atomic.write_text(out_dir / "config.yaml", dump(cfg))
    for name in hc.heads:
        fingerprint = head_fingerprint(cache_fp, H.head_settings(name, hc))
        if head_records(root).get(name, {}).get("fingerprint") == fingerprint:
            log.info("head %s: already fitted with these settings on this cache, skipped", name)
            summary.skipped.append(name)
            continue
        set_head_record(root, name, None)  # its arrays are about to change: not a finished head until rewritten
        record, logits = _fit_head(name, splits, folds=folds, num_classes=num_classes, cfg=hc, device=device, out_dir=out_dir)
        for split, data in splits.items():
            full = np.zeros((data.num_rows, data.views, num_classes), dtype=np.float32)
            full[data.rows] = logits[split].reshape(len(data.rows), data.views, num_classes)
            write_rows(root, split, head_array(name), full)
        record |= {"fingerprint": fingerprint, "cache_fingerprint": cache_fp, "folds_seed": hc.seed}
        set_head_record(root, name, record)  # last: the head counts from here
        summary.fitted.append(name)
    summary.records = head_records(root)
    summary.seconds = time.monotonic() - start
    log.info(_summary_paragraph(cfg, summary, device))
    try:  # what the student will learn from; a head fitted earlier with other settings has no say
        best = choose_head("best", records=summary.records, cache_fingerprint=cache_fp, cfg=hc)
    except CacheMismatchError as e:
        log.info("no expectation for loss.teacher_head=best: %s", e)
    else:
        classes = len(set(int(y) for y in splits["train"].labels if y >= 0))
        videos = len(splits["validation"].labels) if "validation" in splits else None
        log.info(expectation(best.name, best.val_top1, num_classes=classes, val_videos=videos, **loss_facts(cfg)))
    return summary


def _check_complete(cfg: Config, root: zarr.Group) -> None:
    for split in cfg.data.splits:
        done = root[split]["done"][:]
        if not done.all():
            raise FileNotFoundError(
                f"teacher cache {cfg.paths.teacher_cache}: {int((~done).sum())} of {len(done)} {split} shards are not "
                "cached yet: run `make teacher-cache` first"
            )


def read_split(cfg: Config, root: zarr.Group, split: str, pairs: dict[int, int]) -> SplitRows:
    """A split's valid rows with their labels and per-view frame features (a flipped view's label through `pairs`)."""
    group = root[split]
    valid = group["valid"][:]
    rows = np.flatnonzero(valid)
    labels = row_labels(cfg.paths.shards_dir, split)[rows]
    frames = group["frame_features"][:][rows]  # [n, K, F, D]
    views = frames.shape[1]
    targets = np.repeat(labels, views)
    if "view_flip" in group:
        flipped = group["view_flip"][:][rows].reshape(-1)
        targets[flipped] = [pairs.get(int(t), int(t)) for t in targets[flipped]]
    features = torch.from_numpy(np.ascontiguousarray(frames.reshape(-1, *frames.shape[2:])))
    return SplitRows(rows, labels, views, features, targets, len(valid))


def _zero_shot_record(root: zarr.Group, splits: dict[str, SplitRows], cache_fp: str) -> dict:
    record = {"settings": {"head": "zero_shot"}, "temperature": 1.0, "fit_seconds": 0.0, "weights": ""}
    record |= {"fingerprint": head_fingerprint(cache_fp, record["settings"]), "cache_fingerprint": cache_fp}
    val = splits.get("validation")
    if val is not None:
        logits = root["validation"]["logits"][:][val.rows].reshape(len(val.targets), -1)
        record |= {"val_top1": H.top_k(logits, val.targets, 1), "val_top5": H.top_k(logits, val.targets, 5)}
    return record


def _fit_head(
    name: str,
    splits: dict[str, SplitRows],
    *,
    folds: np.ndarray,
    num_classes: int,
    cfg: TeacherHeadConfig,
    device: torch.device,
    out_dir: Path,
) -> tuple[dict, dict[str, np.ndarray]]:
    """The head's record and its logits per split (train: out of fold), for each view of the split's valid rows.

    Folds and the held-out part are drawn per video, so all views of a video fall on the same side.
    """
    start = time.monotonic()
    train = splits["train"]
    # on the device once: every fit below takes its rows from there
    x, y = train.features.to(device), torch.from_numpy(train.targets).to(device)
    fit = lambda idx, wd, seed: H.fit(  # noqa: E731
        name, H.FitData(x[idx], y[idx]), num_classes=num_classes, cfg=cfg, weight_decay=wd, seed=seed, device=device
    )
    # the weight decay: fitted on train less a held-out part, judged on that part (never on validation)
    held = torch.from_numpy(train.per_view(H.holdout_mask(len(train.rows), cfg.holdout, cfg.seed))).to(device)
    scores = {}
    for wd in cfg.weight_decays:
        head = fit(torch.nonzero(~held).flatten(), wd, cfg.seed)
        scores[wd] = H.top_k(H.predict(head, x[held], device=device), train.targets[held.cpu().numpy()], 1)
    weight_decay = max(cfg.weight_decays, key=lambda wd: (scores[wd], -wd))
    # out of fold: each training row's logits from the head fitted without its fold
    oof = np.zeros((len(y), num_classes), dtype=np.float32)
    view_folds = train.per_view(folds)
    for k in range(cfg.folds):
        mine = view_folds == k
        rows = torch.from_numpy(mine).to(device)
        head = fit(torch.nonzero(~rows).flatten(), weight_decay, cfg.seed + 1 + k)
        oof[mine] = H.predict(head, x[rows], device=device)
    # validation and test: the head fitted on all of train
    full = fit(torch.arange(len(y), device=device), weight_decay, cfg.seed)
    weights = out_dir / f"{name}.pt"
    atomic.write_bytes(weights, _state_bytes(full))
    temperature = H.fit_temperature(oof, train.targets)
    root_logits = {"train": oof}
    for split, data in splits.items():
        if split != "train":
            root_logits[split] = H.predict(full, data.features, device=device)
    record = {
        "settings": H.head_settings(name, cfg),
        "weight_decay": weight_decay,
        "holdout_top1": {str(k): v for k, v in scores.items()},
        "temperature": temperature,
        "oof_top1": H.top_k(oof, train.targets, 1),
        "weights": str(weights),
    }
    if "validation" in splits:
        val = splits["validation"]
        record |= {
            "val_top1": H.top_k(root_logits["validation"], val.targets, 1),
            "val_top5": H.top_k(root_logits["validation"], val.targets, 5),
        }
    record["fit_seconds"] = time.monotonic() - start
    log.info(
        "head %s: weight decay %g (held-out top-1 %s), temperature %.3f, out-of-fold top-1 %.4f, validation top-1 %s, %.1f s",
        name,
        weight_decay,
        ", ".join(f"{k:g}: {v:.3f}" for k, v in scores.items()),
        temperature,
        record["oof_top1"],
        f"{record['val_top1']:.4f}" if "val_top1" in record else "n/a",
        record["fit_seconds"],
    )
    return record, root_logits


def _state_bytes(module: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.cpu() for k, v in module.state_dict().items()}, buffer)
    return buffer.getvalue()


def _summary_paragraph(cfg: Config, s: HeadSummary, device) -> str:
    rows = []
    for name in H.ALL_HEADS:
        r = s.records.get(name)
        if r is None:
            continue
        val = f"val top-1 {r['val_top1']:.4f} / top-5 {r['val_top5']:.4f}" if "val_top1" in r else "no validation"
        rows.append(f"{name} ({val}, T {r['temperature']:.2f}, fit {r['fit_seconds']:.1f} s)")
    return (
        f"Teacher heads finished in {format_duration(s.seconds)} on {device} (reading the cache {s.read_seconds:.1f} s): "
        f"fitted {', '.join(s.fitted) or 'none'}, skipped {', '.join(s.skipped) or 'none'} (already fitted); "
        f"{'; '.join(rows)}; logits in {cfg.paths.teacher_cache}, weights in {cfg.paths.teacher_heads_dir}."
    )
