"""Files that are either complete or absent: write to a temporary name, fsync, rename."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def tmp_name(path: Path) -> Path:
    """A temporary sibling of `path`, unique per process, that no reader ever trusts."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def publish(tmp: Path, path: Path) -> None:
    """Make `tmp` durable, then atomically rename it to `path`."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def discard_on_error(tmp: Path, target: Path | None = None):
    """Context: if the body fails (a full disk, an I/O error), the partial `tmp` is removed, so it
    neither counts nor keeps the space, and the error goes on; an OSError that names no file (a
    failed write) is given `target` (default `tmp`), so its message says which file."""
    return _Discard(Path(tmp), Path(target or tmp))


class _Discard:
    def __init__(self, tmp: Path, target: Path):
        self.tmp, self.target = tmp, target

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, kind, value, trace) -> bool:
        if kind is None:
            return False
        self.tmp.unlink(missing_ok=True)
        if isinstance(value, OSError) and not value.filename and value.errno:
            raise OSError(value.errno, value.strerror, str(self.target)) from value
        return False


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with discard_on_error(tmp_name(path), path) as tmp:
        tmp.write_bytes(data)
        publish(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    write_bytes(path, text.encode())


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
