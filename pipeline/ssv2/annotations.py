"""The SSv2 download's annotation files: labels.json (template -> index) and one JSON list per split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config

NUM_CLASSES = 174
LABELS_FILE = Path(__file__).parent / "resources" / "ssv2_labels.json"


@dataclass(frozen=True)
class VideoEntry:
    """One annotated video. `label` is -1 for the unlabelled test split."""

    id: str
    label: int
    template: str  # the class name, brackets removed: "Pushing something from left to right"
    text: str  # the annotator's free text, e.g. "pushing a cup from left to right"
    problem: str = ""  # why the annotation itself is unusable; such a video is rejected, not dropped


class AnnotationError(ValueError):
    """An annotation file that cannot be read as SSv2."""


def clean_template(template: str) -> str:
    """SSv2 templates name objects as [something]; labels.json has them without brackets."""
    return template.replace("[", "").replace("]", "")


def labels_path(cfg: Config) -> Path:
    """The download's labels.json under `paths.ssv2_root`."""
    return Path(cfg.paths.ssv2_root) / cfg.data.labels_subdir / "labels.json"


def load_labels(path: Path) -> dict[str, int]:
    """labels.json: class name -> index (SSv2 stores the indices as strings)."""
    raw = json.loads(Path(path).read_text())
    return {name: int(index) for name, index in raw.items()}


def class_names(labels: dict[str, int]) -> list[str]:
    """Class names ordered by index."""
    names = [""] * len(labels)
    for name, index in labels.items():
        names[index] = name
    return names


def load_split(path: Path, labels: dict[str, int]) -> list[VideoEntry]:
    """Read one split's annotation list, in file order; unusable entries carry their `problem`."""
    try:
        items = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AnnotationError(f"{path}: cannot read annotations: {e}") from e
    if not isinstance(items, list):
        raise AnnotationError(f"{path}: expected a JSON list of videos")
    entries = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "id" not in item:
            raise AnnotationError(f"{path}: entry {i} has no 'id'")
        vid = str(item["id"])
        if "template" not in item:  # the test split carries ids only
            entries.append(VideoEntry(vid, -1, "", ""))
            continue
        template = clean_template(item["template"])
        if template not in labels:
            entries.append(VideoEntry(vid, -1, template, "", problem=f"label not in labels.json: {template!r}"))
            continue
        entries.append(VideoEntry(vid, labels[template], template, str(item.get("label", ""))))
    return entries


def flip_pairs(class_names: list[str]) -> dict[int, int]:
    """Classes that a horizontal flip turns into each other (left <-> right), by index."""
    index = {name: i for i, name in enumerate(class_names)}
    pairs = {}
    for name, i in index.items():
        swapped = name.replace("left", "\0").replace("right", "left").replace("\0", "right")
        if swapped != name and swapped in index:
            pairs[i] = index[swapped]
    return pairs
