"""What one video looks like inside a shard, shared by the writer and every reader.

Two tar members per video, grouped by WebDataset under the key `<id>`:
- `<id>.json`: the record (id, label, label_text, template, num_frames, fps, height, width, row,
  frame_bytes);
- `<id>.jpgs`: every frame's JPEG, back to back. `frame_bytes` gives each JPEG's length, so a loader
  slices out only the frames it samples and decodes just those. One member per video rather than
  one per frame keeps the tar small (512-byte headers) and the reader fast (~45x fewer members).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from itertools import accumulate
from typing import Any, BinaryIO

RECORD_EXT = "json"
FRAMES_EXT = "jpgs"


def shard_name(split: str, index: int) -> str:
    """File name of shard `index` of `split`."""
    return f"{split}-{index:06d}.tar"


def frame_offsets(frame_bytes: list[int]) -> list[int]:
    """Start offset of each frame in the `.jpgs` blob, plus the end."""
    return [0, *accumulate(frame_bytes)]


def select_frames(record: dict[str, Any], blob: bytes, indices: Iterable[int]) -> list[bytes]:
    """The JPEG bytes of frames `indices` of one sample, without touching the others."""
    offsets = frame_offsets(record["frame_bytes"])
    return [blob[offsets[i] : offsets[i + 1]] for i in indices]


class ShardWriter:
    """Writes samples into an uncompressed tar with fixed metadata, so equal input gives equal bytes."""

    def __init__(self, fileobj: BinaryIO):
        self._tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT)

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, record: dict[str, Any], jpegs: list[bytes]) -> None:
        """Add one video: its record and its frames."""
        key = record["id"]
        record = {**record, "frame_bytes": [len(j) for j in jpegs]}
        self._add(f"{key}.{RECORD_EXT}", json.dumps(record, sort_keys=True).encode())
        self._add(f"{key}.{FRAMES_EXT}", b"".join(jpegs))

    def close(self) -> None:
        """Finish the tar (end-of-archive blocks)."""
        self._tar.close()


def read_shard(path: str) -> Iterator[tuple[dict[str, Any], bytes]]:
    """(record, frames blob) per video, with plain `tarfile` (no WebDataset needed)."""
    with tarfile.open(path, mode="r:") as tar:
        pending: dict[str, Any] = {}
        for member in tar:
            key, ext = member.name.split(".", 1)
            data = tar.extractfile(member).read()
            pending[ext] = json.loads(data) if ext == RECORD_EXT else data
            if RECORD_EXT in pending and FRAMES_EXT in pending:
                yield pending[RECORD_EXT], pending[FRAMES_EXT]
                pending = {}
