"""Results recorded before a setting existed: when they still describe today's run.

A run's key hashes its whole config (experiments/runner.py), so a setting added later gives every
run a new key and the results already measured stop matching. Most of them still describe the run:
a vanilla run never reads the loss's distillation settings, and a new setting often keeps the old
behaviour at one value (before `loss.fade` existed every run trained as `fade: none` does). This
module rebuilds the settings as the older code wrote them, and accepts a recorded result only when
(a) one such rebuild hashes to exactly the key it was recorded under, so the older config is known
field for field, and (b) every field where that config differs from today's is one the run does not
read, or holds the value that behaves as the older code did. Where the code changed behaviour with
no setting to show it (the per-frame term's targets), no older result counts.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Iterator

# Settings added after results were first recorded, oldest first, one dict per change: given the older
# layout, the value that behaves as the code before them (before `gamma_with_unlabelled`, runs with
# unlabelled splits used `gamma`). A result may predate the last change or several.
ADDED = [
    {("loss", "fade"): lambda older: "none", ("loss", "fade_margin"): lambda older: None},
    {("loss", "gamma_with_unlabelled"): lambda older: older["loss"]["gamma"]},
]
# Settings whose default changed: the values earlier code could have written.
DEFAULTS_CHANGED = {("loss", "unlabelled_weight"): ("confidence", "uniform"), ("loss", "gamma"): (0.1, 1.0)}


def settings_key(base: dict, settings: dict, work_text: str) -> str:
    """The key of a run: its base and its settings, hashed (paths left out by the caller)."""
    text = json.dumps([base, settings], sort_keys=True).replace(work_text, "<work>")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def unread(settings: dict) -> set[tuple[str, str]]:
    """The (section, field) settings a run with these settings never reads."""
    loss, train = settings["loss"], settings["train"]
    out: set[tuple[str, str]] = set()
    if loss["mode"] == "vanilla":
        out |= {("loss", k) for k in loss if k != "mode"}
    if loss.get("fade", "none") == "none":
        out.add(("loss", "fade_margin"))
    if not train.get("unlabelled_splits"):
        out |= {("loss", "unlabelled_weight"), ("train", "unlabelled_ratio"), ("loss", "gamma_with_unlabelled")}
    elif "gamma_with_unlabelled" in loss:
        out.add(("loss", "gamma"))  # the task weight is gamma_with_unlabelled's
    return out


def earlier_layouts(settings: dict) -> Iterator[dict]:
    """Today's settings as earlier code would have written them, where that code ran the same run."""
    if settings["loss"]["mode"] == "distill" and settings["loss"].get("frame_alpha", 0) > 0:
        return  # the frame term's targets changed with no setting to show it (1701761: by position, not index)
    skip = unread(settings)
    changed = [f for f in DEFAULTS_CHANGED if f[1] in settings[f[0]]]
    for since in range(len(ADDED)):
        behaves = {f: value for change in ADDED[since:] for f, value in change.items() if f[1] in settings[f[0]]}
        for values in itertools.product(*(DEFAULTS_CHANGED[f] for f in changed)):
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


def recorded_key_matches(base: dict, settings: dict, work_text: str, recorded: str) -> bool:
    """Whether a result recorded under `recorded` is a run of today's `settings`, by an earlier layout."""
    return any(settings_key(base, s, work_text) == recorded for s in earlier_layouts(settings))
