"""ffmpeg through ffmpeg-python: decode a video once into JPEG frames.

One ffmpeg process per video does everything (VP9 decode, scale, MJPEG encode); starting a second
process just to probe would cost about as much as decoding a 3 s SSv2 clip. The probe facts (fps,
duration) come from that same run's stream header, and frame count and size from the JPEGs.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.runtime.tools import ffmpeg_exe


class VideoError(Exception):
    """A video that cannot be used; the message is the reason recorded in the manifest."""


class DecodeInterrupted(RuntimeError):
    """ffmpeg was killed by a signal (the job is being stopped, or out of memory): says nothing
    about the video, so the shard must not be finished with it rejected."""


@dataclass
class DecodedVideo:
    """Every frame of a video as JPEG bytes, plus what the stream header said."""

    jpegs: list[bytes]
    width: int
    height: int
    fps: float
    duration_s: float | None


def _scale_filter(short_side: int) -> str:
    # Short side at most `short_side`, never upscaled; -1 keeps the aspect ratio with any parity.
    s = short_side
    return f"scale=w='if(lte(iw,ih),min(iw,{s}),-1)':h='if(lte(iw,ih),-1,min(ih,{s}))'"


def decode_command(path: Path, short_side: int, qscale: int) -> list[str]:
    """The ffmpeg argv that turns `path` into a stream of JPEG frames on stdout."""
    import ffmpeg  # here, not at the top: GPU benchmarks use this package's shards without ffmpeg-python

    stream = ffmpeg.input(str(path), threads=1)
    out = stream.output(
        "pipe:",
        format="image2pipe",
        vcodec="mjpeg",
        pix_fmt="yuvj420p",  # full-range YUV, what JPEG decoders assume
        huffman="default",  # optimal tables cost more decode time than the bytes they save
        fps_mode="passthrough",  # every frame at its native timing: no duplicates, no drops
        vf=_scale_filter(short_side),
        an=None,
        sn=None,
        threads=1,
        **{"q:v": qscale},
    )
    return out.global_args("-hide_banner", "-nostats", "-nostdin").compile(cmd=ffmpeg_exe())


def decode_video(path: Path, short_side: int, qscale: int, timeout_s: float) -> DecodedVideo:
    """Decode every frame of `path` to JPEG; raise VideoError with a reason when it cannot be used."""
    path = Path(path)
    if not path.exists():
        raise VideoError("missing file")
    if path.stat().st_size == 0:
        raise VideoError("empty file")
    try:
        proc = subprocess.run(decode_command(path, short_side, qscale), capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise VideoError(f"decode timed out after {timeout_s:.0f} s") from None
    err = proc.stderr.decode(errors="replace")
    if proc.returncode < 0:
        raise DecodeInterrupted(f"ffmpeg was killed by signal {-proc.returncode} while decoding {path}")
    if proc.returncode != 0:
        raise VideoError(f"ffmpeg failed (exit {proc.returncode}): {_last_error_line(err)}")
    if "File ended prematurely" in err or "Truncated" in err:
        raise VideoError("truncated file (ffmpeg: file ended prematurely)")
    fps, duration = _parse_header(err)
    jpegs = split_jpegs(proc.stdout)
    if not jpegs:
        raise VideoError("no video frames decoded")
    width, height = jpeg_size(jpegs[0])
    return DecodedVideo(jpegs=jpegs, width=width, height=height, fps=fps, duration_s=duration)


def _last_error_line(err: str) -> str:
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    useful = [ln for ln in lines if "rror" in ln or "nvalid" in ln] or lines
    return useful[-1][:300] if useful else "no message"


_FPS = re.compile(r"Stream #0:\d+.*?: Video: .*?(\d+(?:\.\d+)?) (?:fps|tbr)")
_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")


def _parse_header(err: str) -> tuple[float, float | None]:
    fps_match = _FPS.search(err)
    if not fps_match:
        raise VideoError("no video stream found")
    duration = None
    if m := _DURATION.search(err):
        duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    return float(fps_match[1]), duration


def split_jpegs(data: bytes) -> list[bytes]:
    """Split ffmpeg's concatenated MJPEG output into one bytes object per JPEG."""
    frames, pos, n = [], 0, len(data)
    while pos < n:
        if data[pos : pos + 2] != b"\xff\xd8":
            raise VideoError(f"ffmpeg wrote something that is not a JPEG at byte {pos}")
        end = _jpeg_end(data, pos)
        frames.append(data[pos:end])
        pos = end
    return frames


def _jpeg_end(data: bytes, pos: int) -> int:
    # Walk the header segments by their lengths up to SOS; in the entropy-coded data after it every
    # 0xFF is stuffed, so the first FF D9 is the end of the image.
    i = pos + 2
    while True:
        if data[i] != 0xFF:
            raise VideoError(f"bad JPEG marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDA:
            end = data.find(b"\xff\xd9", i + 2 + length)
            if end < 0:
                raise VideoError("JPEG without an end marker")
            return end + 2
        i += 2 + length


def jpeg_size(jpeg: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's SOF header."""
    i = 2
    while i < len(jpeg):
        marker = jpeg[i + 1]
        length = int.from_bytes(jpeg[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h = int.from_bytes(jpeg[i + 5 : i + 7], "big")
            w = int.from_bytes(jpeg[i + 7 : i + 9], "big")
            return w, h
        i += 2 + length
    raise VideoError("JPEG without a frame header")
