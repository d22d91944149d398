"""The SSv2 download's annotation files: labels.json (template -> index) and one JSON list per split."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config
from pipeline.runtime.errors import UserError

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


class AnnotationError(UserError, ValueError):
    """An annotation file that cannot be read as SSv2."""


def clean_template(template: str) -> str:
    """SSv2 templates name objects as [something]; labels.json has them without brackets."""
    return template.replace("[", "").replace("]", "")


def labels_path(cfg: Config) -> Path:
    """The download's labels.json under `paths.ssv2_root`."""
    return Path(cfg.paths.ssv2_root) / cfg.data.labels_subdir / "labels.json"


PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # ids become file and tar member names


def read_json(path: Path, what: str):
    """A JSON file's content; a missing or malformed file is an AnnotationError that says where and what to do."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise AnnotationError(
            f"{path}: no such file; set paths.ssv2_root to the SSv2 download's folder (the one that holds "
            f"{path.parent.name}/{path.name})"
        ) from None
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read {what} ({e.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(
            f"{path}: not valid JSON at line {e.lineno}, column {e.colno} ({e.msg}); fix or re-download the {what}"
        ) from None


def load_labels(path: Path) -> dict[str, int]:
    """labels.json: class name -> index (SSv2 stores the indices as strings)."""
    raw = read_json(path, "label file")
    if not isinstance(raw, dict):
        raise AnnotationError(f"{path}: expected a JSON object of class name -> index")
    try:
        return {name: int(index) for name, index in raw.items()}
    except (TypeError, ValueError):
        raise AnnotationError(f"{path}: every class index must be a whole number") from None


def class_names(labels: dict[str, int]) -> list[str]:
    """Class names ordered by index."""
    names = [""] * len(labels)
    for name, index in labels.items():
        names[index] = name
    return names


def load_split(path: Path, labels: dict[str, int]) -> list[VideoEntry]:
    """Read one split's annotation list, in file order; unusable entries carry their `problem`."""
    items = read_json(path, "annotation file")
    if not isinstance(items, list):
        raise AnnotationError(f"{path}: expected a JSON list of videos")
    entries, seen = [], {}
    labelled = any(isinstance(item, dict) and "template" in item for item in items)
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "id" not in item:
            raise AnnotationError(f"{path}: entry {i} has no 'id'; every entry needs one")
        vid = str(item["id"])
        if not PLAIN_ID.fullmatch(vid):
            raise AnnotationError(
                f"{path}: entry {i} has id {vid!r}, not a plain name (letters, digits, '.', '-', '_'): ids become file names"
            )
        if vid in seen:
            raise AnnotationError(f"{path}: id {vid!r} appears twice (entries {seen[vid]} and {i}); remove the duplicate")
        seen[vid] = i
        if "template" not in item:  # the test split carries ids only
            if labelled:
                raise AnnotationError(f"{path}: entry {i} (id {vid!r}) has no 'template' where the others have one")
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
