"""One naming for TSM-ResNet weights, whoever wrote them: torchvision's ResNet names, with `@<count>`
after a per-frame-count norm or weight alteration (FFN) and `alter` for the alteration.

    layer1.0.conv1.weight          the shifted conv (TSM wraps it, mmaction2 wraps it twice)
    layer1.0.bn1@16.running_mean   the 16-frame copy of a norm (FFN)
    layer1.0.alter@8.weight        the 8-frame weight alteration before conv1 (FFN)
    fc.weight                      the classifier

Published checkpoints and this project's students are matched through these names
(student/import_weights.py), and a project checkpoint given as `student.pretrained` is loaded
through them into whatever TSM the config builds (`load_tsm_backbone`).
"""

from __future__ import annotations

import re

from torch import nn

from pipeline.models.base import WeightsError


def project_canonical(key: str, counts: list[int]) -> str:
    """A project TSM state-dict key in the shared naming; `counts`: the trained frame counts, ascending."""
    if not key.startswith("backbone."):
        return key  # fc, proj
    key = key[len("backbone.") :]
    alteration = re.fullmatch(r"(.*)\.conv1\.conv\.0\.convs\.(\d+)\.weight", key)
    if alteration:
        return f"{alteration[1]}.alter@{counts[int(alteration[2])]}.weight"
    key = re.sub(r"\.conv1\.conv\.(1\.)?", ".conv1.", key)  # TemporalShift(conv) or TemporalShift(Altered)
    return re.sub(r"\.copies\.(\d+)\.", lambda m: f"@{counts[int(m[1])]}.", key)


def canonical_counts(names: list[str]) -> list[int]:
    """The frame counts named by per-count tensors (`@<count>`), ascending; [] when there are none."""
    return sorted({int(m[1]) for n in names if (m := re.search(r"@(\d+)\.", n))})


def saved_counts(saved: dict) -> list[int]:
    """The frame counts a project checkpoint was trained at, from the config stored beside its weights."""
    train, student = saved["config"]["train"], saved["config"]["student"]
    return sorted(set(train.get("frame_counts") or [])) or [int(student["num_frames"])]


def load_tsm_backbone(model: nn.Module, saved: dict, counts: list[int], *, source: str) -> None:
    """Load a project TSM checkpoint's backbone into `model` (the heads are the new task's). Per-count
    norms and alterations go to the same count; a count the checkpoint lacks takes its nearest
    count's, a model with one set of norms the checkpoint's highest count, and every count of an
    FFN model the single set of a plain checkpoint."""
    theirs_counts = saved_counts(saved)
    theirs = {project_canonical(k, theirs_counts): v for k, v in saved["model"].items() if k.startswith("backbone.")}
    usable = {}
    for key, tensor in model.state_dict().items():
        if key.startswith("backbone."):
            found = theirs.get(_their_name(project_canonical(key, counts), theirs_counts))
            if found is not None and found.shape == tensor.shape:
                usable[key] = found
    if not usable:
        raise WeightsError(f"student.pretrained={source!r}: no tensor of this checkpoint fits the student's backbone")
    model.load_state_dict(usable, strict=False)


def _their_name(name: str, theirs_counts: list[int]) -> str:
    """The checkpoint's name for the tensor this model calls `name` (both in the shared naming)."""
    per_count = len(theirs_counts) > 1
    mine = re.search(r"@(\d+)\.", name)
    if mine and not per_count:
        return name.replace(mine[0], ".")
    if mine:
        nearest = min(theirs_counts, key=lambda c: (abs(c - int(mine[1])), -c))
        return name.replace(mine[0], f"@{nearest}.")
    if per_count:
        return re.sub(r"(bn\d|downsample\.1)\.(\w+)$", rf"\1@{theirs_counts[-1]}.\2", name)
    return name
