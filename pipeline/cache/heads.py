"""The teacher heads as the cache records them: their names, the settings their logits depend on, and
which head a student learns from (`loss.teacher_head`), refused when stale. The heads themselves and
their fitting are the teacher stage's (pipeline/teacher/heads.py)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from pipeline.cache.store import CacheMismatchError, head_array, head_fingerprint
from pipeline.config import Config, TeacherHeadConfig

FITTED = ("linear", "temporal")
ALL_HEADS = ("zero_shot", *FITTED)


def head_settings(name: str, cfg: TeacherHeadConfig) -> dict:
    """The settings a head's logits depend on (they go into its fingerprint)."""
    keep = {"folds", "seed", "holdout", "weight_decays", "epochs", "min_steps", "batch_size", "lr"}
    if name == "temporal":
        keep |= {"temporal_width", "temporal_layers", "dropout"}
    return {"head": name, **{k: v for k, v in asdict(cfg).items() if k in keep}}


@dataclass(frozen=True)
class HeadChoice:
    """The head a student learns from: its name, its logits' array in the cache, its temperature."""

    name: str
    array: str
    temperature: float
    val_top1: float | None = None


# a head's validation top-1 counts as knowledge only this many binomial standard errors above chance
CHANCE_STANDARD_ERRORS = 3.0


def beats_chance(top1: float, *, chance: float, videos: int) -> bool:
    """Whether a head's validation top-1 over `videos` clips is above chance by more than its
    measurement noise (CHANCE_STANDARD_ERRORS binomial standard errors of a head at chance)."""
    noise = math.sqrt(chance * (1.0 - chance) / max(1, videos))
    return top1 > chance + CHANCE_STANDARD_ERRORS * noise


def choose_head(wanted: str, *, records: dict[str, dict], cache_fingerprint: str, cfg: TeacherHeadConfig) -> HeadChoice:
    """`loss.teacher_head` resolved against the cache's head records; a stale or missing head is refused.

    `best` is the fitted head with the highest validation top-1, or zero_shot when no head was fitted.
    """

    def stale(name: str) -> bool:
        return records[name].get("fingerprint") != head_fingerprint(cache_fingerprint, head_settings(name, cfg))

    def choice(name: str) -> HeadChoice:
        r = records.get(name, {})
        return HeadChoice(name, head_array(name), float(r.get("temperature", 1.0)), r.get("val_top1"))

    fix = "run `make teacher-head` (it refits what changed)"
    if wanted == "zero_shot":
        return choice("zero_shot")
    if wanted == "best":
        old = [n for n in FITTED if n in records and stale(n)]
        if old:
            raise CacheMismatchError(
                f"teacher head(s) {', '.join(old)} were fitted on another cache or with other teacher_head settings: "
                f"{fix}, or choose loss.teacher_head=zero_shot"
            )
        fitted = [n for n in FITTED if n in records]
        if not fitted:
            return choice("zero_shot")
        return choice(max(fitted, key=lambda n: records[n].get("val_top1", -1.0)))
    if wanted not in records:
        raise CacheMismatchError(
            f"loss.teacher_head={wanted}: no such head fitted on this teacher cache: {fix} with {wanted} in teacher_head.heads"
        )
    if stale(wanted):
        raise CacheMismatchError(
            f"loss.teacher_head={wanted}: the head was fitted on another cache or with other teacher_head settings: {fix}"
        )
    return choice(wanted)


def loss_facts(cfg: Config) -> dict:
    """What `expectation` needs to know of a run's loss (its keyword arguments past `num_classes`)."""
    return {"fade": cfg.loss.fade, "task_weight": cfg.task_weight, "unlabelled": bool(cfg.train.unlabelled_splits)}


def expectation(
    name: str,
    val_top1: float | None,
    *,
    num_classes: int,
    fade: str = "crossover",
    task_weight: float = 1.0,
    unlabelled: bool = False,
    val_videos: int | None = None,
) -> str:
    """What distilling from head `name` is expected to do, from the proxy benchmark's measurements
    (docs/proxy_benchmark.md): a student distilled for the whole run ends near its head's validation
    top-1; with labels alone, the label at full weight (`task_weight` 1) and the crossover fade never
    fell below labels alone, the seeds' 0.1 let a weak head that leads the student early hold it down;
    with `unlabelled` clips the label at 0.1 gained and at 1.0 lost, and a head at chance cost until the
    fade gave it no weight. `val_videos`: the validation clips behind `val_top1` (its noise)."""
    if val_top1 is None:
        return f"Teacher head {name}: no validation top-1 (no validation split cached), so nothing to compare a student with."
    chance = 1.0 / num_classes
    text = (
        f"Teacher head {name}: validation top-1 {val_top1:.3f} (chance {chance:.3f}). On the proxy benchmark a student "
        f"distilled from a head for the whole run ended near the head's top-1: above labels alone only where the head was "
        f"ahead of them (scarce labels, unlabelled videos), below them wherever the labels taught more."
    )
    vanilla = " Train a vanilla run too (loss.mode=vanilla) to compare (make report VANILLA=...)."
    if fade == "crossover" and val_videos and not beats_chance(val_top1, chance=chance, videos=val_videos):
        return text + (
            f" Its lead over chance is within the noise of {val_videos} validation videos, so with loss.fade=crossover a "
            "distilled run gives it no weight from the first step"
            + (" and leaves the unlabelled clips out (on the proxy they cost 4 points from such a head)" if unlabelled else "")
            + ": the run trains on the labels alone."
        )
    if unlabelled:
        return text + (
            f" With unlabelled splits the label's weight is {task_weight:g} (loss.gamma_with_unlabelled): on the proxy, 30 "
            "unlabelled videos per class added 19 points to 10 labelled ones with the label at 0.1 from a head at 0.37, each "
            "unlabelled clip seen once an epoch (train.unlabelled_ratio=auto; the student ended at 0.78 of the head's "
            "top-1), and nothing from a head at 0.15 (level with labels alone); with the label at 1.0 the student ended "
            "below labels alone. Once the student comes level with the head the teacher's weight is 0 and the unlabelled "
            "clips leave the batches." + vanilla
        )
    if fade == "crossover" and task_weight >= 1.0:
        return text + (
            f" With the label at full weight (loss.gamma={task_weight:g}) and loss.fade=crossover the teacher's terms fade "
            f"out as the student's validation top-1 nears {val_top1:.3f}: on the proxy that never fell below labels alone "
            "by more than the seed spread, from a strong, a weak or a useless head, and gained up to 9 points where the "
            "head was ahead." + vanilla
        )
    if fade == "crossover":
        return text + (
            f" With the label at {task_weight:g} (loss.gamma) and loss.fade=crossover the teacher's terms fade out as the "
            f"student's validation top-1 nears {val_top1:.3f}, but on the proxy a weak head still ahead of the student in "
            "its first epochs cost 2-7 points against labels alone (the label at 1.0 did not)." + vanilla
        )
    if val_top1 < 2 * chance:
        return text + " This head is near chance: distilling from it without the fade will cost accuracy."
    return text + " Without the fade (loss.fade=none), compare a vanilla run (loss.mode=vanilla) before trusting it."
