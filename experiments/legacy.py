"""Results recorded before a setting existed: when they still describe today's run.

A run's key hashes its whole config (experiments/runner.py), so a setting added later gives every
run a new key and the results already measured stop matching. Most of them still describe the run:
a vanilla run never reads the loss's distillation settings, and a new setting often keeps the old
behaviour at one value (before `loss.fade` existed every run trained as `fade: none` does). This
module rebuilds the settings as the older code wrote them, and accepts a recorded result only when
(a) one such rebuild hashes to exactly the key it was recorded under, so the older config is known
field for field, and (b) every field where that config differs from today's is one the run does not
read, or holds the value that behaves as the older code did. Where the code changed behaviour with
no setting to show it (the per-frame term's targets), an older layout counts only for a result whose
provenance commit comes after the change.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

# Settings added after results were first recorded, oldest first, one dict per change: given the older
# layout, the value that behaves as the code before them (before `gamma_with_unlabelled`, runs with
# unlabelled splits used `gamma`). A result may predate the last change or several.
ADDED = [
    {("loss", "fade"): lambda older: "none", ("loss", "fade_margin"): lambda older: None},
    {("loss", "gamma_with_unlabelled"): lambda older: older["loss"]["gamma"]},
    {("train", "unlabelled_norm"): lambda older: "shared"},
    {("loss", "fade_window"): lambda older: 1},
]
# Since this commit each student frame meets its teacher frame by position (before: by index), with
# no setting to show it: a per-frame result counts through an older layout only if recorded after it.
FRAME_TARGETS_FIXED = "1701761"
# Since this commit `train.unlabelled_norm: separate` keeps the running statistics to the labelled
# clips (before: both groups, twice a step), under the same setting: such a result counts only if
# recorded after it.
NORM_GROUPS_FIXED = "15413cc"
REPO = Path(__file__).resolve().parents[1]
# Settings whose default changed: the values earlier code could have written.
DEFAULTS_CHANGED = {
    ("loss", "unlabelled_weight"): ("confidence", "uniform"),
    ("loss", "gamma"): (0.1, 1.0),
    ("train", "unlabelled_ratio"): (1.0, "auto"),
    # the proxy world's teacher head before it fitted pipeline.yaml's (experiments/proxy_world.py)
    ("teacher_head", "temporal_width"): (128, 256),
    ("teacher_head", "min_steps"): (300, 500),
    ("train", "unlabelled_norm"): ("shared", "separate"),
}


def settings_key(base: dict, settings: dict, work_text: str) -> str:
    """The key of a run: its base and its settings, hashed (paths left out by the caller)."""
    text = json.dumps([base, settings], sort_keys=True).replace(work_text, "<work>")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def unread(settings: dict) -> set[tuple[str, str]]:
    """The (section, field) settings a run with these settings never reads."""
    loss, train = settings["loss"], settings["train"]
    out: set[tuple[str, str]] = set()
    if loss["mode"] == "vanilla":
        out |= {("loss", k) for k in loss if k != "mode"} | {("teacher_head", k) for k in settings.get("teacher_head", {})}
    if loss.get("fade", "none") == "none":
        out |= {("loss", "fade_margin"), ("loss", "fade_window")}
    if not train.get("unlabelled_splits"):
        out |= {("loss", "unlabelled_weight"), ("train", "unlabelled_ratio"), ("loss", "gamma_with_unlabelled")}
        out.add(("train", "unlabelled_norm"))
    elif "gamma_with_unlabelled" in loss:
        out.add(("loss", "gamma"))  # the task weight is gamma_with_unlabelled's
    return out


def earlier_layouts(settings: dict, *, frame_targets_current: bool = False) -> Iterator[dict]:
    """Today's settings as earlier code would have written them, where that code ran the same run
    (`frame_targets_current`: the result was recorded with today's per-frame targets)."""
    if settings["loss"]["mode"] == "distill" and settings["loss"].get("frame_alpha", 0) > 0 and not frame_targets_current:
        return  # the frame term's targets changed with no setting to show it (FRAME_TARGETS_FIXED)
    skip = unread(settings)
    changed = [f for f in DEFAULTS_CHANGED if f[1] in settings[f[0]]]
    options = [sorted({*DEFAULTS_CHANGED[f], settings[f[0]][f[1]]}, key=str) for f in changed]
    for since in range(len(ADDED) + 1):  # the last: no setting added since, only defaults changed
        behaves = {f: value for change in ADDED[since:] for f, value in change.items() if f[1] in settings[f[0]]}
        for values in itertools.product(*options):
            if any(f not in skip and v != settings[f[0]][f[1]] for f, v in zip(changed, values)):
                continue
            older = copy.deepcopy(settings)
            for (section, name), v in zip(changed, values):
                older[section][name] = v
            if any(f not in skip and settings[f[0]][f[1]] != value(older) for f, value in behaves.items()):
                continue  # a setting added since is on at a value the older code could not run
            for section, name in behaves:
                del older[section][name]
            yield older


def earlier_keys(base: dict, settings: dict, work_text: str, *, frame_targets_current: bool = False) -> frozenset[str]:
    """The keys today's run was recorded under by earlier layouts (a caller checking many results keeps them)."""
    layouts = earlier_layouts(settings, frame_targets_current=frame_targets_current)
    return frozenset(settings_key(base, s, work_text) for s in layouts)


def recorded_key_matches(
    base: dict, settings: dict, work_text: str, recorded: str, *, frame_targets_current: bool = False
) -> bool:
    """Whether a result recorded under `recorded` is a run of today's `settings`, by an earlier layout."""
    return recorded in earlier_keys(base, settings, work_text, frame_targets_current=frame_targets_current)


def frame_targets_current(record: dict) -> bool:
    """Whether a result was recorded by code with today's per-frame targets: its provenance commit
    descends from FRAME_TARGETS_FIXED in this repository's history (unknown: no)."""
    return _recorded_after(record, FRAME_TARGETS_FIXED)


def superseded(record: dict, settings: dict) -> bool:
    """Whether a result ran code that behaved otherwise under today's `settings` with no setting to
    show it (NORM_GROUPS_FIXED), so it is not today's run whatever its key."""
    train = settings["train"]
    separate = bool(train.get("unlabelled_splits")) and train.get("unlabelled_norm") == "separate"
    return separate and not _recorded_after(record, NORM_GROUPS_FIXED)


def _recorded_after(record: dict, fix: str) -> bool:
    """Whether the result's provenance commit descends from `fix` in this repository's history (unknown: no)."""
    commit = (record.get("provenance") or {}).get("commit")
    return bool(commit) and _descends(fix, commit)


@functools.cache
def _descends(fix: str, commit: str) -> bool:
    try:
        done = subprocess.run(["git", "merge-base", "--is-ancestor", fix, commit], cwd=REPO, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0
