"""A published TSM-ResNet checkpoint, as downloaded, converted into this project's checkpoint.

Three layouts (facts read from each project's model definition):

- mit-han-lab (temporal-shift-module): a TSN wrapper in DataParallel, `module.base_model.<torchvision
  ResNet>` with the shift wrapping each block's conv1 as `.net`, and the classifier `module.new_fc`
  (`module.base_model.fc` when trained without dropout); settings only in the file name
  (`..._shift8_blockres_avg_segment8_e45.pth`).
- mmaction2: `backbone.` ResNetTSM whose convs are ConvModules (`conv1.conv`, `conv1.bn`; the shift
  wraps a block's `conv1.conv` as `.net`; `downsample.conv`/`.bn`), `cls_head.fc_cls`; the file has
  `state_dict` and `meta` (its config text under `meta["cfg"]` when the trainer saved it).
- ffn (BeSpontaneous/FFN): the same TSN wrapper around a ResNet with one BatchNorm per frame count
  (`bn1_4`, `bn1_8`, `bn1_16`, `downsample_bn_16`, ...), one shared `downsample_conv`, and per-count
  weight alterations `adaconv_<count>` in front of each block's conv1.

Every tensor is matched through the shared naming of models/layout.py; what is left over on either
side, a shape, the class count or a frame or shift setting that does not fit the config is one
line that says what to change. The feature projection (`proj`, distillation only) has no published
counterpart and keeps its seeded initialisation; the file records that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import Config, dump, to_dict
from pipeline.models import build_student, checkpoint
from pipeline.models.layout import canonical_counts, project_canonical
from pipeline.runtime.atomic import write_text
from pipeline.runtime.errors import UserError
from pipeline.ssv2.annotations import NUM_CLASSES, class_names, labels_path, load_labels
from pipeline.student.ffn import trained_counts

log = logging.getLogger(__name__)
FORMATS = ("mit-han-lab", "mmaction2", "ffn")
NEW_IN_PROJECT = ("proj.weight", "proj.bias")  # the distilled feature's projection: no published model has it
SHIFT_DIV = 8  # the project's shift moves 1/8 of the channels each way (models/tsm.py)


class WeightsImportError(UserError, ValueError):
    """A published checkpoint that cannot become this project's student; the message says why."""


# source key -> shared name, applied in order (see models/layout.py for the shared naming)
_RULES: dict[str, list[tuple[str, str]]] = {
    "mit-han-lab": [
        (r"^module\.", ""),
        (r"^new_fc\.", "fc."),
        (r"^base_model\.fc\.", "fc."),
        (r"^base_model\.", ""),
        (r"\.conv1\.net\.", ".conv1."),
    ],
    "mmaction2": [
        (r"^backbone\.conv1\.conv\.", "conv1."),
        (r"^backbone\.conv1\.bn\.", "bn1."),
        (r"^backbone\.", ""),
        (r"\.conv(\d)\.conv\.(net\.)?", r".conv\1."),
        (r"\.conv(\d)\.bn\.", r".bn\1."),
        (r"\.downsample\.conv\.", ".downsample.0."),
        (r"\.downsample\.bn\.", ".downsample.1."),
        (r"^cls_head\.fc_cls\.", "fc."),
    ],
    "ffn": [
        (r"^module\.", ""),
        (r"^new_fc\.", "fc."),
        (r"^base_model\.fc\.", "fc."),
        (r"^base_model\.", ""),
        (r"^bn1_(\d+)\.", r"bn1@\1."),
        (r"\.bn(\d)_(\d+)\.", r".bn\1@\2."),
        (r"\.adaconv_(\d+)\.weight$", r".alter@\1.weight"),
        (r"\.downsample_conv\.", ".downsample.0."),
        (r"\.downsample_bn_(\d+)\.", r".downsample.1@\1."),
    ],
}
_NOT_WEIGHTS = re.compile(r"^data_preprocessor\.")  # mmaction2's input normalisation buffers, if saved


@dataclass
class Source:
    """A published file's weights and what it says about how it was trained."""

    path: Path
    state: dict[str, torch.Tensor]
    epoch: int
    frames: int | None  # the clip length it was trained at, when the file says
    shift_div: int | None
    notes: list[str]  # other settings the file states that the project cannot build


def canonical(fmt: str, key: str) -> str:
    """A source key of layout `fmt` in the shared naming."""
    for pattern, repl in _RULES[fmt]:
        key = re.sub(pattern, repl, key)
    return key


def sniff(keys: list[str]) -> str | None:
    """Which layout the keys are in, from marks only one layout has; None when none fits."""
    if any(k.startswith("cls_head.") or ".conv.net." in k or k.startswith("backbone.conv1.conv.") for k in keys):
        return "mmaction2"
    if any(".adaconv_" in k or re.search(r"\.bn\d_\d+\.", k) for k in keys):
        return "ffn"
    if any("base_model." in k for k in keys):
        return "mit-han-lab"
    return None


def read_source(path: Path, fmt: str, *, trusted: bool = False) -> Source:
    """The file's state dict (any wrapper removed) and its stated settings; one-line errors for a
    missing, truncated or foreign file and for a layout other than `fmt`."""
    if fmt not in FORMATS:
        raise WeightsImportError(f"FROM={fmt!r}: one of {', '.join(FORMATS)}")
    saved = _load(Path(path), trusted)
    if isinstance(saved, dict) and {"model", "config"} <= saved.keys():
        raise WeightsImportError(
            f"{path}: already a checkpoint of this project; use it as it is (eval.checkpoint=, student.pretrained=)"
        )
    state = saved.get("state_dict", saved.get("model", saved)) if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsImportError(f"{path}: holds no state dict of tensors (top-level keys: {_first(_keys(saved))})")
    state = {k: v for k, v in state.items() if not _NOT_WEIGHTS.match(k)}
    found = sniff(list(state))
    if found is None:
        known = ", ".join(FORMATS)
        raise WeightsImportError(f"{path}: not a TSM-ResNet checkpoint of {known} (first keys: {_first(list(state))})")
    if found != fmt:
        raise WeightsImportError(f"{path}: a {found} checkpoint, not {fmt}: pass FROM={found}")
    frames, shift_div, notes = _stated_settings(Path(path), saved, fmt)
    epoch = saved.get("epoch", 0) if isinstance(saved, dict) else 0
    return Source(Path(path), state, int(epoch) if isinstance(epoch, int) else 0, frames, shift_div, notes)


def _load(path: Path, trusted: bool):
    if not path.is_file():
        raise WeightsImportError(f"{path}: no such file; SRC= names the downloaded checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as e:
        if "WeightsUnpickler error" not in str(e):
            raise _truncated(path, e) from e
        reason = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0].split(" Please use")[0][:160]
        raise WeightsImportError(
            f"{path}: holds more than tensors and plain values ({reason}); it was not loaded, since that could run "
            "code. Only for a file from a source you trust: ARGS=--trusted"
        ) from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:  # torch says "truncated" in many ways
        raise _truncated(path, e) from e


def _truncated(path: Path, e: Exception) -> WeightsImportError:
    first = (str(e).strip().splitlines() or [""])[0][:120]
    return WeightsImportError(
        f"{path}: truncated or not a PyTorch checkpoint ({type(e).__name__}{': ' * bool(first)}{first}); "
        "download it again (its size and checksum should match the published ones)"
    )


def _stated_settings(path: Path, saved, fmt: str) -> tuple[int | None, int | None, list[str]]:
    """Frames, shift division and unsupported settings from what the file states: mmaction2's config
    text, else the file name (mit-han-lab's and mmaction2's names carry them)."""
    meta = saved.get("meta") if isinstance(saved, dict) else None
    text = meta.get("cfg") if isinstance(meta, dict) and isinstance(meta.get("cfg"), str) else ""
    name = path.name
    frames = _int(r"num_segments\s*=\s*(\d+)", text) or _int(r"segment(\d+)", name) or _int(r"1x1x(\d+)", name)
    shift_div = _int(r"shift_div\s*=\s*(\d+)", text) or _int(r"_shift(\d+)_", name)
    notes = []
    if re.search(r"temporal_pool\s*=\s*True", text) or "tpool" in name:
        notes.append("temporal pooling (tpool)")
    if re.search(r"shift_place\s*=\s*'block'", text) or re.search(r"_block_", name):
        notes.append("shift_place=block (the project shifts inside the residual branch: blockres)")
    if fmt == "ffn":
        frames = None  # FFN's counts are in its keys
    return frames, shift_div, notes


def _int(pattern: str, text: str) -> int | None:
    m = re.search(pattern, text)
    return int(m[1]) if m else None


def _keys(saved) -> list[str]:
    return [str(k) for k in saved] if isinstance(saved, dict) else [type(saved).__name__]


def _first(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "") if names else "none"


def expected_classes(cfg: Config) -> int:
    """The data set's class count: labels.json under paths.ssv2_root, else SSv2's 174."""
    path = labels_path(cfg)
    return len(class_names(load_labels(path))) if path.exists() else NUM_CLASSES


def check_settings(source: Source, fmt: str, cfg: Config, counts: list[int]) -> None:
    """The file's stated training settings against the config: frame counts, shift, architecture."""
    where = source.path
    if not cfg.student.arch.startswith("tsm_"):
        raise WeightsImportError(f"{where}: a TSM-ResNet, but student.arch={cfg.student.arch}; set student.arch=tsm_r50")
    if source.notes:
        raise WeightsImportError(f"{where}: trained with {'; '.join(source.notes)}, which this project's TSM does not build")
    if source.shift_div is not None and source.shift_div != SHIFT_DIV:
        raise WeightsImportError(
            f"{where}: shifts 1/{source.shift_div} of the channels each way; this project's TSM shifts 1/{SHIFT_DIV}"
        )
    theirs = canonical_counts([canonical(fmt, k) for k in source.state])
    if fmt == "ffn" and theirs != counts:
        raise WeightsImportError(
            f"{where}: FFN weights for frame counts {theirs}, the config trains {counts}: set "
            f"train.frame_counts=[{','.join(map(str, theirs))}] student.num_frames={theirs[-1]}"
        )
    if fmt != "ffn" and len(counts) > 1:
        raise WeightsImportError(
            f"{where}: one set of norms ({fmt}), but train.frame_counts={counts} builds FFN's per-count norms; "
            "set train.frame_counts=[]"
        )
    if source.frames is not None and source.frames != cfg.student.num_frames:
        raise WeightsImportError(
            f"{where}: trained at {source.frames} frames, student.num_frames={cfg.student.num_frames}; "
            f"set student.num_frames={source.frames} (evaluation still runs at eval.frame_counts)"
        )


def convert(source: Source, fmt: str, model: torch.nn.Module, counts: list[int], arch: str) -> dict[str, torch.Tensor]:
    """The model's state dict filled from the source, tensor by tensor; anything unmatched on either
    side or of another shape is an error naming the first such keys."""
    theirs: dict[str, str] = {}
    for key in source.state:
        theirs.setdefault(canonical(fmt, key), key)
    own = model.state_dict()
    mine = {project_canonical(k, counts): k for k in own}
    optional = {n for n in mine if n.endswith("num_batches_tracked")} | set(NEW_IN_PROJECT)
    extra = [theirs[n] for n in theirs if n not in mine]
    missing = [mine[n] for n in mine if n not in theirs and n not in optional]
    if extra or missing:
        raise WeightsImportError(
            f"{source.path} ({fmt}) does not map onto {arch}: {len(extra)} of its keys map to nothing "
            f"(first: {_first(extra)}), {len(missing)} of the student's are not in it (first: {_first(missing)}); "
            "check FROM=, student.arch= (tsm_r50: ResNet-50) and train.frame_counts="
        )
    state = dict(own)
    for name, key in mine.items():
        if name not in theirs:
            continue
        tensor = source.state[theirs[name]]
        if tensor.shape != own[key].shape:
            raise WeightsImportError(
                f"{source.path}: {theirs[name]} is {tuple(tensor.shape)}, the student's {key} is {tuple(own[key].shape)}; "
                + _shape_advice(name)
            )
        state[key] = tensor.to(own[key].dtype)
    return state


def _shape_advice(name: str) -> str:
    if name.startswith("fc."):
        return "the class count differs (see the error's numbers)"
    return "check student.arch= (tsm_r50 is ResNet-50, tsm_tiny a one-block-per-stage ResNet-10)"


def import_checkpoint(cfg: Config, src: Path, fmt: str, out: Path, *, trusted: bool = False) -> Path:
    """Convert `src` (layout `fmt`) into a project checkpoint at `out`, checked against `cfg`."""
    if Path(out).exists():
        raise WeightsImportError(f"{out}: exists; remove it or name another output (OUT=)")
    source = read_source(Path(src), fmt, trusted=trusted)
    counts = trained_counts(cfg)
    check_settings(source, fmt, cfg, counts)
    classes = expected_classes(cfg)
    fc = next((v for k, v in source.state.items() if canonical(fmt, k) == "fc.weight"), None)
    if fc is not None and fc.shape[0] != classes:
        raise WeightsImportError(
            f"{src}: classifies into {fc.shape[0]} classes, the data set has {classes} "
            f"({labels_path(cfg)}); import a checkpoint trained on this data set"
        )
    if source.frames is None and fmt != "ffn":
        log.warning("%s does not state its frame count: imported for student.num_frames=%d", src, cfg.student.num_frames)
    model = build_student(_no_pretrained(cfg).student, classes, counts)
    model.load_state_dict(convert(source, fmt, model, counts, cfg.student.arch), strict=True)
    checkpoint.save(Path(out), _checkpoint(cfg, model, source, fmt))
    log.info(
        "imported %s (%s, %d tensors) into %s: %s at %s frame(s)", src, fmt, len(source.state), out, cfg.student.arch, counts
    )
    return Path(out)


def import_as_student(cfg: Config, src: Path, fmt: str, *, trusted: bool = False) -> Path:
    """Import into a new student folder (paths.student_name): best.pt, and config.yaml with the
    student settings, which `make evaluate` then builds whatever its command line says."""
    folder = cfg.paths.student_dir
    if (folder / "config.yaml").exists():
        raise WeightsImportError(f"{folder} holds another student (config.yaml); name a new folder: paths.student_name=<name>")
    out = import_checkpoint(cfg, src, fmt, folder / "best.pt", trusted=trusted)
    write_text(folder / "config.yaml", dump(_no_pretrained(cfg)))
    return out


def _no_pretrained(cfg: Config) -> Config:
    # every tensor comes from the file: no ImageNet download for weights about to be replaced
    return dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, pretrained=""))


def _checkpoint(cfg: Config, model: torch.nn.Module, source: Source, fmt: str) -> dict:
    """What the evaluate stage and `student.pretrained` read: the weights, an epoch, the config; and
    where the weights came from."""
    return {
        "model": model.state_dict(),
        "state": {"epoch": source.epoch},
        "config": to_dict(_no_pretrained(cfg)),
        "imported": {
            "from": fmt,
            "source": str(source.path),
            "sha256": _sha256(source.path),
            "not_in_source": list(NEW_IN_PROJECT),
        },
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
